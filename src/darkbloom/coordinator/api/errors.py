"""The one place errors become HTTP responses, in the OpenAI dialect (api.md §2).

Handlers sit on the base classes, so every DarkbloomError, every request-validation failure and
every unknown route answers in the same shape; FastAPI's default 422 never reaches a client.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from darkbloom.errors import DarkbloomError, InternalError
from darkbloom.protocol.errors import OpenAIError, OpenAIErrorDetail

log = logging.getLogger(__name__)

_STATUS_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "forbidden",
    404: "not_found", 405: "invalid_request_error", 413: "request_too_large",
    429: "rate_limit_exceeded", 502: "provider_error", 503: "model_not_available",
    504: "timeout",
}


def openai_error_body(error: DarkbloomError) -> bytes:
    detail = OpenAIErrorDetail(message=error.message, type=error.type, param=error.param,
                               code=error.code)
    return OpenAIError(error=detail).model_dump_json().encode()


def error_response(error: DarkbloomError) -> Response:
    return Response(openai_error_body(error), status_code=error.status_code,
                    media_type="application/json", headers=error.headers)


async def _darkbloom(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, DarkbloomError)
    return error_response(exc)


async def _validation(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
    param = ".".join(loc) or None
    return error_response(DarkbloomError(f"invalid {param or 'request'}: {first.get('msg', '')}",
                                         param=param, code="invalid_request_error",
                                         status_code=400))


async def _http(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    kind = _STATUS_TYPES.get(exc.status_code, "invalid_request_error")
    error = DarkbloomError(str(exc.detail), code=kind, status_code=exc.status_code)
    error.type = kind
    return error_response(error)


async def _unexpected(_: Request, exc: Exception) -> Response:
    # Log the exception type and location only: a message could quote request content.
    log.error("unhandled %s", type(exc).__name__, exc_info=False)
    return error_response(InternalError("internal error; the request was not charged"))


def install(app: FastAPI) -> None:
    app.add_exception_handler(DarkbloomError, _darkbloom)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
