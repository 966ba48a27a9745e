"""Parse Anthropic Messages requests (POST /v1/messages) into a GenerationRequest.

Rules follow Anthropic's API: ``max_tokens`` is required, ``temperature`` is 0-1, unknown
top-level fields are refused. Content the engine cannot use (images, documents) is a 400.
"""

from __future__ import annotations

import json
from typing import Any

from darkbloom.errors import InvalidRequest
from darkbloom.inference.fields import (
    model_name,
    reject_unknown,
    stop_sequences,
    stream_flag,
    token_limit,
    unsupported,
)
from darkbloom.inference.request import MAX_MESSAGES, GenerationRequest, Message, basic_sampling
from darkbloom.inference.tools import AUTO, NONE, Tool, ToolChoice, choose, define, parse_tools, written_call

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
    tools = _tools(body.get("tools"))
    tool_choice = _tool_choice(body.get("tool_choice"), tools)
    return GenerationRequest(
        endpoint="/v1/messages",
        model=model,
        messages=tuple(messages),
        max_tokens=max_tokens,
        stop=stop_sequences(body.get("stop_sequences"), param="stop_sequences", allow_string=False),
        stream=stream_flag(body),
        sampling=basic_sampling(body, temperature_max=1, top_k_prefix=":"),
        tools=tools,
        tool_choice=tool_choice,
    )


def _tools(value: Any) -> tuple[Tool, ...]:
    return parse_tools(value, _tool, not_a_list="tools: must be an array")


def _tool(i: int, item: Any) -> Tool:
    if not isinstance(item, dict):
        raise InvalidRequest(f"tools.{i}: must be an object", param=f"tools.{i}")
    if item.get("type") not in (None, "custom"):
        raise unsupported(f"tools.{i}.type", f"server tools ({str(item.get('type'))[:32]!r})")
    if not isinstance(item.get("input_schema"), dict):
        raise InvalidRequest(f"tools.{i}.input_schema: Field required", param=f"tools.{i}.input_schema")
    return define(item.get("name"), item.get("description"), item["input_schema"], f"tools.{i}")


def _tool_choice(value: Any, tools: tuple[Tool, ...]) -> ToolChoice:
    if value is None:
        return AUTO if tools else NONE
    kind = value.get("type") if isinstance(value, dict) else None
    if kind in ("auto", "none"):
        return choose(kind, None, tools, "tool_choice")
    if kind == "any":
        return choose("required", None, tools, "tool_choice")
    if kind == "tool" and isinstance(value.get("name"), str):
        return choose("required", value["name"], tools, "tool_choice")
    raise InvalidRequest("tool_choice: must be {\"type\": \"auto\" | \"any\" | \"none\"} or "
                         "{\"type\": \"tool\", \"name\": ...}", param="tool_choice")


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
    call_names: dict[str, str] = {}  # tool_use id -> tool name, for the results that follow
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
            text = _text_blocks(content, f"{where}.content", call_names)
        else:
            raise InvalidRequest(f"{where}.content: must be a string or an array of content blocks",
                                 param=f"{where}.content")
        turns.append(Message(role, text))
    return turns


def _text_blocks(blocks: list[Any], where: str, call_names: dict[str, str] | None = None) -> str:
    texts = []
    for j, block in enumerate(blocks):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise InvalidRequest(f"{where}.{j}: must be an object with a 'type'", param=f"{where}.{j}")
        kind = block["type"]
        if kind in _SKIPPED_BLOCKS:
            continue
        if call_names is not None and kind in ("tool_use", "tool_result"):
            texts.append(_tool_block(block, f"{where}.{j}", call_names))
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
    return "\n".join(texts)


def _tool_block(block: dict[str, Any], where: str, call_names: dict[str, str]) -> str:
    """An earlier tool_use or tool_result, written into the prompt as text."""
    if block["type"] == "tool_use":
        name, arguments = block.get("name"), block.get("input", {})
        if not isinstance(name, str) or not isinstance(arguments, dict):
            raise InvalidRequest(f"{where}: tool_use needs a name and an input object", param=where)
        if isinstance(block.get("id"), str):
            call_names[block["id"]] = name
        return written_call(name, json.dumps(arguments))
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str):
        raise InvalidRequest(f"{where}.tool_use_id: Field required", param=f"{where}.tool_use_id")
    content = block.get("content", "")
    if isinstance(content, list):
        content = _text_blocks(content, f"{where}.content")
    elif not isinstance(content, str):
        raise InvalidRequest(f"{where}.content: must be a string or text blocks", param=f"{where}.content")
    return f"Result of {call_names.get(call_id, call_id)}: {content}"
