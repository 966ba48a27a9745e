"""Request bodies read with a bound (a declared or streamed body past ``limit`` is a 413 at once),
and the JSON-object bodies of the account and money routes with their field checks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from datetime import datetime
from typing import Any, NoReturn

from fastapi import Request

from darkbloom.errors import InvalidRequest, RequestTooLarge

MAX_BODY_BYTES = 64 * 1024  # api.md §1: 64 KiB outside the inference routes


async def body_chunks(request: Request, limit: int,
                      idle_s: float | None = None) -> AsyncGenerator[bytes, None]:
    """The body as it arrives, at most ``limit`` bytes (413 past it); with ``idle_s``,
    TimeoutError when the client sends nothing for that long (an upload left hanging would hold
    its place for good)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"request body exceeds {limit} bytes")
    size = 0
    stream = request.stream()
    while True:
        try:
            async with asyncio.timeout(idle_s):
                chunk = await anext(stream)
        except StopAsyncIteration:
            return
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"request body exceeds {limit} bytes")
        yield chunk


async def read_body(request: Request, limit: int, idle_s: float | None = None) -> bytes:
    """The whole body, bounded as ``body_chunks`` bounds it."""
    return b"".join([chunk async for chunk in body_chunks(request, limit, idle_s)])


class JsonNumber(str):
    """A JSON number kept as the text it was written in (money is never parsed through a float)."""


def _no_constants(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a number")


async def json_object(request: Request, *, numbers_as_text: bool = False) -> dict[str, Any]:
    """The body as a JSON object, at most 64 KiB. A cross-site HTML form can post JSON-looking
    text/plain with no preflight (login CSRF); it cannot send application/json, and always
    declares a type, so no type at all is let through but any other is a 415."""
    declared = request.headers.get("content-type")
    if declared is not None and declared.partition(";")[0].strip().lower() != "application/json":
        raise InvalidRequest("send the body as application/json", status_code=415)
    raw = await read_body(request, MAX_BODY_BYTES)
    number: Any = JsonNumber if numbers_as_text else None
    try:
        body = json.loads(raw, parse_float=number, parse_int=number,
                          parse_constant=_no_constants) if raw.strip() else {}
    except (ValueError, RecursionError):
        raise InvalidRequest("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    return body


def string_field(body: dict[str, Any], name: str, limit: int, required: bool = True) -> str | None:
    """``body[name]`` as a bounded, UTF-8-encodable string, or a 400 naming the field."""
    value = body.get(name)
    if value is None:
        if required:
            raise InvalidRequest(f"{name} is required", param=name)
        return None
    if type(value) is not str:  # a JsonNumber is not a string here
        raise InvalidRequest(f"{name} must be a string", param=name)
    if len(value) > limit:
        raise InvalidRequest(f"{name} must be at most {limit} characters", param=name)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(f"{name} is not valid UTF-8", param=name) from None
    return value


def openapi_body(required: tuple[str, ...], **properties: str) -> dict[str, Any]:
    """The OpenAPI request body of a route that reads its JSON itself (to bound and check it)."""
    schema = {"type": "object", "required": list(required),
              "properties": {name: {"type": kind} for name, kind in properties.items()}}
    return {"requestBody": {"required": bool(required),
                            "content": {"application/json": {"schema": schema}}}}


def rfc3339(stamp: datetime | None) -> str | None:
    return stamp.isoformat().replace("+00:00", "Z") if stamp else None
