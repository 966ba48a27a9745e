"""The contract every response dialect implements: turn engine output into consumer bytes.

Each method returns SSE event payloads (``data: {...}``, optionally preceded by an ``event:``
line) without the trailing blank line; the coordinator adds it when relaying. A non-streamed
body is one payload, ``data: `` + the JSON document.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from darkbloom.inference.tools import ToolCall


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One generated token's log probability and its best alternatives (raw model distribution)."""

    token: str
    logprob: float
    bytes: tuple[int, ...]
    top: tuple[tuple[str, float, tuple[int, ...]], ...] = ()


Logprobs = tuple[TokenLogprob, ...]


@dataclass(frozen=True, slots=True)
class Outcome:
    finish_reason: Literal["stop", "length", "tool_calls"]
    prompt_tokens: int
    completion_tokens: int
    stop_sequence: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    cached_tokens: int = 0  # of prompt_tokens, served from the provider's prefix cache


class Formatter(Protocol):
    def stream_start(self, prompt_tokens: int) -> list[str]:
        """Events before the first text (sent together with it, so nothing commits early)."""
        ...

    def stream_delta(self, text: str, logprobs: Logprobs = ()) -> list[str]:
        """Answer text (and, when asked for, the logprobs of the tokens that made it)."""
        ...

    def stream_reasoning(self, text: str) -> list[str]:
        """Reasoning text (the model's ``<think>`` part), never mixed into the answer."""
        ...

    def stream_end(self, outcome: Outcome) -> list[str]:
        """Closing events, including the dialect's own terminator (``[DONE]``, message_stop...)."""
        ...

    def body(self, text: str, reasoning: str, outcome: Outcome, logprobs: Logprobs = ()) -> str:
        """The complete non-streamed JSON document."""
        ...
