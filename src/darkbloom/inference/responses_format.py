"""OpenAI Responses objects and their streaming events (each with a ``sequence_number``).

Output items open lazily: a ``reasoning`` item (its text as a summary part) for the model's
``<think>`` part, a ``message`` item for the answer. Every response has a message item, so
``response.output_text`` always works.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from darkbloom.inference.formatting import Logprobs, Outcome
from darkbloom.inference.openai_format import dumps
from darkbloom.inference.request import GenerationRequest
from darkbloom.inference.tools import ToolCall

ItemKind = Literal["reasoning", "message"]


class ResponsesFormatter:
    def __init__(self, request: GenerationRequest) -> None:
        self.request = request
        self._token = uuid.uuid4().hex
        self.id = "resp_" + self._token
        self.created_at = int(time.time())
        self._seq = 0
        self._items: list[dict[str, Any]] = []  # finished output items
        self._open: ItemKind | None = None
        self._text: list[str] = []

    # --- objects -----------------------------------------------------------------------

    def _item_id(self, kind: ItemKind | Literal["function_call"], index: int) -> str:
        prefix = {"reasoning": "rs", "message": "msg", "function_call": "fc"}[kind]
        return f"{prefix}_{self._token}_{index}"

    def _call_item(self, call: ToolCall, index: int, done: bool) -> dict[str, Any]:
        return {"id": self._item_id("function_call", index), "type": "function_call",
                "status": "completed" if done else "in_progress", "call_id": call.id,
                "name": call.name, "arguments": call.arguments if done else ""}

    @staticmethod
    def _part(kind: ItemKind, text: str) -> dict[str, Any]:
        if kind == "reasoning":
            return {"type": "summary_text", "text": text}
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def _item(self, kind: ItemKind, index: int, text: str | None) -> dict[str, Any]:
        item_id = self._item_id(kind, index)
        if kind == "reasoning":
            return {"id": item_id, "type": "reasoning",
                    "summary": [self._part(kind, text)] if text is not None else []}
        return {"id": item_id, "type": "message", "role": "assistant",
                "status": "completed" if text is not None else "in_progress",
                "content": [self._part(kind, text)] if text is not None else []}

    def _response(self, items: list[dict[str, Any]], outcome: Outcome | None) -> dict[str, Any]:
        request = self.request
        status, usage, incomplete = "in_progress", None, None
        if outcome is not None:
            length = outcome.finish_reason == "length"
            status = "incomplete" if length else "completed"
            incomplete = {"reason": "max_output_tokens"} if length else None
            reasoned = any(item["type"] == "reasoning" for item in items)
            usage = {
                "input_tokens": outcome.prompt_tokens,
                "input_tokens_details": {"cached_tokens": outcome.cached_tokens,
                                         "cache_write_tokens": 0},
                "output_tokens": outcome.completion_tokens,
                # api.md §3.3: all output counts as reasoning once any reasoning exists.
                "output_tokens_details": {"reasoning_tokens": outcome.completion_tokens if reasoned else 0},
                "total_tokens": outcome.prompt_tokens + outcome.completion_tokens,
            }
        return {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "error": None, "incomplete_details": incomplete, "instructions": request.instructions,
            "max_output_tokens": request.max_tokens, "model": request.model,
            "output": items,
            "parallel_tool_calls": False, "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None}, "store": False,
            "temperature": request.sampling.temperature, "text": {"format": {"type": "text"}},
            "tool_choice": "none", "tools": [], "top_p": request.sampling.top_p,
            "truncation": "disabled", "usage": usage, "metadata": {},
        }

    # --- streaming ---------------------------------------------------------------------

    def _event(self, name: str, payload: dict[str, Any]) -> str:
        event = {"type": name, "sequence_number": self._seq, **payload}
        self._seq += 1
        return f"event: {name}\ndata: " + dumps(event)

    def _where(self, kind: ItemKind) -> dict[str, Any]:
        index = len(self._items)
        where: dict[str, Any] = {"item_id": self._item_id(kind, index), "output_index": index}
        where["summary_index" if kind == "reasoning" else "content_index"] = 0
        return where

    def _switch(self, kind: ItemKind) -> list[str]:
        if self._open == kind:
            return []
        events = self._close()
        self._open = kind
        index = len(self._items)
        part_added = ("response.reasoning_summary_part.added" if kind == "reasoning"
                      else "response.content_part.added")
        return [*events,
                self._event("response.output_item.added",
                            {"output_index": index, "item": self._item(kind, index, None)}),
                self._event(part_added, {**self._where(kind), "part": self._part(kind, "")})]

    def _close(self) -> list[str]:
        kind = self._open
        if kind is None:
            return []
        text = "".join(self._text)
        where, index = self._where(kind), len(self._items)
        if kind == "reasoning":
            names = ("response.reasoning_summary_text.done", "response.reasoning_summary_part.done")
            text_done = {**where, "text": text}
        else:
            names = ("response.output_text.done", "response.content_part.done")
            text_done = {**where, "text": text, "logprobs": []}
        events = [self._event(names[0], text_done),
                  self._event(names[1], {**where, "part": self._part(kind, text)}),
                  self._event("response.output_item.done",
                              {"output_index": index, "item": self._item(kind, index, text)})]
        self._items.append(self._item(kind, index, text))
        self._open, self._text = None, []
        return events

    def _delta(self, kind: ItemKind, text: str) -> list[str]:
        events = self._switch(kind)
        self._text.append(text)
        if kind == "reasoning":
            return [*events, self._event("response.reasoning_summary_text.delta",
                                         {**self._where(kind), "delta": text})]
        return [*events, self._event("response.output_text.delta",
                                     {**self._where(kind), "delta": text, "logprobs": []})]

    def stream_start(self, prompt_tokens: int) -> list[str]:
        created = self._response([], None)
        return [self._event("response.created", {"response": created}),
                self._event("response.in_progress", {"response": created})]

    def stream_delta(self, text: str, logprobs: Logprobs = ()) -> list[str]:
        return self._delta("message", text)

    def stream_reasoning(self, text: str) -> list[str]:
        return self._delta("reasoning", text)

    def stream_end(self, outcome: Outcome) -> list[str]:
        has_message = self._open == "message" or any(i["type"] == "message" for i in self._items)
        events = [] if has_message or outcome.tool_calls else self._switch("message")
        events += self._close()
        for call in outcome.tool_calls:
            index = len(self._items)
            where = {"item_id": self._item_id("function_call", index), "output_index": index}
            events += [
                self._event("response.output_item.added",
                            {"output_index": index, "item": self._call_item(call, index, False)}),
                self._event("response.function_call_arguments.delta", {**where, "delta": call.arguments}),
                self._event("response.function_call_arguments.done",
                            {**where, "name": call.name, "arguments": call.arguments}),
                self._event("response.output_item.done",
                            {"output_index": index, "item": self._call_item(call, index, True)}),
            ]
            self._items.append(self._call_item(call, index, True))
        # Always response.completed (the SDK's final-response helpers wait for it); a length stop
        # shows as status "incomplete" with incomplete_details, as in a non-streamed body.
        return [*events, self._event("response.completed",
                                     {"response": self._response(self._items, outcome)})]

    def body(self, text: str, reasoning: str, outcome: Outcome, logprobs: Logprobs = ()) -> str:
        items = [self._item("reasoning", 0, reasoning)] if reasoning else []
        if text or not outcome.tool_calls:
            items.append(self._item("message", len(items), text))
        items += [self._call_item(call, len(items) + i, True) for i, call in enumerate(outcome.tool_calls)]
        return dumps(self._response(items, outcome))
