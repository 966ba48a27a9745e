"""The one place errors become HTTP responses, in the caller's dialect (api.md §2).

OpenAI's ``{"error": {...}}`` everywhere except ``/v1/messages``, which answers Anthropic's
``{"type": "error", "error": {...}}``. Handlers sit on the base classes, so every DarkbloomError,
every request-validation failure and every unknown route answers in its route's shape; FastAPI's
default 422 never reaches a client.
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from darkbloom.errors import DarkbloomError, InternalError
from darkbloom.protocol.errors import (
    AnthropicError,
    AnthropicErrorDetail,
    OpenAIError,
    OpenAIErrorDetail,
)

log = logging.getLogger(__name__)

_STATUS_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 402: "insufficient_funds",
    403: "forbidden",
    404: "not_found", 405: "invalid_request_error", 413: "request_too_large",
    429: "rate_limit_exceeded", 502: "provider_error", 503: "model_not_available",
    504: "timeout",
}


ANTHROPIC_PATHS = frozenset({"/v1/messages", "/v1/messages/count_tokens"})
_ANTHROPIC_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
    403: "permission_error", 404: "not_found_error", 405: "invalid_request_error",
    413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error",
}


def _safe(text: str) -> str:
    """``text`` with any lone surrogate (a ``\\ud800`` escape in a client's key or value) written
    as its escape: pydantic cannot serialize one, and an error page must always render."""
    return text.encode("utf-8", "backslashreplace").decode()


def openai_error_body(error: DarkbloomError) -> bytes:
    detail = OpenAIErrorDetail(message=_safe(error.message), type=error.type,
                               param=None if error.param is None else _safe(error.param),
                               code=error.code, sealed=error.sealed)
    return OpenAIError(error=detail).model_dump_json().encode()


def anthropic_error_body(error: DarkbloomError) -> bytes:
    kind = _ANTHROPIC_TYPES.get(error.status_code, "api_error")
    detail = AnthropicErrorDetail(type=kind, message=_safe(error.message), sealed=error.sealed)
    return AnthropicError(error=detail).model_dump_json().encode()


def error_response(error: DarkbloomError, path: str = "") -> Response:
    if path in ANTHROPIC_PATHS:
        return Response(anthropic_error_body(error), status_code=error.status_code,
                        media_type="application/json", headers=error.headers)
    return Response(openai_error_body(error), status_code=error.status_code,
                    media_type="application/json", headers=error.headers)


def stream_error_event(error: DarkbloomError, path: str) -> bytes:
    """The in-band error for a stream whose 200 status has already gone out (api.md §2)."""
    if path in ANTHROPIC_PATHS:
        return b"event: error\ndata: " + anthropic_error_body(error) + b"\n\n"
    detail = {"message": error.message, "type": error.type}
    if path == "/v1/responses":
        event = {"type": "error", "error": {**detail, "code": error.code, "param": None}}
        return b"event: error\ndata: " + json.dumps(event).encode() + b"\n\n"
    return b"data: " + json.dumps({"error": detail}).encode() + b"\n\n"


async def _darkbloom(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DarkbloomError)
    if exc.code == "rate_limit_exceeded" and (metrics := getattr(request.app.state, "metrics", None)):
        metrics.rate_limit_rejected(exc)  # rate_limit_rejections_total{tier} (coordinator/metrics.py)
    return error_response(exc, request.url.path)


async def _validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
    param = ".".join(loc) or None
    return error_response(DarkbloomError(f"invalid {param or 'request'}: {first.get('msg', '')}",
                                         param=param, code="invalid_request_error",
                                         status_code=400), request.url.path)


async def _http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    kind = _STATUS_TYPES.get(exc.status_code, "invalid_request_error")
    error = DarkbloomError(str(exc.detail), code=kind, status_code=exc.status_code)
    error.type = kind
    return error_response(error, request.url.path)


async def _client_gone(request: Request, exc: Exception) -> Response:
    """The client hung up while its body was being read: nothing to answer, nothing went wrong."""
    return Response(status_code=499)


async def _unexpected(request: Request, exc: Exception) -> Response:
    # Type, method and route template only: a message, traceback or raw path could quote the request.
    route = getattr(request.scope.get("route"), "path", None) or "(no route)"
    log.error("unhandled %s on %s %s", type(exc).__name__, request.method, route, exc_info=False)
    response = error_response(InternalError("internal error; the request was not charged"),
                              request.url.path)
    # This answer goes out beside RequestIdMiddleware, not through it: add its headers here.
    if request_id := request.scope.get("state", {}).get("request_id"):
        response.headers["x-request-id"] = response.headers["request-id"] = request_id
    return response


def install(app: FastAPI) -> None:
    app.add_exception_handler(DarkbloomError, _darkbloom)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected)
