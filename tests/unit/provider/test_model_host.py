"""The model host: several models with their own slots, the memory-fit check, idle unload and
reload, capability refusals. Engines here are test doubles (a backend that counts its loads);
the real llama.cpp engine under the host is tested end to end in tests/e2e/test_provider_lifecycle.py."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from darkbloom.errors import DarkbloomError
from darkbloom.inference.dialects import parse_request
from darkbloom.inference.request import GenerationRequest
from darkbloom.provider.engines.base import (
    Finished,
    GenerationEvent,
    LocalModel,
    ModelFormat,
    Started,
    TextDelta,
)
from darkbloom.provider.models import ModelHost, ModelLoadError

GB = 2**30


class Ticks:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class DoubleModel:
    """A loaded model that answers "ok" after ``gate`` opens (a test double: no inference)."""

    def __init__(self, model: LocalModel, slots: int, capabilities: frozenset[str]) -> None:
        self.model, self._slots, self.capabilities = model, slots, capabilities
        self.running = 0
        self.closed = False
        self.gate = asyncio.Event()
        self.gate.set()

    @property
    def slots(self) -> int:
        return self._slots

    @property
    def busy_slots(self) -> int:
        return self.running

    def count_tokens(self, request: GenerationRequest) -> int:
        return 3

    async def generate(self, request: GenerationRequest, max_tokens_cap: int,
                       cancel: threading.Event, cache_scope: str | None = None
                       ) -> AsyncIterator[GenerationEvent]:
        self.running += 1
        try:
            yield Started(3)
            await self.gate.wait()
            yield TextDelta("ok")
            yield Finished("stop", 3, 1)
        finally:
            self.running -= 1

    def close(self) -> None:
        self.closed = True


class DoubleBackend:
    name = "double"
    formats: frozenset[ModelFormat] = frozenset({"gguf"})

    def __init__(self, capabilities: frozenset[str] = frozenset({"stop_sequences"}),
                 fail: bool = False) -> None:
        self.capabilities = capabilities
        self.fail = fail
        self.loads: list[DoubleModel] = []

    def problem(self) -> str | None:
        return None

    def load(self, model: LocalModel, *, slots: int, threads: int | None) -> DoubleModel:
        if self.fail:
            raise RuntimeError("out of memory\nlong engine traceback text")
        loaded = DoubleModel(model, slots, self.capabilities)
        self.loads.append(loaded)
        return loaded


def local(name: str, size: int = GB) -> LocalModel:
    return LocalModel(id=name, path=Path(f"/models/{name}.gguf"), format="gguf", size_bytes=size,
                      weight_hash="ab" * 32, aliases=(f"{name}-alias",))


def chat(model: str, **extra: object) -> GenerationRequest:
    return parse_request("/v1/chat/completions",
                         {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra})


async def drain(host: ModelHost, request: GenerationRequest) -> list[GenerationEvent]:
    return [event async for event in host.generate(request, 16, threading.Event())]


def test_nothing_is_advertised_before_it_is_loaded_then_each_model_with_its_own_slots() -> None:
    backend = DoubleBackend()
    host = ModelHost([(local("a"), backend), (local("b"), backend)], slots=2, budget_bytes=100 * GB)
    assert host.models() == [] and host.slots == 0 and not host.serves("a")
    host.load_all()
    infos = {m.id: m for m in host.models()}
    assert set(infos) == {"a", "b"}
    assert infos["a"].slots == 2 and infos["a"].capabilities == ["stop_sequences"]
    assert host.slots == 4 and host.serves("b-alias") and not host.serves("c")
    assert host.model_info("a-alias") == infos["a"]
    assert host.warm_models() == ["a", "b"]
    assert [(s.model, s.state) for s in host.capacity()] == [("a", "running"), ("b", "running")]


def test_memory_fit_counts_the_models_already_loaded() -> None:
    """provider.md: weights × 1.2 against RAM − 4 GB; the second model does not fit beside the first."""
    backend = DoubleBackend()
    host = ModelHost([(local("a", 4 * GB), backend), (local("b", 4 * GB), backend)], budget_bytes=9 * GB)
    with pytest.raises(ModelLoadError, match=r"b needs about 4\.8 GB .* 4\.2 GB .* is left"):
        host.load_all()
    assert [m.id for m in host.models()] == ["a"]


def test_a_failed_load_is_one_line_and_marks_the_slot_crashed() -> None:
    host = ModelHost([(local("a"), DoubleBackend(fail=True))], budget_bytes=100 * GB)
    with pytest.raises(ModelLoadError) as raised:
        host.load_all()
    assert str(raised.value) == "double could not load a: out of memory"
    assert host.models() == []


async def test_idle_timeout_unloads_and_the_next_request_reloads_it() -> None:
    ticks, backend = Ticks(), DoubleBackend()
    host = ModelHost([(local("a"), backend), (local("b"), backend)], idle_timeout_s=600,
                     clock=ticks, budget_bytes=100 * GB)
    host.load_all()
    ticks.now += 300
    assert await drain(host, chat("a"))  # a is used at 300 s; b is not
    assert host.seconds_to_idle() == 300
    ticks.now += 300
    assert host.unload_idle() == ["b"]
    assert backend.loads[1].closed and host.warm_models() == ["a"]
    assert [(s.model, s.state) for s in host.capacity()] == [("a", "running"), ("b", "idle_shutdown")]
    assert host.serves("b") and "b" in [m.id for m in host.models()]  # still offered, cold
    events = await drain(host, chat("b"))
    assert isinstance(events[-1], Finished) and len(backend.loads) == 3  # reloaded once
    assert host.warm_models() == ["a", "b"] and host.capacity()[1].state == "running"


async def test_a_model_in_use_is_never_unloaded() -> None:
    ticks, backend = Ticks(), DoubleBackend()
    host = ModelHost([(local("a"), backend)], idle_timeout_s=60, clock=ticks, budget_bytes=100 * GB)
    host.load_all()
    backend.loads[0].gate.clear()
    answer = asyncio.create_task(drain(host, chat("a")))
    await asyncio.sleep(0.01)
    ticks.now += 3600
    assert host.unload_idle() == [] and host.capacity()[0].num_running == 1
    backend.loads[0].gate.set()
    await answer
    assert host.unload_idle() == []  # just used: idle from now
    ticks.now += 60
    assert host.unload_idle() == ["a"]


async def test_no_timeout_never_unloads() -> None:
    ticks = Ticks()
    host = ModelHost([(local("a"), DoubleBackend())], idle_timeout_s=0, clock=ticks, budget_bytes=100 * GB)
    host.load_all()
    ticks.now += 10**9
    assert host.unload_idle() == [] and host.seconds_to_idle() is None


async def test_a_reload_that_fails_is_a_503_not_a_crash() -> None:
    ticks, backend = Ticks(), DoubleBackend()
    host = ModelHost([(local("a"), backend)], idle_timeout_s=1, clock=ticks, budget_bytes=100 * GB)
    host.load_all()
    ticks.now += 5
    host.unload_idle()
    backend.fail = True
    with pytest.raises(DarkbloomError) as failed:
        await drain(host, chat("a"))
    assert failed.value.status_code == 503
    assert host.capacity()[0].state == "crashed"
    backend.fail = False
    assert await drain(host, chat("a"))  # the next request tries again
    assert host.capacity()[0].state == "running"


def test_unload_all_withdraws_every_model_until_loaded_again() -> None:
    backend = DoubleBackend()
    host = ModelHost([(local("a"), backend)], budget_bytes=100 * GB)
    host.load_all()
    host.unload_all()
    assert host.models() == [] and host.warm_models() == [] and backend.loads[0].closed
    host.load_all()
    assert [m.id for m in host.models()] == ["a"]
