"""A provider's day, on a clock the test moves: the real agent and the real llama.cpp engine (in
this process, so the test owns its clock) against a real coordinator process.

Inside its schedule window it serves; an idle model is unloaded and the next request reloads it
(accepted first, then the cold start); when the window closes the provider disconnects and
unloads, and when the next one opens it loads and comes back.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import openai
import pytest

from darkbloom.config import ProviderSettings
from darkbloom.provider.model_store import ModelStore
from darkbloom.provider.models import ModelHost
from darkbloom.provider.runtime import model_host, serve
from darkbloom.provider.schedule import Schedule, Window
from tests.e2e.harness import MODEL, Coordinator

pytestmark = pytest.mark.timeout(240)


class MovableClock:
    """Monotonic and wall time that move only when the test says; sleepers wake in order."""

    def __init__(self, start: datetime) -> None:
        self.wall = start
        self.mono = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._ids = itertools.count()

    def monotonic(self) -> float:
        return self.mono

    def now(self) -> datetime:
        return self.wall

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.mono + max(0.0, seconds), next(self._ids), future))
        await future

    async def advance(self, seconds: float) -> None:
        """Move time on, waking each sleeper due by then (and what it schedules in turn)."""
        end = self.mono + seconds
        while self._sleepers and self._sleepers[0][0] <= end:
            due, _, future = heapq.heappop(self._sleepers)
            self.wall += timedelta(seconds=due - self.mono)
            self.mono = due
            if not future.done():
                future.set_result(None)
            for _ in range(20):  # let the woken task run until it sleeps again
                await asyncio.sleep(0)
        self.wall += timedelta(seconds=end - self.mono)
        self.mono = end


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    c = Coordinator(tmp_path_factory.mktemp("lifecycle"), heartbeat_interval_s=1).start()
    yield c
    c.stop()


async def until(check: object, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + 30
    while not await asyncio.to_thread(check):  # type: ignore[arg-type]
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


@pytest.fixture
async def day(coordinator: Coordinator, tmp_path: Path) -> AsyncIterator[tuple[MovableClock, ModelHost]]:
    clock = MovableClock(datetime(2026, 11, 30, 8, 0))  # a Monday, before the window
    settings = ProviderSettings(coordinator_url=coordinator.ws_url, token=coordinator.provider_token,
                                config_dir=tmp_path / "config", models=[MODEL],
                                schedule=Schedule(enabled=True, windows=[Window(
                                    days=["mon", "tue"], start="09:00", end="17:00")]))
    host = model_host(settings, ModelStore(tmp_path / "models"), clock)
    host.idle_timeout_s = 600.0
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, host, clock=clock, stop=stop))
    yield clock, host
    stop.set()
    await asyncio.wait_for(task, 30)


def chat(coordinator: Coordinator) -> str:
    reply = coordinator.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hi"}], max_tokens=4, temperature=0)
    return reply.choices[0].finish_reason or ""


async def test_a_provider_keeps_to_its_window_and_unloads_when_idle(
        coordinator: Coordinator, day: tuple[MovableClock, ModelHost]) -> None:
    clock, host = day
    await asyncio.sleep(0.5)
    assert coordinator.provider_count() == 0 and host.warm_models() == []  # 08:00: closed

    await clock.advance(3600)  # 09:00: the window opens
    await until(lambda: coordinator.provider_count() == 1, "the provider to connect")
    assert host.warm_models() == [MODEL]
    assert await asyncio.to_thread(chat, coordinator) in ("stop", "length")

    await clock.advance(601)  # ten idle minutes: unloaded, still offered (cold)
    assert host.warm_models() == [] and host.capacity()[0].state == "idle_shutdown"
    assert coordinator.provider_count() == 1
    assert await asyncio.to_thread(chat, coordinator) in ("stop", "length")  # reloads, serves
    assert host.warm_models() == [MODEL]

    await clock.advance(8 * 3600)  # past 17:00: disconnected and unloaded
    await until(lambda: coordinator.provider_count() == 0, "the provider to leave")
    assert host.warm_models() == [] and host.models() == []
    with pytest.raises(openai.APIStatusError, match="no provider is serving"):
        await asyncio.to_thread(chat, coordinator)

    await clock.advance(16 * 3600)  # 09:00 the next day: back
    await until(lambda: coordinator.provider_count() == 1, "the provider to come back")
    assert await asyncio.to_thread(chat, coordinator) in ("stop", "length")

