"""API-key authentication for consumer routes (Bearer or x-api-key), with a short-lived cache.

The cache keeps a database round trip off every request's time to first token; a revoked key
stops working within ``ttl_s``.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.coordinator.store.credentials import KeyIdentity, hash_secret, lookup_api_key
from darkbloom.errors import AuthenticationFailed


def presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return request.headers.get("x-api-key") or None


class KeyCache:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], ttl_s: float = 30.0) -> None:
        self._sessions = sessions
        self._ttl = ttl_s
        self._entries: dict[str, tuple[KeyIdentity, float]] = {}

    async def identify(self, secret: str) -> KeyIdentity | None:
        digest = hash_secret(secret)
        hit = self._entries.get(digest)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        identity = await lookup_api_key(self._sessions, secret)
        if identity is None:
            self._entries.pop(digest, None)
            return None
        if len(self._entries) > 10_000:
            self._entries.clear()
        self._entries[digest] = (identity, now + self._ttl)
        return identity


async def require_key(request: Request) -> KeyIdentity:
    secret = presented_key(request)
    if secret is None:
        raise AuthenticationFailed(
            "You didn't provide an API key. Send it as 'Authorization: Bearer sk-db-...' "
            "or in the 'x-api-key' header.", code="missing_api_key")
    cache: KeyCache = request.app.state.key_cache
    identity = await cache.identify(secret)
    if identity is None:
        raise AuthenticationFailed("Incorrect API key provided.", code="invalid_api_key")
    return identity


ApiKeyDep = Annotated[KeyIdentity, Depends(require_key)]
