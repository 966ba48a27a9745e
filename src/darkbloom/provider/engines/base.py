"""The engine contracts: what the provider agent needs from an inference runtime.

Two levels. An ``EngineBackend`` is a runtime (llama.cpp, mlx-lm, vLLM): it says whether it can
run on this machine and loads a ``LocalModel`` into a ``LoadedModel``, which has its own slots and
turns a validated GenerationRequest into text deltas and exact token counts. The agent talks to
an ``Engine``: the set of models this provider serves (provider/models.py), or a test double.
None of them sees the network or the sealing; the agent does that.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from darkbloom.inference.capabilities import CAPABILITIES as CAPABILITIES
from darkbloom.inference.formatting import Logprobs
from darkbloom.inference.request import GenerationRequest
from darkbloom.protocol.frames import ModelInfo, Slot

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True, slots=True)
class Started:
    """The prompt is tokenized and accepted; generation begins."""

    prompt_tokens: int


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str
    logprobs: Logprobs = ()  # the tokens behind this text, when the request asked for logprobs


@dataclass(frozen=True, slots=True)
class Finished:
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    stop_sequence: str | None = None  # which of the request's stop sequences ended it


GenerationEvent = Started | TextDelta | Finished

ModelFormat = Literal["gguf", "mlx", "safetensors"]


@dataclass(frozen=True, slots=True)
class LocalModel:
    """A model's files on this machine, in the form an engine loads."""

    id: str
    path: Path  # a GGUF file, or a directory (MLX, safetensors)
    format: ModelFormat
    size_bytes: int
    weight_hash: str | None = None
    quantization: str = ""
    context_length: int = 4096
    aliases: tuple[str, ...] = ()
    model_type: str = "text"

    def names(self) -> tuple[str, ...]:
        return (self.id, *self.aliases)


class LoadedModel(Protocol):
    """One model resident in memory, with its own slots; ``close`` unloads it."""

    model: LocalModel

    @property
    def capabilities(self) -> frozenset[str]: ...

    @property
    def slots(self) -> int: ...

    @property
    def busy_slots(self) -> int: ...

    def count_tokens(self, request: GenerationRequest) -> int:
        """Prompt tokens the request would use (its rendered prompt, tokenized)."""
        ...

    def generate(self, request: GenerationRequest, max_tokens_cap: int,
                 cancel: threading.Event) -> AsyncIterator[GenerationEvent]:
        """Stream one Started, deltas, then exactly one Finished; stops within a token of ``cancel``.

        Raises InvalidRequest (e.g. context_length_exceeded) before the first event.
        """
        ...

    def close(self) -> None: ...


class EngineBackend(Protocol):
    """An inference runtime; importing its library is deferred to ``load``."""

    name: str
    formats: frozenset[ModelFormat]  # the LocalModel formats it loads

    def problem(self) -> str | None:
        """Why it cannot run on this machine (library missing, no GPU...), or None."""
        ...

    def load(self, model: LocalModel, *, slots: int, threads: int | None) -> LoadedModel: ...


class Engine(Protocol):
    """What the agent serves from: the provider's models (provider/models.py ModelHost)."""

    name: str

    @property
    def slots(self) -> int:
        """Requests the engine runs at once; the agent advertises exactly this many."""
        ...

    @property
    def busy_slots(self) -> int: ...

    def models(self) -> list[ModelInfo]:
        """The models offered (loaded at least once), each with its slots and capabilities."""
        ...

    def warm_models(self) -> list[str]:
        """The models resident in memory now (the others are cold: a request reloads them)."""
        ...

    def capacity(self) -> list[Slot]:
        """Per-model slot state for the heartbeat."""
        ...

    def serves(self, model: str) -> bool: ...

    def model_info(self, model: str) -> ModelInfo | None:
        """The offered model a name (id or alias) means, for the receipt's weight hash."""
        ...

    def generate(self, request: GenerationRequest, max_tokens_cap: int,
                 cancel: threading.Event) -> AsyncIterator[GenerationEvent]:
        """Stream one Started, deltas, then exactly one Finished; stops within a token of ``cancel``.

        Raises InvalidRequest (e.g. context_length_exceeded, a capability its engine lacks)
        before the first event.
        """
        ...

    def close(self) -> None: ...
