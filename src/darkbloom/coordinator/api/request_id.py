"""X-Request-ID on every response: the client's if it is sane, else 12 random base32 chars.

Also sent as ``request-id``, the header Anthropic's SDK reads into ``error.request_id``, and set
as the log context so every log line about the request carries it.
"""

from __future__ import annotations

import base64
import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from darkbloom.logcontext import REQUEST_ID, sanitize


def new_request_id() -> str:
    return base64.b32encode(secrets.token_bytes(10)).decode()[:12].lower()


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"")
        request_id = sanitize(given.decode("latin-1")) or new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        headers = [(b"x-request-id", request_id.encode()), (b"request-id", request_id.encode())]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *headers]
            await send(message)

        token = REQUEST_ID.set(request_id)
        await self.app(scope, receive, send_with_id)
        # Not reset when the app raised: the unexpected-error handler outside this middleware
        # still logs under the id (the request's task ends right after, and its context with it).
        REQUEST_ID.reset(token)
