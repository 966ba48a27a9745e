"""Field rules shared by every request dialect: each failure names its parameter."""

from __future__ import annotations

import math
from typing import Any

from darkbloom.errors import InvalidRequest

MAX_STOP_SEQUENCES = 4
MAX_OUTPUT_TOKENS = 32_768


def unsupported(param: str, what: str | None = None) -> InvalidRequest:
    return InvalidRequest(
        f"{what or param} is not supported by this model's engine; remove it from the request",
        param=param,
        code="unsupported_parameter",
    )


def reject_unknown(body: dict[str, Any], allowed: frozenset[str]) -> None:
    for key in body:
        if key not in allowed:
            raise InvalidRequest(f"Unrecognized request argument supplied: {key}", param=key,
                                 code="unknown_parameter")


def model_name(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise InvalidRequest("model is required", param="model")
    if not isinstance(model, str) or not 1 <= len(model) <= 256:
        raise InvalidRequest("model must be a string of 1 to 256 characters", param="model")
    return model


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int of any size (compared exactly, never through float(), which overflows) or a
    finite float."""
    return is_int(value) or (isinstance(value, float) and math.isfinite(value))


def token_limit(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not is_int(value):
        raise InvalidRequest(f"{key} must be an integer", param=key)
    if value < 1:
        raise InvalidRequest(f"{key} must be at least 1", param=key)
    if value > MAX_OUTPUT_TOKENS:
        raise InvalidRequest(f"{key} must be at most {MAX_OUTPUT_TOKENS}", param=key)
    return int(value)


def bounded_number(body: dict[str, Any], key: str, lo: float, hi: float, *, lo_open: bool = False) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if not is_number(value):
        raise InvalidRequest(f"{key} must be a number", param=key)
    if value > hi or value < lo or (lo_open and value == lo):
        bound = f"greater than {lo}" if lo_open else f"at least {lo}"
        raise InvalidRequest(f"{key} must be {bound} and at most {hi}, got {str(value)[:32]}",
                             param=key)
    return value


def stop_sequences(value: Any, param: str = "stop", allow_string: bool = True) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) and allow_string else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        kinds = "a string or an array of strings" if allow_string else "an array of strings"
        raise InvalidRequest(f"{param} must be {kinds}", param=param)
    if len(items) > MAX_STOP_SEQUENCES:
        raise InvalidRequest(f"{param} may contain at most {MAX_STOP_SEQUENCES} sequences",
                             param=param)
    if any(not s for s in items):
        raise InvalidRequest("stop sequences must not be empty", param=param)
    return tuple(items)


def stream_flag(body: dict[str, Any]) -> bool:
    stream = body.get("stream", False)
    if stream is None:
        return False
    if not isinstance(stream, bool):
        raise InvalidRequest("stream must be a boolean", param="stream")
    return stream
