"""Parse Anthropic Messages requests (POST /v1/messages) into a GenerationRequest.

Rules follow Anthropic's API: ``max_tokens`` is required, ``temperature`` is 0-1, unknown
top-level fields are refused. Content the engine cannot use (images, documents) is a 400.
"""

from __future__ import annotations

from typing import Any

from darkbloom.errors import InvalidRequest
from darkbloom.inference.fields import (
    bounded_number,
    is_int,
    model_name,
    reject_unknown,
    stop_sequences,
    stream_flag,
    token_limit,
    unsupported,
)
from darkbloom.inference.request import MAX_MESSAGES, GenerationRequest, Message, Sampling

_KEYS = frozenset({
    "model", "max_tokens", "messages", "system", "temperature", "top_p", "top_k",
    "stop_sequences", "stream", "metadata", "thinking", "tools", "tool_choice", "service_tier",
})
# Blocks a previous assistant turn may carry that add nothing to the prompt.
_SKIPPED_BLOCKS = frozenset({"thinking", "redacted_thinking"})


def parse_messages(body: dict[str, Any]) -> GenerationRequest:
    reject_unknown(body, _KEYS)
    model = model_name(body)
    if body.get("max_tokens") is None:
        raise InvalidRequest("max_tokens: Field required", param="max_tokens")
    max_tokens = token_limit(body, "max_tokens")
    messages = [*_system(body.get("system")), *_turns(body.get("messages"))]
    if body.get("tools"):
        raise unsupported("tools")
    if body.get("tool_choice") not in (None, {"type": "none"}, {"type": "auto"}):
        raise unsupported("tool_choice")
    top_k = body.get("top_k")
    if top_k is not None and (not is_int(top_k) or top_k < 0):
        raise InvalidRequest("top_k: must be a non-negative integer", param="top_k")
    temperature = bounded_number(body, "temperature", 0, 1)
    top_p = bounded_number(body, "top_p", 0, 1, lo_open=True)
    defaults = Sampling()
    return GenerationRequest(
        endpoint="/v1/messages",
        model=model,
        messages=tuple(messages),
        max_tokens=max_tokens,
        stop=stop_sequences(body.get("stop_sequences"), param="stop_sequences", allow_string=False),
        stream=stream_flag(body),
        sampling=Sampling(
            temperature=defaults.temperature if temperature is None else float(temperature),
            top_p=defaults.top_p if top_p is None else float(top_p),
            top_k=int(top_k or 0),
        ),
    )


def _system(value: Any) -> list[Message]:
    if value is None:
        return []
    if isinstance(value, str):
        return [Message("system", value)] if value else []
    if isinstance(value, list):
        text = _text_blocks(value, "system")
        return [Message("system", text)] if text else []
    raise InvalidRequest("system: must be a string or an array of text blocks", param="system")


def _turns(value: Any) -> list[Message]:
    if not isinstance(value, list):
        raise InvalidRequest("messages: Field required and must be an array", param="messages")
    if not value:
        raise InvalidRequest("messages: at least one message is required", param="messages")
    if len(value) > MAX_MESSAGES:
        raise InvalidRequest(f"messages: at most {MAX_MESSAGES} messages", param="messages")
    turns = []
    for i, item in enumerate(value):
        where = f"messages.{i}"
        if not isinstance(item, dict):
            raise InvalidRequest(f"{where}: must be an object", param=where)
        role = item.get("role")
        if role not in ("user", "assistant"):
            raise InvalidRequest(f"{where}.role: Input should be 'user' or 'assistant'",
                                 param=f"{where}.role")
        content = item.get("content")
        if isinstance(content, str):
            text = content
        elif isinstance(content, list):
            text = _text_blocks(content, f"{where}.content")
        else:
            raise InvalidRequest(f"{where}.content: must be a string or an array of content blocks",
                                 param=f"{where}.content")
        turns.append(Message(role, text))
    return turns


def _text_blocks(blocks: list[Any], where: str) -> str:
    texts = []
    for j, block in enumerate(blocks):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise InvalidRequest(f"{where}.{j}: must be an object with a 'type'", param=f"{where}.{j}")
        kind = block["type"]
        if kind in _SKIPPED_BLOCKS:
            continue
        if kind in ("image", "document", "tool_use", "tool_result"):
            raise InvalidRequest(f"{where}.{j}: content blocks of type {kind!r} are not supported "
                                 "by this model", param=f"{where}.{j}.type",
                                 code="unsupported_parameter")
        if kind != "text":
            raise InvalidRequest(f"{where}.{j}.type: unknown content block type {kind[:32]!r}",
                                 param=f"{where}.{j}.type")
        if not isinstance(block.get("text"), str):
            raise InvalidRequest(f"{where}.{j}.text: Field required", param=f"{where}.{j}.text")
        texts.append(block["text"])
    return "".join(texts)
