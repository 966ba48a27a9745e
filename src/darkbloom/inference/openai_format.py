"""Build OpenAI response bodies and SSE chunk payloads, byte for byte as the consumer gets them.

The provider calls these (protocol.md §9: the coordinator relays bytes unchanged, so receipts can
sign exactly what the consumer receives). `null` fields OpenAI omits are omitted here too.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from darkbloom.inference.formatting import Logprobs, Outcome
from darkbloom.inference.request import GenerationRequest
from darkbloom.inference.tools import ToolCall
from darkbloom.protocol.sse import DONE


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class UsageCounts:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    def as_openai(self) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }
        if self.cached_tokens:  # OpenAI's field for prompt tokens a prefix cache served
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        return usage


class OpenAIFormatter:
    """Per-request builder: one id and `created` shared by every chunk of the response."""

    def __init__(self, request: GenerationRequest) -> None:
        self.request = request
        self.chat = request.endpoint == "/v1/chat/completions"
        prefix = "chatcmpl-" if self.chat else "cmpl-"
        self.id = prefix + uuid.uuid4().hex
        self.created = int(time.time())
        self._object = "chat.completion" if self.chat else "text_completion"
        self._text_offset = 0  # legacy logprobs.text_offset runs across the whole completion

    # --- streaming ---------------------------------------------------------------------

    def _chunk(self, choices: list[dict[str, Any]], usage: UsageCounts | None = None) -> str:
        obj: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.request.model,
            "choices": choices,
        }
        if usage is not None:
            obj["usage"] = usage.as_openai()
        return "data: " + dumps(obj)

    def first_chunk(self) -> str | None:
        """Chat streams open with the assistant role; text completions have no such chunk."""
        if not self.chat:
            return None
        return self._chunk([{"index": 0, "delta": {"role": "assistant", "content": ""},
                             "finish_reason": None}])

    def delta_chunk(self, text: str, logprobs: Logprobs = ()) -> str:
        if self.chat:
            choice: dict[str, Any] = {"index": 0, "delta": {"content": text}, "finish_reason": None}
            if logprobs:
                choice["logprobs"] = self._chat_logprobs(logprobs)
        else:
            choice = {"index": 0, "text": text, "logprobs": self._text_logprobs(logprobs),
                      "finish_reason": None}
        return self._chunk([choice])

    def _chat_logprobs(self, logprobs: Logprobs) -> dict[str, Any]:
        return {"content": [
            {"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes),
             "top_logprobs": [{"token": tok, "logprob": lp, "bytes": list(b)} for tok, lp, b in t.top]}
            for t in logprobs], "refusal": None}

    def _text_logprobs(self, logprobs: Logprobs) -> dict[str, Any] | None:
        """The legacy completions shape: parallel arrays, alternatives as token → logprob maps."""
        if self.request.logprobs is None:
            return None
        offsets, offset = [], self._text_offset
        for t in logprobs:
            offsets.append(offset)
            offset += len(t.token)
        self._text_offset = offset
        return {"tokens": [t.token for t in logprobs],
                "token_logprobs": [t.logprob for t in logprobs],
                "top_logprobs": [{tok: lp for tok, lp, _ in t.top} for t in logprobs],
                "text_offset": offsets}

    def final_chunks(self, finish_reason: str, usage: UsageCounts) -> list[str]:
        """Finish chunk, then usage: on its own `choices: []` chunk when the client asked for it
        (OpenAI's form), else on the finish chunk so naive `choices[0]` loops never break."""
        if self.chat:
            choice: dict[str, Any] = {"index": 0, "delta": {}, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": "", "logprobs": None, "finish_reason": finish_reason}
        if self.request.include_usage:
            return [self._chunk([choice]), self._chunk([], usage)]
        return [self._chunk([choice], usage)]

    # --- the Formatter contract ---------------------------------------------------------

    def stream_start(self, prompt_tokens: int) -> list[str]:
        first = self.first_chunk()
        return [first] if first else []

    def stream_delta(self, text: str, logprobs: Logprobs = ()) -> list[str]:
        return [self.delta_chunk(text, logprobs)]

    def stream_reasoning(self, text: str) -> list[str]:
        if not self.chat:
            return self.stream_delta(text)
        return [self._chunk([{"index": 0, "delta": {"reasoning_content": text}, "finish_reason": None}])]

    def stream_end(self, outcome: Outcome) -> list[str]:
        """Tool calls as OpenAI streams them: id, type and name first, then the arguments."""
        usage = UsageCounts(outcome.prompt_tokens, outcome.completion_tokens, outcome.cached_tokens)
        calls = []
        for i, call in enumerate(outcome.tool_calls):
            opening = {"index": i, "id": call.id, "type": "function",
                       "function": {"name": call.name, "arguments": ""}}
            calls.append(self._tool_delta(opening))
            calls.append(self._tool_delta({"index": i, "function": {"arguments": call.arguments}}))
        return [*calls, *self.final_chunks(outcome.finish_reason, usage), DONE]

    def _tool_delta(self, call: dict[str, Any]) -> str:
        return self._chunk([{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}])

    def body(self, text: str, reasoning: str, outcome: Outcome, logprobs: Logprobs = ()) -> str:
        usage = UsageCounts(outcome.prompt_tokens, outcome.completion_tokens, outcome.cached_tokens)
        return self.full_response(text, outcome.finish_reason, usage, reasoning, outcome.tool_calls,
                                  logprobs)

    # --- non-streaming -----------------------------------------------------------------

    def full_response(self, text: str, finish_reason: str, usage: UsageCounts,
                      reasoning: str = "", tool_calls: tuple[ToolCall, ...] = (),
                      logprobs: Logprobs = ()) -> str:
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if reasoning:
                message["reasoning_content"] = reasoning
            if tool_calls:
                message["tool_calls"] = [
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                    for c in tool_calls]
            choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish_reason}
            if self.request.logprobs is not None:
                choice["logprobs"] = self._chat_logprobs(logprobs)
        else:
            choice = {"index": 0, "text": text, "logprobs": self._text_logprobs(logprobs),
                      "finish_reason": finish_reason}
        return dumps({
            "id": self.id,
            "object": self._object,
            "created": self.created,
            "model": self.request.model,
            "choices": [choice],
            "usage": usage.as_openai(),
        })


