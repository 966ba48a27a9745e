"""The engine contract: everything the provider agent needs from an inference runtime.

An engine turns a validated GenerationRequest into text deltas and exact token counts. It never
sees the network or the sealing; the agent does that. Engines: llamacpp.py (default).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol

from darkbloom.inference.formatting import Logprobs
from darkbloom.inference.request import GenerationRequest
from darkbloom.protocol.frames import ModelInfo

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


class Engine(Protocol):
    name: str

    @property
    def slots(self) -> int:
        """Requests the engine runs at once; the agent advertises exactly this many."""
        ...

    @property
    def busy_slots(self) -> int: ...

    def models(self) -> list[ModelInfo]: ...

    def serves(self, model: str) -> bool: ...

    def generate(self, request: GenerationRequest, max_tokens_cap: int,
                 cancel: threading.Event) -> AsyncIterator[GenerationEvent]:
        """Stream one Started, deltas, then exactly one Finished; stops within a token of ``cancel``.

        Raises InvalidRequest (e.g. context_length_exceeded) before the first event.
        """
        ...

    def close(self) -> None: ...
