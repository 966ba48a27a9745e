"""Who is calling: API keys (consumer routes), sessions (account routes) and admins.

Keys are cached for ``ttl_s`` to keep a database round trip (about 0.8 ms p50 on SQLite) off
every request's time to first token. A key revoked over HTTP is evicted from this process's
cache at once; every process also polls for keys revoked elsewhere (another coordinator process
sharing the database, or the CLI) every ``DARKBLOOM_KEY_REVOCATION_POLL_S`` (1 s) and evicts them.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.coordinator.store.accounts import (
    SESSION_PREFIX,
    SessionIdentity,
    csrf_matches,
    find_session,
)
from darkbloom.coordinator.store.credentials import (
    API_KEY_PREFIX,
    PROVIDER_TOKEN_PREFIX,
    KeyIdentity,
    find_provider_token,
    hash_secret,
    lookup_api_key,
    revoked_key_hashes,
)
from darkbloom.errors import AuthenticationFailed, Forbidden

log = logging.getLogger(__name__)
SESSION_COOKIE = "darkbloom_session"
CSRF_COOKIE = "darkbloom_csrf"
_LOOK_BACK = timedelta(seconds=10)  # clock skew between processes and lookups racing a revocation
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def presented_key(request: Request) -> str | None:
    bearer = presented_bearer(request)
    return bearer or request.headers.get("x-api-key") or None


def presented_bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return None


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

    def forget(self, key_id: str) -> None:
        """Drop a revoked key from this process's cache, so it fails on its next request."""
        for digest in [d for d, (ident, _) in self._entries.items() if ident.key_id == key_id]:
            self._entries.pop(digest, None)

    def forget_hashes(self, digests: list[str]) -> None:
        for digest in digests:
            self._entries.pop(digest, None)


async def watch_revoked_keys(cache: KeyCache, sessions: async_sessionmaker[AsyncSession],
                             every_s: float) -> None:
    """Evict keys revoked by another process (or the CLI) within ``every_s``: the cache saves a
    database read per request, the poll costs one read per interval. Each poll looks back
    ``_LOOK_BACK`` further than the last, so a lookup racing a revocation is evicted next time."""
    since = datetime.now(UTC)
    while True:
        await asyncio.sleep(every_s)
        polled = datetime.now(UTC)
        try:
            cache.forget_hashes(await revoked_key_hashes(sessions, since - _LOOK_BACK))
        except (SQLAlchemyError, OSError) as exc:
            log.warning("could not check for revoked API keys (%s)", type(exc).__name__)
            continue
        since = polled


async def require_key(request: Request) -> KeyIdentity:
    """An API key, or a session wherever a key is accepted (api.md §1): the console signs in
    once and calls the same routes; its key id is None."""
    secret = presented_key(request)
    if (secret is None and request.cookies.get(SESSION_COOKIE)) or (
            secret is not None and secret.startswith(SESSION_PREFIX)
            and request.headers.get("x-api-key") is None):
        session = await require_session(request)
        return KeyIdentity(None, session.account_id)
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


async def require_key_or_provider_token(request: Request) -> KeyIdentity:
    """``require_key``, or a provider token as the bearer: `darkbloom earnings` reads its
    account's earnings with the machine's own token (provider.md). Only for reads of the
    account's own provider money: a provider token is no consumer credential."""
    bearer = presented_bearer(request)
    if bearer and bearer.startswith(PROVIDER_TOKEN_PREFIX) and request.headers.get("x-api-key") is None:
        found = await find_provider_token(request.app.state.sessions, bearer)
        if found is None:
            raise AuthenticationFailed("invalid or revoked provider token; run `darkbloom login` "
                                       "again", code="invalid_provider_token")
        return KeyIdentity(None, found.account_id)
    return await require_key(request)


KeyOrProviderTokenDep = Annotated[KeyIdentity, Depends(require_key_or_provider_token)]


def csrf_required(method: str, via_cookie: bool) -> bool:
    """A cookie rides along on cross-site requests; a bearer token does not, so only a cookie's
    unsafe methods need the CSRF header (SameSite=Lax already keeps cross-site POSTs cookie-less
    in current browsers; the header covers the rest)."""
    return via_cookie and method.upper() in UNSAFE_METHODS


def admin_key_matches(configured: str | None, presented: str | None) -> bool:
    if not configured or not presented:
        return False
    return hmac.compare_digest(configured.encode("utf-8"), presented.encode("utf-8"))


def is_admin(identity: SessionIdentity, admin_emails: list[str]) -> bool:
    return identity.is_admin or (identity.email is not None and identity.email in admin_emails)


_KEYS_REFUSED = "requires an interactive session \u2014 API keys are not accepted"


async def require_session(request: Request) -> SessionIdentity:
    """The signed-in account: a session cookie (with X-CSRF-Token on unsafe methods) or a
    session token as a bearer. API keys are refused (api.md §1)."""
    bearer = presented_bearer(request)
    if request.headers.get("x-api-key") or (bearer and bearer.startswith(API_KEY_PREFIX)):
        raise Forbidden(_KEYS_REFUSED)
    token = bearer or request.cookies.get(SESSION_COOKIE)
    if not token:
        raise AuthenticationFailed("sign in first: send the darkbloom_session cookie or "
                                   "'Authorization: Bearer <session token>'", code="missing_session")
    state = request.app.state
    identity = await find_session(state.sessions, token,
                                  timedelta(days=state.settings.session_idle_days))
    if identity is None:
        raise AuthenticationFailed("session expired or invalid; sign in again", code="invalid_session")
    if csrf_required(request.method, bearer is None) and not csrf_matches(
            identity.csrf_hash, request.headers.get("x-csrf-token")):
        raise Forbidden("missing or wrong X-CSRF-Token header")
    return identity


async def require_admin(request: Request) -> SessionIdentity | None:
    """An admin: the configured admin key as a bearer (returns None), or an admin's session."""
    settings = request.app.state.settings
    configured = settings.admin_key.get_secret_value() if settings.admin_key else None
    bearer = presented_bearer(request)
    if admin_key_matches(configured, bearer):
        return None
    if bearer and bearer.startswith(API_KEY_PREFIX):
        raise Forbidden("admin access required")
    identity = await require_session(request)
    if not is_admin(identity, settings.admin_emails):
        raise Forbidden("admin access required")
    return identity


SessionDep = Annotated[SessionIdentity, Depends(require_session)]
AdminDep = Annotated[SessionIdentity | None, Depends(require_admin)]
