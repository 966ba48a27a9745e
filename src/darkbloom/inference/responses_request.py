"""Parse OpenAI Responses requests (POST /v1/responses) into a GenerationRequest.

``input`` (a string or items) becomes the conversation and ``instructions`` a leading system
message (api.md §3.3). Nothing is stored server-side, so ``previous_response_id`` is refused.
"""

from __future__ import annotations

from typing import Any

from darkbloom.errors import InvalidRequest
from darkbloom.inference.fields import (
    model_name,
    reject_unknown,
    stream_flag,
    token_limit,
    unsupported,
)
from darkbloom.inference.grammar import ResponseFormat, parse_json_schema_format
from darkbloom.inference.request import MAX_MESSAGES, GenerationRequest, Message, basic_sampling
from darkbloom.inference.tools import AUTO, NONE, Tool, ToolChoice, choose, define, parse_tools, written_call

_KEYS = frozenset({
    "model", "input", "instructions", "max_output_tokens", "temperature", "top_p", "stream",
    "text", "tools", "tool_choice", "store", "metadata", "user", "parallel_tool_calls",
    "truncation", "reasoning", "previous_response_id", "include", "service_tier", "top_logprobs",
    "background", "prompt_cache_key", "safety_identifier", "stream_options",
})
_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})


def parse_responses(body: dict[str, Any]) -> GenerationRequest:
    reject_unknown(body, _KEYS)
    model = model_name(body)
    for key in ("previous_response_id", "top_logprobs"):
        if body.get(key) is not None:
            raise unsupported(key)
    if body.get("background"):
        raise unsupported("background")
    tools = _tools(body.get("tools"))
    tool_choice = _tool_choice(body.get("tool_choice"), tools)
    if body.get("include"):
        raise unsupported("include")
    response_format = _text_format(body.get("text"))
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise InvalidRequest("instructions must be a string", param="instructions")
    messages = ([Message("system", instructions)] if instructions else []) + _input(body.get("input"))
    return GenerationRequest(
        endpoint="/v1/responses",
        model=model,
        messages=tuple(messages),
        instructions=instructions,
        response_format=response_format,
        tools=tools,
        tool_choice=tool_choice,
        max_tokens=token_limit(body, "max_output_tokens"),
        stream=stream_flag(body),
        sampling=basic_sampling(body, temperature_max=2),
    )


def _text_format(text: Any) -> ResponseFormat | None:
    """``text.format``: text, json_object, or json_schema with name/schema inline (Responses shape)."""
    if text is None:
        return None
    if not isinstance(text, dict):
        raise InvalidRequest("text must be an object", param="text")
    fmt = text.get("format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return ResponseFormat("json_object")
    if kind == "json_schema":
        return parse_json_schema_format(fmt, "text.format")
    raise InvalidRequest(f"Invalid value for text.format.type: {str(kind)[:32]!r}. Supported values "
                         "are: 'text', 'json_object' and 'json_schema'.", param="text.format.type")


def _input(value: Any) -> list[Message]:
    if isinstance(value, str):
        if not value:
            raise InvalidRequest("input must not be empty", param="input")
        return [Message("user", value)]
    if not isinstance(value, list):
        raise InvalidRequest("input is required: a string or an array of input items", param="input")
    if not value:
        raise InvalidRequest("input must contain at least one item", param="input")
    if len(value) > MAX_MESSAGES:
        raise InvalidRequest(f"input may contain at most {MAX_MESSAGES} items", param="input")
    messages = []
    call_names: dict[str, str] = {}  # call_id -> function name, for the outputs that follow
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"{where} must be an object", param=where)
        kind = item.get("type", "message")
        if kind == "reasoning":
            continue
        if kind == "function_call":
            name, arguments = item.get("name"), item.get("arguments", "")
            if not isinstance(name, str) or not isinstance(arguments, str):
                raise InvalidRequest(f"{where} needs a name and arguments (a JSON string)", param=where)
            if isinstance(item.get("call_id"), str):
                call_names[item["call_id"]] = name
            messages.append(Message("assistant", written_call(name, arguments, f"{where}.arguments")))
            continue
        if kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str) or not isinstance(output, str):
                raise InvalidRequest(f"{where} needs a call_id and an output string", param=where)
            messages.append(Message("tool", f"Result of {call_names.get(call_id, call_id)}: {output}"))
            continue
        if kind != "message":
            raise InvalidRequest(f"{where}.type: unknown input item type {str(kind)[:32]!r}",
                                 param=f"{where}.type")
        role = item.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            shown = repr(role[:32]) if isinstance(role, str) else "a non-string value"
            raise InvalidRequest(f"Invalid value for {where}.role: {shown}. Supported "
                                 "values are: 'user', 'assistant', 'system' and 'developer'.",
                                 param=f"{where}.role")
        messages.append(Message(_ROLES[role], _content(item.get("content"), f"{where}.content")))
    return messages


def _content(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"{where} must be a string or an array of content parts", param=where)
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise InvalidRequest(f"{where}[{j}] must be an object with a 'type'", param=f"{where}[{j}]")
        if part["type"] not in _TEXT_PARTS:
            raise InvalidRequest(f"{where}[{j}] has type {part['type'][:32]!r}; this model accepts "
                                 "text only", param=f"{where}[{j}].type", code="unsupported_parameter")
        if not isinstance(part.get("text"), str):
            raise InvalidRequest(f"{where}[{j}].text must be a string", param=f"{where}[{j}].text")
        texts.append(part["text"])
    return "\n".join(texts)


def _tools(value: Any) -> tuple[Tool, ...]:
    return parse_tools(value, _tool)


def _tool(i: int, item: Any) -> Tool:
    where = f"tools[{i}]"
    kind = item.get("type") if isinstance(item, dict) else None
    if kind != "function":
        raise unsupported(f"{where}.type", f"tools of type {str(kind)[:32]!r}")
    return define(item.get("name"), item.get("description"), item.get("parameters"), where)


def _tool_choice(value: Any, tools: tuple[Tool, ...]) -> ToolChoice:
    if value is None:
        return AUTO if tools else NONE
    if value in ("none", "auto", "required"):
        return choose(value, None, tools, "tool_choice")
    if isinstance(value, dict) and value.get("type") == "function" and isinstance(value.get("name"), str):
        return choose("required", value["name"], tools, "tool_choice")
    raise InvalidRequest("tool_choice must be 'none', 'auto', 'required' or "
                         '{"type": "function", "name": ...}', param="tool_choice")
