"""The engine contracts: what the provider agent needs from an inference runtime.

Two levels. An ``EngineBackend`` is a runtime (llama.cpp, mlx-lm, vLLM): it says whether it can
run on this machine and loads a ``LocalModel`` into a ``LoadedModel``, which has its own slots and
turns a validated GenerationRequest into text deltas and exact token counts. The agent talks to
an ``Engine``: the set of models this provider serves (provider/models.py), or a test double.
None of them sees the network or the sealing; the agent does that.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from darkbloom.inference.capabilities import CAPABILITIES as CAPABILITIES
from darkbloom.inference.formatting import Logprobs
from darkbloom.inference.media_request import ImageRequest, TranscriptionRequest
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
    cached_tokens: int = 0  # prompt tokens whose KV a prefix cache supplied (not evaluated again)


GenerationEvent = Started | TextDelta | Finished

ModelFormat = Literal["gguf", "mlx", "safetensors", "ctranslate2", "diffusers"]


@dataclass(frozen=True, slots=True)
class LocalModel:
    """A model's files on this machine, in the form an engine loads."""

    id: str
    path: Path  # a GGUF file, or a directory (MLX, safetensors, CTranslate2 Whisper, diffusers)
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
                 cancel: threading.Event, cache_scope: str | None = None
                 ) -> AsyncIterator[GenerationEvent]:
        """Stream one Started, deltas, then exactly one Finished; stops within a token of ``cancel``.

        ``cache_scope``: KV prefixes may be reused only between requests with the same scope (one
        account's, opaque); None reuses nothing. Raises InvalidRequest (e.g.
        context_length_exceeded) before the first event.
        """
        ...

    def close(self) -> None: ...


# --- media (media.md): blocking jobs, run in a worker thread by the model host ----------------

ProgressFn = Callable[[float, float], None]
"""``progress(done, total)``: audio seconds transcribed of the whole, or denoising steps of all
the request's steps; called from the worker thread, often, and must be cheap."""


class Cancelled(Exception):
    """The job's cancel event was seen between two segments or two denoising steps."""


@dataclass(frozen=True, slots=True)
class Word:
    start: float
    end: float
    word: str
    probability: float = 0.0


@dataclass(frozen=True, slots=True)
class Segment:
    id: int
    start: float  # seconds
    end: float
    text: str
    tokens: tuple[int, ...] = ()
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0
    words: tuple[Word, ...] = ()
    seek: int = 0  # Whisper's window offset (OpenAI's verbose_json reports it)


@dataclass(frozen=True, slots=True)
class Transcript:
    text: str
    language: str  # ISO-639-1, as detected or as asked
    duration_ms: int  # of the decoded audio: what the request is charged for
    segments: tuple[Segment, ...] = ()


class MediaModel(Protocol):
    """A media model resident in memory: one job at a time per slot; ``close`` unloads it."""

    model: LocalModel

    @property
    def slots(self) -> int: ...

    @property
    def busy_slots(self) -> int: ...

    def close(self) -> None: ...


class LoadedTranscriber(MediaModel, Protocol):
    def transcribe(self, request: TranscriptionRequest, cancel: threading.Event,
                   progress: ProgressFn) -> Transcript:
        """Decode and transcribe (blocking). InvalidRequest for audio that does not decode;
        Cancelled between segments once ``cancel`` is set."""
        ...


class LoadedImageModel(MediaModel, Protocol):
    def generate_images(self, request: ImageRequest, cancel: threading.Event,
                        progress: ProgressFn) -> list[bytes]:
        """``request.n`` PNG images of ``request.size`` (blocking); the same seed gives the same
        bytes. Cancelled between denoising steps once ``cancel`` is set."""
        ...


class EngineBackend(Protocol):
    """An inference runtime; importing its library is deferred to ``load``."""

    name: str
    formats: frozenset[ModelFormat]  # the LocalModel formats it loads

    def problem(self) -> str | None:
        """Why it cannot run on this machine (library missing, no GPU...), or None."""
        ...

    def load(self, model: LocalModel, *, slots: int, threads: int | None
             ) -> LoadedModel | LoadedTranscriber | LoadedImageModel: ...


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
                 cancel: threading.Event, cache_scope: str | None = None
                 ) -> AsyncIterator[GenerationEvent]:
        """Stream one Started, deltas, then exactly one Finished; stops within a token of ``cancel``.

        ``cache_scope`` as for LoadedModel.generate. Raises InvalidRequest (e.g.
        context_length_exceeded, a capability its engine lacks) before the first event.
        """
        ...

    def close(self) -> None: ...
