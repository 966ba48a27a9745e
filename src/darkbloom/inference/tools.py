"""Function calling for every dialect: tool definitions, the choice, the prompt and the call.

The model is told the tools in a system message and answers a call as one JSON object,
``{"name": ..., "arguments": {...}}``. With ``required`` or a named tool the answer is
grammar-constrained to exactly such an object for the allowed tools, so the arguments always
parse and match the tool's parameter schema; with ``auto`` an answer that is such an object is
read as a call, anything else is text. Earlier calls and results in the conversation are
written back into the prompt in the same shape.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from darkbloom.errors import InvalidRequest
from darkbloom.inference import bounded_json

MAX_TOOLS = 128
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str
    parameters: str  # JSON text of the parameters schema, key order as given


@dataclass(frozen=True, slots=True)
class ToolChoice:
    mode: Literal["none", "auto", "required"]
    name: str | None = None  # a named tool (mode "required" restricted to it)


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI returns it


AUTO = ToolChoice("auto")
NONE = ToolChoice("none")


def define(name: Any, description: Any, parameters: Any, where: str) -> Tool:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidRequest(f"{where}.name must match ^[a-zA-Z0-9_-]{{1,64}}$", param=f"{where}.name")
    if description is not None and not isinstance(description, str):
        raise InvalidRequest(f"{where}.description must be a string", param=f"{where}.description")
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
        raise InvalidRequest(f"{where} parameters must be a JSON Schema of type object", param=where)
    # Key order is kept: the grammar follows the schema's property order, as OpenAI's does.
    return Tool(name, description or "", json.dumps(parameters))


def parse_tools(value: Any, read_one: Callable[[int, Any], Tool],
                not_a_list: str = "tools must be an array") -> tuple[Tool, ...]:
    """Every dialect's ``tools`` array: absent is none; each entry read by the dialect."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidRequest(not_a_list, param="tools")
    return check_unique([read_one(i, item) for i, item in enumerate(value)], "tools")


def check_unique(tools: list[Tool], param: str) -> tuple[Tool, ...]:
    if len(tools) > MAX_TOOLS:
        raise InvalidRequest(f"{param} may contain at most {MAX_TOOLS} tools", param=param)
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        raise InvalidRequest(f"{param} contains duplicate tool names", param=param)
    return tuple(tools)


def choose(mode: str, name: str | None, tools: tuple[Tool, ...], param: str) -> ToolChoice:
    if mode == "none":
        return NONE
    if not tools:
        raise InvalidRequest(f"{param} requires tools", param=param)
    if name is not None and name not in {t.name for t in tools}:
        raise InvalidRequest(f"{param} names a tool that is not in tools", param=param)
    return ToolChoice("auto" if mode == "auto" else "required", name)


def new_call_id(prefix: str = "call_") -> str:
    return prefix + uuid.uuid4().hex[:24]


def allowed(tools: tuple[Tool, ...], choice: ToolChoice) -> tuple[Tool, ...]:
    if choice.mode == "none":
        return ()
    return tuple(t for t in tools if choice.name is None or t.name == choice.name)


def system_prompt(tools: tuple[Tool, ...]) -> str:
    listing = json.dumps([{"name": t.name, "description": t.description,
                           "parameters": json.loads(t.parameters)} for t in tools])
    return ("You can call these functions:\n" + listing + "\nTo call one, reply with only a JSON "
            'object of the form {"name": <function name>, "arguments": <arguments object>}.')


def call_schema(tools: tuple[Tool, ...]) -> str:
    """JSON Schema of exactly one call to one of ``tools``: the grammar for required/named."""
    options = [{"type": "object", "properties": {"name": {"const": t.name},
                                                 "arguments": json.loads(t.parameters)},
                "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
    return json.dumps(options[0] if len(options) == 1 else {"anyOf": options})


def written_call(name: str, arguments: str, where: str = "arguments") -> str:
    """How an earlier call is written back into the prompt: the shape the model answers in.
    Arguments that are not JSON are kept as the string they are; JSON nested too deep is a 400."""
    try:
        parsed: Any = bounded_json.loads(arguments)
    except bounded_json.TooDeep:
        raise InvalidRequest(f"{where} is nested more than {bounded_json.MAX_DEPTH} levels deep",
                             param=where) from None
    except ValueError:
        parsed = arguments
    return json.dumps({"name": name, "arguments": parsed})


def read_call(text: str, tools: tuple[Tool, ...]) -> ToolCall | None:
    """The call in a finished answer, or None when the answer is ordinary text."""
    stripped = text.strip()
    if not stripped.startswith("{"):
        return None
    try:
        obj = bounded_json.loads(stripped)
    except ValueError:  # not JSON, or nested too deep to be a call
        return None
    if not isinstance(obj, dict) or set(obj) - {"name", "arguments"}:
        return None
    name, arguments = obj.get("name"), obj.get("arguments", {})
    if not isinstance(name, str) or name not in {t.name for t in tools} or not isinstance(arguments, dict):
        return None
    return ToolCall(new_call_id(), str(name), json.dumps(arguments))
