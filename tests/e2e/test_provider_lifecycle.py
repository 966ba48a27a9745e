"""A provider's day, on a clock the test moves: the real agent and the real llama.cpp engine (in
this process, so the test owns its clock) against a real coordinator process.

Inside its schedule window it serves; an idle model is unloaded and the next request reloads it
(accepted first, then the cold start); when the window closes the provider disconnects and
unloads, and when the next one opens it loads and comes back. The machine is linked by device
code, and its owner watches all of it in GET /v1/me/providers: what the heartbeats said (warm or
cold, per-model slots) and the benchmark figures it registered with.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import openai
import pytest

from darkbloom.config import ProviderSettings
from darkbloom.provider.model_store import ModelStore
from darkbloom.provider.models import ModelHost
from darkbloom.provider.runtime import model_host, serve
from darkbloom.provider.schedule import Schedule, Window
from tests.e2e.harness import MODEL, Coordinator
from tests.e2e.test_device_login import Stack

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


def linked(coordinator: Coordinator) -> tuple[str, str]:
    """A new account's session, and a provider token linked to it by device code."""
    stack = Stack(coordinator, "")
    session = stack.signup()["session_token"]
    code = stack.code()
    assert stack.approve(session, code["user_code"]).status_code == 200
    answer = stack.poll(code["device_code"]).json()
    assert answer["status"] == "authorized"
    return session, answer["token"]


def machine(coordinator: Coordinator, session: str) -> dict[str, Any]:
    with Stack(coordinator, "").http(session) as http:
        providers = http.get("/v1/me/providers").json()["providers"]
    live = [p for p in providers if p["online"]]
    assert len(live) <= 1
    return dict(live[0]) if live else {}


@pytest.fixture
async def day(coordinator: Coordinator, tmp_path: Path
              ) -> AsyncIterator[tuple[MovableClock, ModelHost, str]]:
    clock = MovableClock(datetime(2026, 11, 30, 8, 0))  # a Monday, before the window
    session, token = await asyncio.to_thread(linked, coordinator)
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "benchmark.json").write_text(json.dumps({"measured_at": "2026-11-30T07:00:00Z",
        "models": {MODEL: {"decode_tps": 42.0, "prefill_tps": 1234.5, "ttft_ms": 20.0}}}))
    settings = ProviderSettings(coordinator_url=coordinator.ws_url, token=token,
                                config_dir=config_dir, models=[MODEL],
                                schedule=Schedule(enabled=True, windows=[Window(
                                    days=["mon", "tue"], start="09:00", end="17:00")]))
    host = model_host(settings, ModelStore(tmp_path / "models"), clock)
    host.idle_timeout_s = 600.0
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, host, clock=clock, stop=stop))
    yield clock, host, session
    stop.set()
    await asyncio.wait_for(task, 30)


def chat(coordinator: Coordinator) -> str:
    reply = coordinator.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hi"}], max_tokens=4, temperature=0)
    return reply.choices[0].finish_reason or ""


async def test_a_provider_keeps_to_its_window_and_unloads_when_idle(
        coordinator: Coordinator, day: tuple[MovableClock, ModelHost, str]) -> None:
    clock, host, session = day
    await asyncio.sleep(0.5)
    assert coordinator.provider_count() == 0 and host.warm_models() == []  # 08:00: closed

    await clock.advance(3600)  # 09:00: the window opens
    await until(lambda: coordinator.provider_count() == 1, "the provider to connect")
    assert host.warm_models() == [MODEL]
    seen = await asyncio.to_thread(machine, coordinator, session)
    assert seen["models"] == [MODEL] and seen["prefill_tps"] == 1234.5  # from the benchmark
    assert await asyncio.to_thread(chat, coordinator) in ("stop", "length")

    await clock.advance(601)  # ten idle minutes: unloaded, still offered (cold)
    assert host.warm_models() == [] and host.capacity()[0].state == "idle_shutdown"
    assert coordinator.provider_count() == 1
    await until(lambda: machine(coordinator, session)["warm_models"] == [], "a cold heartbeat")
    slots = machine(coordinator, session)["backend_capacity"]["slots"]
    assert [(s["model"], s["state"]) for s in slots] == [(MODEL, "idle_shutdown")]
    assert await asyncio.to_thread(chat, coordinator) in ("stop", "length")  # reloads, serves
    assert host.warm_models() == [MODEL]
    await until(lambda: machine(coordinator, session)["warm_models"] == [MODEL], "a warm heartbeat")

    await clock.advance(8 * 3600)  # past 17:00: disconnected and unloaded
    await until(lambda: coordinator.provider_count() == 0, "the provider to leave")
    assert await asyncio.to_thread(machine, coordinator, session) == {}
    assert host.warm_models() == [] and host.models() == []
    with pytest.raises(openai.APIStatusError, match="no provider is serving"):
        await asyncio.to_thread(chat, coordinator)

    await clock.advance(16 * 3600)  # 09:00 the next day: back
    await until(lambda: coordinator.provider_count() == 1, "the provider to come back")
    assert await asyncio.to_thread(chat, coordinator) in ("stop", "length")

