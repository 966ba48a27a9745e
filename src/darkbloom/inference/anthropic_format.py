"""Anthropic Messages responses: the message object and its exact streaming event sequence.

Content blocks open lazily: a ``thinking`` block for reasoning, a ``text`` block for the answer,
each closed when the other kind starts. ``ping`` follows the first ``content_block_start``, as
Anthropic's API sends it.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Literal

from darkbloom.inference.formatting import Logprobs, Outcome
from darkbloom.inference.openai_format import dumps
from darkbloom.inference.request import GenerationRequest
from darkbloom.inference.tools import ToolCall

BlockKind = Literal["thinking", "text", "tool_use"]


def _event(name: str, payload: dict[str, Any]) -> str:
    return f"event: {name}\ndata: " + dumps({"type": name, **payload})


def stop_reason(outcome: Outcome) -> str:
    if outcome.finish_reason == "length":
        return "max_tokens"
    if outcome.finish_reason == "tool_calls":
        return "tool_use"
    return "stop_sequence" if outcome.stop_sequence else "end_turn"


def _empty_block(kind: BlockKind) -> dict[str, Any]:
    if kind == "thinking":
        return {"type": "thinking", "thinking": "", "signature": ""}
    return {"type": "text", "text": ""}


def tool_use(call: ToolCall, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "tool_use", "id": "toolu_" + call.id.removeprefix("call_"), "name": call.name,
            "input": json.loads(call.arguments) if arguments is None else arguments}


class AnthropicFormatter:
    def __init__(self, request: GenerationRequest) -> None:
        self.request = request
        self.id = "msg_" + uuid.uuid4().hex
        self._open: BlockKind | None = None
        self._index = -1

    def _message(self, content: list[dict[str, Any]], outcome: Outcome | None,
                 input_tokens: int, output_tokens: int) -> dict[str, Any]:
        return {
            "id": self.id, "type": "message", "role": "assistant", "model": self.request.model,
            "content": content,
            "stop_reason": stop_reason(outcome) if outcome else None,
            "stop_sequence": outcome.stop_sequence if outcome else None,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
        }

    def _switch(self, kind: BlockKind, block: dict[str, Any] | None = None) -> list[str]:
        if self._open == kind and kind != "tool_use":
            return []
        events = self._close()
        self._open, self._index = kind, self._index + 1
        events.append(_event("content_block_start",
                             {"index": self._index, "content_block": block or _empty_block(kind)}))
        if self._index == 0:
            events.append(_event("ping", {}))
        return events

    def _close(self) -> list[str]:
        if self._open is None:
            return []
        self._open = None
        return [_event("content_block_stop", {"index": self._index})]

    def stream_start(self, prompt_tokens: int) -> list[str]:
        return [_event("message_start", {"message": self._message([], None, prompt_tokens, 1)})]

    def stream_delta(self, text: str, logprobs: Logprobs = ()) -> list[str]:
        return [*self._switch("text"), _event("content_block_delta", {
            "index": self._index, "delta": {"type": "text_delta", "text": text}})]

    def stream_reasoning(self, text: str) -> list[str]:
        return [*self._switch("thinking"), _event("content_block_delta", {
            "index": self._index, "delta": {"type": "thinking_delta", "thinking": text}})]

    def stream_end(self, outcome: Outcome) -> list[str]:
        events = []
        for call in outcome.tool_calls:
            events += self._switch("tool_use", tool_use(call, {}))
            events.append(_event("content_block_delta", {
                "index": self._index, "delta": {"type": "input_json_delta", "partial_json": call.arguments}}))
        if self._index < 0:  # always at least one block
            events += self._switch("text")
        return [
            *events,
            *self._close(),
            _event("message_delta", {
                "delta": {"stop_reason": stop_reason(outcome), "stop_sequence": outcome.stop_sequence},
                "usage": {"output_tokens": outcome.completion_tokens}}),
            _event("message_stop", {}),
        ]

    def body(self, text: str, reasoning: str, outcome: Outcome, logprobs: Logprobs = ()) -> str:
        content: list[dict[str, Any]] = []
        if reasoning:
            content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
        if text or not outcome.tool_calls:
            content.append({"type": "text", "text": text})
        content += [tool_use(call) for call in outcome.tool_calls]
        return dumps(self._message(content, outcome, outcome.prompt_tokens, outcome.completion_tokens))
