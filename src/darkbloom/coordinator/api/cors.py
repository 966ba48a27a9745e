"""CORS as api.md §1 says: one configured origin (by default the coordinator's own public URL,
where its console lives), credentials allowed, never ``*``; a preflight answers 204.

A browser page on any other origin gets no CORS headers, so it cannot read answers (nor send a
session cookie's credentials with a readable result). API keys work from servers and SDKs,
which CORS does not concern.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

ALLOW_METHODS = b"GET, POST, PUT, DELETE, OPTIONS"
ALLOW_HEADERS = b"Content-Type, Authorization, x-api-key, anthropic-version, X-CSRF-Token"
# Response headers a page may read: the request id, receipts and the provider's trust headers.
EXPOSE_HEADERS = (b"X-Request-ID, X-Inference-Job-ID, x-darkbloom-receipt, x-se-signature, "
                  b"x-response-hash, X-Provider-Attested, X-Provider-Trust-Level, X-Provider-Id, "
                  b"X-Provider-Chip, X-Provider-Model, X-Provider-Serial, X-Provider-Encrypted")


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of a URL, as a browser's Origin header spells it."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


class CorsMiddleware:
    def __init__(self, app: ASGIApp, origin: str) -> None:
        self.app = app
        self.origin = origin.encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        allowed = headers.get(b"origin", b"").lower() == self.origin
        if scope["method"] == "OPTIONS" and b"access-control-request-method" in headers:
            answer = [(b"vary", b"Origin"), (b"content-length", b"0")]
            if allowed:
                answer += [(b"access-control-allow-origin", self.origin),
                           (b"access-control-allow-credentials", b"true"),
                           (b"access-control-allow-methods", ALLOW_METHODS),
                           (b"access-control-allow-headers", ALLOW_HEADERS),
                           (b"access-control-max-age", b"600")]
            await send({"type": "http.response.start", "status": 204, "headers": answer})
            await send({"type": "http.response.body", "body": b""})
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [(b"vary", b"Origin")]
                if allowed:
                    extra += [(b"access-control-allow-origin", self.origin),
                              (b"access-control-allow-credentials", b"true"),
                              (b"access-control-expose-headers", EXPOSE_HEADERS)]
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        await self.app(scope, receive, send_with_cors)
