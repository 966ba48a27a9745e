"""Structured output: the GBNF grammar that constrains generation to JSON, or to a JSON Schema.

llama.cpp's grammar sampler then makes every sampled token keep the output inside the grammar,
so even a tiny model's output parses (and validates) unless max_tokens cuts it short. The
coordinator converts the schema too (off its event loop), so a schema the converter or llama.cpp
cannot handle is a 400 before routing, never a provider failure.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import platform
import re
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from darkbloom.errors import InvalidRequest
from darkbloom.inference.schema import MAX_GRAMMAR_BYTES, checked_schema
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
    # Key order is kept: the output follows the schema's property order, as OpenAI's does.
    fmt = ResponseFormat("json_schema", json.dumps(schema), name)
    gbnf(fmt, param=f"{param}.schema")  # refuse now what the engine could not enforce
    return fmt


_LOOSE_CHAR = 'char ::= [^"\\\\] |'
_STRICT_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'


def gbnf(fmt: ResponseFormat, param: str = "response_format") -> str:
    """The grammar for ``fmt``; a 400 for any schema it could not enforce, checked, bounded and
    parsed by llama.cpp itself, so the engine never meets a grammar it would refuse (or crash on)."""
    from llama_cpp.llama_grammar import JSON_GBNF

    if fmt.kind == "json_object" or fmt.schema is None:
        return str(JSON_GBNF)
    checked_schema(json.loads(fmt.schema), param)
    grammar, problem = _converted(fmt.schema)
    if problem is not None:
        raise InvalidRequest(problem.format(param=param), param=param, code="unsupported_parameter")
    assert grammar is not None
    return grammar


@functools.lru_cache(maxsize=32)
def _converted(schema_text: str) -> tuple[str | None, str | None]:
    """(grammar, None), or (None, why not with a ``{param}`` slot), for a schema that passed
    ``checked_schema``. Cached: the provider parses a request and its engine then asks for the
    same grammar, and conversion plus llama.cpp's parse check is the costly part."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        grammar = str(json_schema_to_gbnf(checked_schema(json.loads(schema_text), "schema")))
    # Third-party code that reports unsupported schemas with asserts and assorted exceptions.
    except Exception as exc:
        return None, f"this JSON Schema cannot be enforced: {type(exc).__name__}"
    # The converter lets raw control characters into strings, which strict JSON parsers
    # (Python's json, JSON.parse) reject; forbid them as llama.cpp's own JSON grammar does.
    grammar = grammar.replace(_LOOSE_CHAR, _STRICT_CHAR)
    if len(grammar) > MAX_GRAMMAR_BYTES:
        return None, f"{{param}} is too complex: its grammar exceeds {MAX_GRAMMAR_BYTES // 1024} KiB"
    if "\\" in _GBNF_ESCAPES.sub("", grammar):
        return None, ("{param} has a 'pattern' escape the grammar cannot express (such as "
                      "\\d or \\w: write a character class like [0-9] instead)")
    if not _llama_parses(grammar):
        return None, "this JSON Schema cannot be enforced: llama.cpp refuses its grammar"
    return grammar, None


# The escapes llama.cpp's GBNF parser knows; any other is a parse error, which it prints to
# stderr along with the grammar (request content), so such grammars are refused before it.
_GBNF_ESCAPES = re.compile(r'\\(?:[nrt"\\\[\]-]|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8})')
_quiet = threading.local()


def _llama_parses(grammar: str) -> bool:
    """Whether llama.cpp's grammar parser accepts ``grammar`` (no vocabulary needed). It reports a
    refused grammar in full, and that text comes from the request, so its log is muted here, and
    so is C's stderr, where its parser prints the grammar it could not parse."""
    import llama_cpp

    _mute_llama_log()
    stderr, devnull = _c_stderr(), _devnull()
    with _C_STDERR_MUTED:
        saved = stderr.value if stderr is not None else None
        _quiet.on = True
        try:
            if stderr is not None and devnull:
                stderr.value = devnull
            sampler = llama_cpp.llama_sampler_init_grammar(None, grammar.encode(), b"root")
        finally:
            if stderr is not None:
                stderr.value = saved
            _quiet.on = False
    if not sampler:
        return False
    llama_cpp.llama_sampler_free(sampler)
    return True


# One muted parse at a time: each swaps the process-wide C ``stderr`` and puts it back.
_C_STDERR_MUTED = threading.Lock()


@functools.cache
def _c_stderr() -> ctypes.c_void_p | None:
    """libc's ``stderr``, which C code such as llama.cpp writes to: a writable variable in glibc
    and macOS (``__stderrp``) only; musl's is const."""
    symbol = "__stderrp" if sys.platform == "darwin" else "stderr"
    if sys.platform != "darwin" and platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.c_void_p.in_dll(ctypes.CDLL(None), symbol)
    except ValueError:
        return None


@functools.cache
def _devnull() -> int | None:
    libc = ctypes.CDLL(None)
    libc.fopen.restype = ctypes.c_void_p
    handle: int | None = libc.fopen(os.devnull.encode(), b"w")
    return handle


@functools.cache
def _mute_llama_log() -> Any:
    """Install, once, a llama.cpp log callback that drops what this thread logs while muted and
    hands everything else to llama-cpp-python's own callback."""
    import llama_cpp
    from llama_cpp._logger import llama_log_callback

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def callback(level: int, text: bytes, user_data: Any) -> None:
        if not getattr(_quiet, "on", False):
            llama_log_callback(level, text, user_data)

    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    return callback  # cached: the C library holds a pointer to it


def grammar_for(request: GenerationRequest) -> str | None:
    """The grammar a request's generation runs under, if any: a forced tool call wins over a
    response format (OpenAI ignores response_format while a call is forced too)."""
    if request.tool_choice.mode == "required":
        schema = call_schema(allowed(request.tools, request.tool_choice))
        return gbnf(ResponseFormat("json_schema", schema), param="tools")
    if request.response_format is not None:
        return gbnf(request.response_format)
    return None
