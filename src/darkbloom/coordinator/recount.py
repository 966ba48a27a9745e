"""The generated text of a response the coordinator relayed in the clear, in any dialect, so that it
can recount the completion tokens itself instead of taking a provider's word (issue 9).

Only text the model generated counts: content, reasoning, tool names and arguments. Framing (roles,
ids, finish reasons, usage) does not. Anything unparsable contributes nothing: the recount is an
upper bound on what is billed, never a reason to bill more.

A provider writes these events, so nothing in them may raise (a shape we do not expect, nesting past
the recursion limit, a lone surrogate) and no size may make the count long: ``count_generated``
tokenizes in slices, each holding the tokenizer briefly, and stops once the count could lower no bill.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from darkbloom.protocol.frames import Endpoint

SLICE_CHARS = 16 * 1024  # tokenized per call: a few milliseconds of the tokenizer's lock
_STREAM_DELTAS = {  # Responses and Messages stream event types whose text was generated
    "response.output_text.delta", "response.reasoning_text.delta",
    "response.reasoning_summary_text.delta", "response.function_call_arguments.delta",
}


def _data(event: bytes) -> Any:
    for line in event.split(b"\n"):
        if line.startswith(b"data: ") and line != b"data: [DONE]":
            try:
                return json.loads(line[6:])
            except ValueError:
                return None
    return None


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _strings(*values: Any) -> Iterator[str]:
    for value in values:
        if isinstance(value, str):
            yield value
        elif value is not None and not isinstance(value, int | float | bool):
            yield json.dumps(value, ensure_ascii=False)


def _chat(choice: dict[str, Any], key: str) -> Iterator[str]:
    part = choice.get(key)
    if not isinstance(part, dict):
        return
    yield from _strings(part.get("content"), part.get("reasoning_content"))
    for call in _list(part.get("tool_calls")):
        if isinstance(call, dict) and isinstance(call.get("function"), dict):
            yield from _strings(call["function"].get("name"), call["function"].get("arguments"))


def _pieces(endpoint: Endpoint, obj: Any, stream: bool) -> Iterator[str]:
    if not isinstance(obj, dict):
        return
    if endpoint in ("/v1/chat/completions", "/v1/completions"):
        for choice in _list(obj.get("choices")):
            if isinstance(choice, dict):
                if endpoint == "/v1/completions":
                    yield from _strings(choice.get("text"))
                else:
                    yield from _chat(choice, "delta" if stream else "message")
    elif endpoint == "/v1/messages":
        if stream:
            delta = obj.get("delta") if obj.get("type") == "content_block_delta" else None
            if isinstance(delta, dict):
                yield from _strings(delta.get("text"), delta.get("thinking"), delta.get("partial_json"))
            return
        for block in _list(obj.get("content")):
            if isinstance(block, dict):
                yield from _strings(block.get("text"), block.get("thinking"),
                                    block.get("name"), block.get("input"))
    elif stream:  # /v1/responses
        if obj.get("type") in _STREAM_DELTAS:
            yield from _strings(obj.get("delta"))
    else:
        for item in _list(obj.get("output")):
            if not isinstance(item, dict):
                continue
            yield from _strings(item.get("name"), item.get("arguments"))
            for key in ("content", "summary"):
                for part in _list(item.get(key)):
                    if isinstance(part, dict):
                        yield from _strings(part.get("text"))


def event_text(endpoint: Endpoint, stream: bool, event: bytes) -> str:
    """The generated text one event (or a non-streamed body) carries; "" for anything unreadable."""
    try:
        return "".join(_pieces(endpoint, _data(event) if stream else _body(event), stream))
    except (ValueError, TypeError, RecursionError):
        return ""


def generated_text(endpoint: Endpoint, stream: bool, events: Iterable[bytes]) -> str:
    """The text a response's events (or its one non-streamed body) carry that the model generated."""
    return "".join(event_text(endpoint, stream, event) for event in events)


def text_events(endpoint: Endpoint, stream: bool, events: Iterable[bytes]) -> int:
    """How many events carried generated text (about one token each, billing.md §4)."""
    return sum(1 for event in events if event_text(endpoint, stream, event))


def count_generated(endpoint: Endpoint, stream: bool, events: Iterable[bytes], count: Callable[[str], int],
                    limit: int) -> int:
    """``min(limit, tokens)`` of the generated text, ``count`` being the model's tokenizer.

    The text is counted in slices of about SLICE_CHARS, cut before whitespace where there is some;
    a cut can split what the whole would have merged into one token, so one token per cut is taken
    off and the figure stays a lower bound. Counting stops once it reaches ``limit``."""
    total = slices = held = 0
    pending: list[str] = []
    for event in events:
        text = event_text(endpoint, stream, event)
        if not text:
            continue
        pending.append(text)
        held += len(text)
        if held < SLICE_CHARS:
            continue
        joined, start = "".join(pending), 0
        while len(joined) - start >= SLICE_CHARS:
            cut = _cut(joined, start)
            total += count(_utf8(joined[start:cut]))
            slices += 1
            if total - (slices - 1) >= limit:
                return limit
            start = cut
        pending, held = [joined[start:]], len(joined) - start
    if held:
        total += count(_utf8("".join(pending)))
        slices += 1
    return max(0, min(limit, total - max(slices - 1, 0)))


def _cut(text: str, start: int) -> int:
    """Where the slice from ``start`` ends: before the last whitespace in its second half, else
    after SLICE_CHARS characters."""
    at = max(text.rfind(space, start + SLICE_CHARS // 2, start + SLICE_CHARS) for space in " \n\t")
    return at if at > start else start + SLICE_CHARS


def _utf8(text: str) -> str:
    """The text as the consumer's decoder shows it: lone surrogates (which JSON can carry, and which
    the tokenizer's UTF-8 encoding refuses) become replacement characters."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def _body(body: bytes) -> Any:
    try:
        return json.loads(body[6:] if body.startswith(b"data: ") else body)
    except ValueError:
        return None
