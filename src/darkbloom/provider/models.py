"""The models one provider serves: several at once, each in its engine with its own slots.

Models load before the provider connects, so none is advertised before it is loaded. Loading
checks memory first (provider.md): the weights × 1.2 must fit in what is left of the machine's
budget (RAM − 4 GB) after the models already loaded. An idle timeout unloads a model that has
served nothing for a while: it stays advertised, as cold (its heartbeat slot says
``idle_shutdown``), and the next request for it, already accepted, reloads it first.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar, cast

from darkbloom.errors import DarkbloomError
from darkbloom.inference.request import GenerationRequest
from darkbloom.protocol.frames import ModelInfo, Slot
from darkbloom.provider.engines.base import (
    EngineBackend,
    GenerationEvent,
    LoadedImageModel,
    LoadedModel,
    LoadedTranscriber,
    LocalModel,
    MediaModel,
)
from darkbloom.provider.model_store import memory_budget, memory_estimate

log = logging.getLogger(__name__)

SlotState = Literal["running", "idle_shutdown", "reloading", "crashed"]
T = TypeVar("T")
Loaded = LoadedModel | LoadedTranscriber | LoadedImageModel


class ModelLoadError(Exception):
    """A model could not be loaded (does not fit, engine failed); the message says what to do."""


@dataclass(eq=False)
class _Served:
    model: LocalModel
    backend: EngineBackend
    loaded: Loaded | None = None
    advertised: bool = False  # loaded once: from then on offered, warm or cold
    slots: int = 1  # as the engine loaded it (a media pipeline runs one job at a time)
    state: SlotState = "idle_shutdown"
    users: int = 0  # generate() calls in progress: waiting for a slot, a reload, or running
    last_used: float = 0.0
    template_hash: str | None = None
    capabilities: frozenset[str] = frozenset()  # remembered while it is unloaded
    reload: asyncio.Lock = field(default_factory=asyncio.Lock)


def default_slots(backend: EngineBackend, model: LocalModel) -> int:
    """Slots when the operator set none: the engine's own choice where it has one (llama.cpp
    batches several sequences), else one job at a time."""
    choose = getattr(backend, "default_slots", None)
    return int(choose(model)) if callable(choose) else 1


class ModelHost:
    """The agent's engine: routes each request to its model, reloading a cold one first."""

    def __init__(self, models: Sequence[tuple[LocalModel, EngineBackend]], *, slots: int | None = 1,
                 threads: int | None = None, idle_timeout_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 budget_bytes: int | None = None) -> None:
        if not models:
            raise ValueError("no model to serve")
        self._served = [_Served(model, backend) for model, backend in models]
        self._slots = slots
        self._threads = threads
        self.idle_timeout_s = idle_timeout_s if idle_timeout_s and idle_timeout_s > 0 else None
        self._clock = clock
        self._budget = memory_budget() if budget_bytes is None else budget_bytes
        self.name = ",".join(dict.fromkeys(backend.name for _, backend in models))

    # --- loading ----------------------------------------------------------------------------
    def load_all(self) -> None:
        """Load every model not loaded yet (blocking: call from a worker thread)."""
        for served in self._served:
            if served.loaded is None:
                self._load(served)

    def _load(self, served: _Served) -> None:
        need = memory_estimate(served.model.size_bytes)
        used = sum(memory_estimate(s.model.size_bytes)
                   for s in self._served if s.loaded is not None)
        if used + need > self._budget:
            raise ModelLoadError(
                f"{served.model.id} needs about {need / 2**30:.1f} GB (weights × 1.2) and "
                f"{max(0, self._budget - used) / 2**30:.1f} GB of the memory budget (RAM − 4 GB, or "
                "the GPUs' memory) "
                "is left: serve fewer or smaller models")
        log.info("loading %s with %s", served.model.id, served.backend.name)
        try:
            slots = self._slots if self._slots is not None else default_slots(served.backend,
                                                                              served.model)
            loaded = served.backend.load(served.model, slots=slots, threads=self._threads)
        except Exception as exc:  # the engine's words may be long; its type and first line say it
            served.state = "crashed"
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise ModelLoadError(f"{served.backend.name} could not load {served.model.id}: "
                                 f"{reason}") from None
        template = getattr(loaded, "template_hash", None)
        served.template_hash = template if isinstance(template, str) else None
        served.capabilities = frozenset(getattr(loaded, "capabilities", ()))
        served.slots = max(1, loaded.slots)
        served.loaded, served.advertised, served.state = loaded, True, "running"
        served.last_used = self._clock()

    def unload_all(self) -> None:
        """Unload every model (outside a schedule window); they stay advertised for the next
        session only if loaded again first."""
        for served in self._served:
            self._unload(served)
            served.advertised = False

    def _unload(self, served: _Served) -> None:
        if served.loaded is not None:
            loaded, served.loaded = served.loaded, None
            loaded.close()
            log.info("unloaded %s", served.model.id)
        served.state = "idle_shutdown"

    def unload_idle(self) -> list[str]:
        """Unload each loaded model idle for the timeout, with nothing running or waiting."""
        if self.idle_timeout_s is None:
            return []
        now = self._clock()
        gone = []
        for served in self._served:
            if (served.loaded is not None and served.users == 0
                    and now - served.last_used >= self.idle_timeout_s):
                log.info("%s idle for %.0f s: unloading; the next request reloads it",
                         served.model.id, now - served.last_used)
                self._unload(served)
                gone.append(served.model.id)
        return gone

    def seconds_to_idle(self) -> float | None:
        """Until the next model could go idle (None: no timeout, or nothing loaded)."""
        if self.idle_timeout_s is None:
            return None
        now = self._clock()
        due = [served.last_used + self.idle_timeout_s - now for served in self._served
               if served.loaded is not None]
        return max(0.0, min(due)) if due else None

    async def _ready(self, served: _Served) -> Loaded:
        """The loaded model, reloading it first if the idle timeout unloaded it (cold start)."""
        async with served.reload:
            if served.loaded is None:
                served.state = "reloading"
                try:
                    await asyncio.to_thread(self._load, served)
                except ModelLoadError as exc:
                    log.error("%s", exc)
                    raise DarkbloomError("model load failed", status_code=503) from None
            assert served.loaded is not None
            return served.loaded

    # --- the Engine protocol the agent uses --------------------------------------------------
    def _find(self, name: str) -> _Served | None:
        return next((s for s in self._served if s.advertised and name in s.model.names()), None)

    def serves(self, model: str) -> bool:
        return self._find(model) is not None

    def model_info(self, model: str) -> ModelInfo | None:
        served = self._find(model)
        return self._info(served) if served is not None else None

    def models(self) -> list[ModelInfo]:
        return [self._info(s) for s in self._served if s.advertised]

    def _info(self, s: _Served) -> ModelInfo:
        return ModelInfo(id=s.model.id, size_bytes=s.model.size_bytes, model_type=s.model.model_type,
                         quantization=s.model.quantization, weight_hash=s.model.weight_hash,
                         context_length=s.model.context_length, slots=s.slots,
                         capabilities=sorted(s.capabilities))

    @property
    def slots(self) -> int:
        return sum(s.slots for s in self._served if s.advertised)

    @property
    def busy_slots(self) -> int:
        return sum(s.loaded.busy_slots for s in self._served if s.loaded is not None)

    def warm_models(self) -> list[str]:
        return [s.model.id for s in self._served if s.loaded is not None]

    def capacity(self) -> list[Slot]:
        """Per-model slot state for the heartbeat: running, waiting, cold or reloading."""
        slots = []
        for s in self._served:
            if not s.advertised:
                continue
            running = s.loaded.busy_slots if s.loaded is not None else 0
            slots.append(Slot(model=s.model.id, state=s.state,
                              num_running=running, num_waiting=max(0, s.users - running)))
        return slots

    @property
    def template_hashes(self) -> dict[str, str]:
        return {s.model.id: s.template_hash for s in self._served if s.template_hash}

    def count_tokens(self, request: GenerationRequest) -> int:
        served = self._find(request.model)
        if served is None or served.loaded is None or served.model.model_type != "text":
            raise LookupError(request.model)
        return cast(LoadedModel, served.loaded).count_tokens(request)

    def _served_as(self, model: str, model_type: str) -> _Served:
        served = self._find(model)
        if served is None:
            raise DarkbloomError(f"model {model!r} is not served by this provider", status_code=404)
        if served.model.model_type != model_type:
            raise DarkbloomError(f"model {model!r} is a {served.model.model_type} model",
                                 status_code=400)
        return served

    async def generate(self, request: GenerationRequest, max_tokens_cap: int,
                       cancel: threading.Event, cache_scope: str | None = None
                       ) -> AsyncIterator[GenerationEvent]:
        served = self._served_as(request.model, "text")
        served.users += 1
        try:
            loaded = cast(LoadedModel, await self._ready(served))
            async for event in loaded.generate(request, max_tokens_cap, cancel, cache_scope):
                yield event
        finally:
            served.users -= 1
            served.last_used = self._clock()

    async def run_media(self, model: str, model_type: str, job: Callable[[MediaModel], T]) -> T:
        """Run a blocking media job (transcribe, generate images) on ``model`` in a worker
        thread, reloading the model first if it went cold."""
        served = self._served_as(model, model_type)
        served.users += 1
        try:
            loaded = cast(MediaModel, await self._ready(served))
            running = asyncio.ensure_future(asyncio.to_thread(job, loaded))
            try:
                return await asyncio.shield(running)
            except asyncio.CancelledError:
                # The thread cannot be stopped: it runs on until the job sees its cancel event,
                # and the model counts as in use (never unloaded under it) until then.
                await asyncio.wait({running})
                raise
        finally:
            served.users -= 1
            served.last_used = self._clock()

    def close(self) -> None:
        for served in self._served:
            self._unload(served)
