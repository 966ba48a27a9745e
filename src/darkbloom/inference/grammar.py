"""Structured output: the GBNF grammar that constrains generation to JSON, or to a JSON Schema.

llama.cpp's grammar sampler then makes every sampled token keep the output inside the grammar,
so even a tiny model's output parses (and validates) unless max_tokens cuts it short. The
coordinator converts the schema too, so a schema the converter cannot handle is a 400 before
routing, never a provider failure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from darkbloom.errors import InvalidRequest
from darkbloom.inference.tools import allowed, call_schema

if TYPE_CHECKING:
    from darkbloom.inference.request import GenerationRequest


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    kind: Literal["json_object", "json_schema"]
    schema: str | None = None  # JSON text of the schema, key order as given (hashable)
    name: str = ""


def parse_json_schema_format(spec: Any, param: str) -> ResponseFormat:
    """``{"name", "schema", "strict"?, "description"?}`` as OpenAI's json_schema format has it."""
    if not isinstance(spec, dict):
        raise InvalidRequest(f"{param} must be an object with 'name' and 'schema'", param=param)
    name = spec.get("name")
    if not isinstance(name, str) or not name or len(name) > 64:
        raise InvalidRequest(f"{param}.name is required: a string of 1 to 64 characters",
                             param=f"{param}.name")
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise InvalidRequest(f"{param}.schema must be a JSON Schema object", param=f"{param}.schema")
    unenforced = unenforced_keyword(schema)
    if unenforced is not None:
        raise InvalidRequest(f"{param}.schema uses {unenforced!r}, which the grammar cannot enforce; "
                             "remove it (output would not be guaranteed to validate)",
                             param=f"{param}.schema", code="unsupported_parameter")
    # Key order is kept: the output follows the schema's property order, as OpenAI's does.
    fmt = ResponseFormat("json_schema", json.dumps(schema), name)
    gbnf(fmt, param=f"{param}.schema")  # refuse now what the engine could not enforce
    return fmt


_LOOSE_CHAR = 'char ::= [^"\\\\] |'
_STRICT_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'


# Keywords llama.cpp's converter silently ignores: output could break them, so they are refused.
_UNENFORCED = frozenset({
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "uniqueItems",
    "minProperties", "maxProperties", "patternProperties", "propertyNames", "dependentRequired",
    "dependentSchemas", "dependencies", "if", "then", "else", "contains", "minContains",
    "maxContains", "not",
})
_FORMATS = frozenset({"date", "time", "date-time"})


def unenforced_keyword(schema: object) -> str | None:
    """The first keyword in ``schema`` (at any depth) that the grammar would not enforce."""
    if isinstance(schema, list):
        return next((k for item in schema if (k := unenforced_keyword(item)) is not None), None)
    if not isinstance(schema, dict):
        return None
    for key, value in schema.items():
        if key in _UNENFORCED:
            return str(key)
        if key == "format" and value not in _FORMATS:
            return f"format: {str(value)[:32]}"
        if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            found = next((k for sub in value.values() if (k := unenforced_keyword(sub)) is not None), None)
        elif key not in ("enum", "const", "default", "examples", "description", "title"):
            found = unenforced_keyword(value)
        else:
            found = None
        if found:
            return found
    return None


def gbnf(fmt: ResponseFormat, param: str = "response_format") -> str:
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    if fmt.kind == "json_object" or fmt.schema is None:
        return str(JSON_GBNF)
    try:
        grammar = str(json_schema_to_gbnf(fmt.schema))
        # The converter lets raw control characters into strings, which strict JSON parsers
        # (Python's json, JSON.parse) reject; forbid them as llama.cpp's own JSON grammar does.
        return grammar.replace(_LOOSE_CHAR, _STRICT_CHAR)
    # The converter reports unsupported schemas with assert statements as well as exceptions.
    except (AssertionError, ValueError, KeyError, TypeError, NotImplementedError,
            RecursionError) as exc:
        raise InvalidRequest(f"this JSON Schema cannot be enforced: {type(exc).__name__}",
                             param=param, code="unsupported_parameter") from None


def grammar_for(request: GenerationRequest) -> str | None:
    """The grammar a request's generation runs under, if any: a forced tool call wins over a
    response format (OpenAI ignores response_format while a call is forced too)."""
    if request.tool_choice.mode == "required":
        schema = call_schema(allowed(request.tools, request.tool_choice))
        if (unenforced := unenforced_keyword(json.loads(schema))) is not None:
            raise InvalidRequest(f"a tool's parameters use {unenforced!r}, which a forced call's "
                                 "grammar cannot enforce", param="tools", code="unsupported_parameter")
        return gbnf(ResponseFormat("json_schema", schema), param="tools")
    if request.response_format is not None:
        return gbnf(request.response_format)
    return None
