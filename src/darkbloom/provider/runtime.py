"""`darkbloom serve`: load the models first, then connect; keep to the schedule; unload idle models;
stop cleanly on SIGINT/SIGTERM.

Outside a schedule window the provider is disconnected and its models unloaded (provider.md
Decision); it loads them again and reconnects when the next window opens. Time comes from a
``Clock`` so tests can move it instead of sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
import time
from collections.abc import Coroutine
from datetime import datetime
from typing import Any, Protocol, TypeVar

from darkbloom.config import ProviderSettings
from darkbloom.provider.agent import ProviderAgent
from darkbloom.provider.engines.base import Engine, EngineBackend, LocalModel
from darkbloom.provider.engines.llamacpp import LlamaCppBackend
from darkbloom.provider.engines.select import EngineUnavailable, choose
from darkbloom.provider.model_store import ModelStore
from darkbloom.provider.models import ModelHost, ModelLoadError

log = logging.getLogger(__name__)
T = TypeVar("T")

# Why a provider cannot start serving, each with a message that says what to do.
SETUP_ERRORS = (ValueError, FileNotFoundError, ModelLoadError, EngineUnavailable)

IDLE_CHECK_MAX_S = 60.0  # an idle timeout is noticed within this (or sooner, when one falls due)


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run the provider's event loop: uvloop where it is installed (it comes with uvicorn's
    standard extras, Linux and macOS). Every token crosses this loop (a wake-up from the engine
    thread, a sealed frame out): uvloop's wake-ups and socket writes cost the provider less CPU
    per token, which llama.cpp's threads would otherwise wait for."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def now(self) -> datetime:
        """Local wall time (naive), which schedule windows are written in."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class Window(Protocol):
    """When the provider may serve (provider/schedule.py Schedule)."""

    def is_open(self, now: datetime) -> bool: ...

    def next_change(self, now: datetime) -> datetime | None:
        """When ``is_open`` flips next; None: never."""
        ...


def disable_core_dumps() -> None:
    """A core dump would hold decrypted prompts; none are written (trust.md hygiene)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def model_host(settings: ProviderSettings, store: ModelStore, clock: Clock | None = None) -> ModelHost:
    """The provider's models (installed: shipped in a wheel or downloaded), each with its engine,
    not loaded yet."""
    models: list[tuple[LocalModel, EngineBackend]] = []
    for name in dict.fromkeys(settings.models):
        model = store.find(name)
        if model is None:
            raise FileNotFoundError(f"model {name!r} is not installed here: run `darkbloom models "
                                    f"download --model {name}` (or `darkbloom models list`)")
        backend = choose(model, settings.engine)
        if isinstance(backend, LlamaCppBackend):
            backend = LlamaCppBackend(prefix_cache=settings.prefix_cache)
        models.append((model, backend))
    return ModelHost(models, slots=settings.slots, threads=settings.threads,
                     idle_timeout_s=settings.idle_timeout_mins * 60.0 or None,
                     clock=(clock or SystemClock()).monotonic)


async def serve(settings: ProviderSettings, engine: Engine, *, schedule: Window | None = None,
                clock: Clock | None = None, stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` (SIGINT/SIGTERM when not given). A ``ModelHost`` engine is loaded
    before each session and unloaded outside the schedule (``settings.schedule`` unless given);
    other engines (test doubles) serve as they are."""
    clock = clock or SystemClock()
    if schedule is None and settings.schedule.enabled:
        schedule = settings.schedule
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
    host = engine if isinstance(engine, ModelHost) else None
    agent = ProviderAgent(settings, engine)
    try:
        while not stop.is_set():
            if schedule is not None and not schedule.is_open(clock.now()):
                if host is not None:
                    host.unload_all()
                opens = schedule.next_change(clock.now())
                log.info("outside the schedule: disconnected, models unloaded until %s",
                         opens.strftime("%a %H:%M") if opens else "the schedule changes")
                await _sleep_or_stop(clock, stop, _seconds_until(clock, opens))
                continue
            if host is not None:
                await asyncio.to_thread(host.load_all)
            await _session(agent, host, schedule, clock, stop)
    finally:
        engine.close()


async def _session(agent: ProviderAgent, host: ModelHost | None, schedule: Window | None,
                   clock: Clock, stop: asyncio.Event) -> None:
    """One stretch of serving: until stop, or until the schedule window closes."""
    ended = asyncio.Event()
    watchers = [asyncio.create_task(_relay(stop, ended))]
    if schedule is not None:
        watchers.append(asyncio.create_task(_window_close(schedule, clock, ended)))
    if host is not None and host.idle_timeout_s is not None:
        watchers.append(asyncio.create_task(_unload_idle(host, clock)))
    try:
        await agent.run(ended)
    finally:
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)


async def _relay(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


async def _window_close(schedule: Window, clock: Clock, ended: asyncio.Event) -> None:
    while schedule.is_open(clock.now()):
        await clock.sleep(_seconds_until(clock, schedule.next_change(clock.now())))
    log.info("the schedule window closed")
    ended.set()


def _seconds_until(clock: Clock, when: datetime | None) -> float:
    """A never-changing schedule is looked at again daily rather than waited on forever."""
    return 86_400.0 if when is None else max(0.0, (when - clock.now()).total_seconds())


async def _unload_idle(host: ModelHost, clock: Clock) -> None:
    while True:
        due = host.seconds_to_idle()
        await clock.sleep(IDLE_CHECK_MAX_S if due is None else min(due, IDLE_CHECK_MAX_S))
        host.unload_idle()


async def _sleep_or_stop(clock: Clock, stop: asyncio.Event, seconds: float) -> None:
    sleeper = asyncio.create_task(clock.sleep(seconds))
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
        stopper.cancel()
