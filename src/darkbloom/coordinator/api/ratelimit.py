"""Per-account rate limits (api.md §1, docs/rate-limits.md) as FastAPI dependencies: a "financial"
tier (key creation, device approve, checkout, referral register/apply, invite create/redeem,
withdrawals, admin grants) and an "inference" tier. The admin key is never limited, nor are the
accounts in ``rate_limit_exempt_accounts`` (the dev stack's consumer).

How to apply one: use the dependency *in place of* the route's plain auth dependency. Each one
authenticates the caller first (an unauthenticated request never spends anyone's allowance), then
counts the request against the caller's account, then returns the identity. Nothing reads the body
before that, so a malformed request spends the allowance like any other::

    FinancialKeyDep      key (or session) routes: checkout, invite redeem     -> KeyIdentity
    FinancialSessionDep  session routes: keys, referral, withdrawals, device   -> SessionIdentity
    FinancialAdminDep    admin routes (admin key: no limit)                    -> SessionIdentity | None
    InferenceKeyDep      inference routes (1/s, burst 10 by default)           -> KeyIdentity
    SignupLimit          no account yet: the financial tier per client IP      -> None
    DeviceCodeLimit      POST /v1/device/code: the device tier per client IP   -> None

    @router.post("/v1/invite/redeem")
    async def redeem(request: Request, identity: FinancialKeyDep) -> ...

``enforce(request, tier, key)`` limits anything else. A refusal is 429 ``rate_limit_exceeded``
(``RateLimitExceeded``, which names its tier) with ``Retry-After`` (whole seconds, at least 1),
``X-RateLimit-Reset`` (unix seconds) and the caller's dialect's own headers: OpenAI's
``x-ratelimit-*-requests`` or, on ``/v1/messages``, Anthropic's ``anthropic-ratelimit-requests-*``.
An admitted inference request carries the same dialect headers on its response
(``with_rate_headers``).

Algorithm: the reference uses a token bucket (``rate`` per second, ``burst`` at once). ``limits``
has no token bucket; its moving window of ``burst`` requests per ``ceil(burst / rate)`` seconds has
the same burst and the same sustained rate and never admits more than the bucket would (after a
full burst the next request waits for the oldest to leave the window, not for one token). The
window has one-second granularity, so a tier faster than ``burst`` per second becomes ``rate`` per
second.

Storage: this process's memory, or with ``DARKBLOOM_REDIS_URL`` set, Redis (``limits``' async
storage on the redis-py client, keys under ``<DARKBLOOM_REDIS_PREFIX>:ratelimit:``), so every
coordinator of a network counts one allowance per account. Redis down fails open to this process's
own counts (logged), never to 503: limits guard against floods, not money (reservations guard
that), and inference must outlive a Redis outage.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import Response
from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string
from redis.asyncio import BlockingConnectionPool

from darkbloom.coordinator.api.auth import (
    AdminDep,
    ApiKeyDep,
    SessionDep,
    admin_key_matches,
    presented_bearer,
)
from darkbloom.coordinator.api.errors import ANTHROPIC_PATHS
from darkbloom.coordinator.store.accounts import SessionIdentity
from darkbloom.coordinator.store.credentials import KeyIdentity
from darkbloom.errors import TooManyRequests

log = logging.getLogger(__name__)

FINANCIAL = "financial"
INFERENCE = "inference"
DEVICE = "device"  # POST /v1/device/code per client address (api.md §6: 10 per minute)
MEMORY_STORAGE = "async+memory://"
# A Redis that does not answer within this long counts as down (each request waits at most this).
REDIS_TIMEOUT_S = 0.5
REDIS_POOL_SIZE = 64
# After Redis failed, this process counts on its own this long before it tries Redis again.
REDIS_RETRY_S = 5.0
_REDIS_SCHEMES = {"redis": "async+redis", "rediss": "async+rediss", "unix": "async+redis+unix"}


def redis_storage_uri(url: str) -> str:
    """``limits``' async storage URI for a redis-py URL (redis://, rediss://, unix://)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _REDIS_SCHEMES:
        raise ValueError("DARKBLOOM_REDIS_URL must be redis://, rediss:// or unix://")
    return f"{_REDIS_SCHEMES[scheme.lower()]}://{rest}"


@dataclass(frozen=True, slots=True)
class Tier:
    name: str
    rate_per_s: float  # 0: the tier is off
    burst: int

    def window(self) -> RateLimitItem | None:
        """``limits``' moving window for this bucket, or None when the tier is off."""
        if self.rate_per_s <= 0:
            return None
        seconds = max(1, math.ceil(self.burst / self.rate_per_s - 1e-9))
        amount = max(self.burst, math.floor(self.rate_per_s * seconds + 1e-9))
        return RateLimitItemPerSecond(amount, seconds, namespace=f"darkbloom-{self.name}")

    def describe(self) -> str:
        return f"{self.burst} at once, then {self.rate_per_s:g} per second"


@dataclass(frozen=True, slots=True)
class Standing:
    """An account's allowance in a tier right after a request was counted (or refused):
    ``limit`` requests per window, ``remaining`` of them, and ``reset_at`` (unix seconds) when the
    whole allowance is back. After an admitted request that is exact (the request just counted is
    the window's newest); after a refusal it is an upper bound."""

    limit: int
    remaining: int
    reset_at: float


def go_duration(seconds: float) -> str:
    """OpenAI's ``x-ratelimit-reset-*`` format (Go's ``time.Duration``): "12ms", "1s", "1.5s",
    "6m0s", "1h2m3s"; to the millisecond."""
    ms = max(0, round(seconds * 1000))
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs = str(ms // 1000) if ms % 1000 == 0 else f"{ms / 1000:.3f}".rstrip("0")
    return (f"{hours}h" if hours else "") + (f"{minutes}m" if hours or minutes else "") + f"{secs}s"


def rfc3339(unix_s: float) -> str:
    """Anthropic's ``anthropic-ratelimit-*-reset`` format, rounded up to the second."""
    return datetime.fromtimestamp(math.ceil(unix_s), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def openai_headers(standing: Standing, now: float) -> dict[str, str]:
    return {"x-ratelimit-limit-requests": str(standing.limit),
            "x-ratelimit-remaining-requests": str(standing.remaining),
            "x-ratelimit-reset-requests": go_duration(standing.reset_at - now)}


def anthropic_headers(standing: Standing) -> dict[str, str]:
    return {"anthropic-ratelimit-requests-limit": str(standing.limit),
            "anthropic-ratelimit-requests-remaining": str(standing.remaining),
            "anthropic-ratelimit-requests-reset": rfc3339(standing.reset_at)}


def dialect_headers(standing: Standing, path: str, now: float) -> dict[str, str]:
    """The rate-limit headers of the API ``path`` speaks (the same choice as api/errors.py)."""
    return anthropic_headers(standing) if path in ANTHROPIC_PATHS else openai_headers(standing, now)


class RateLimitExceeded(TooManyRequests):
    """429 ``rate_limit_exceeded`` from a tier (``tier``: for metrics and logs)."""

    def __init__(self, message: str, *, tier: str, headers: dict[str, str]) -> None:
        super().__init__(message, headers=headers)
        self.tier = tier


class RateLimits:
    """The tiers and their counts: one per coordinator process (``for_app``)."""

    def __init__(self, tiers: list[Tier], redis_url: str | None = None, *,
                 key_prefix: str = "darkbloom", exempt: frozenset[str] = frozenset()) -> None:
        self.tiers = {tier.name: tier for tier in tiers}
        self.exempt = exempt
        self._windows = {tier.name: tier.window() for tier in tiers}
        self._local = MovingWindowRateLimiter(storage_from_string(MEMORY_STORAGE))
        self._shared: MovingWindowRateLimiter | None = None
        if redis_url:
            # A blocking pool: redis-py's default pool raises MaxConnectionsError past 100
            # connections, which a burst of concurrent requests reaches; this one makes them wait
            # (up to REDIS_TIMEOUT_S) for one of REDIS_POOL_SIZE.
            pool = BlockingConnectionPool.from_url(
                redis_url, max_connections=REDIS_POOL_SIZE, timeout=REDIS_TIMEOUT_S,
                socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S)
            options: dict[str, Any] = {"connection_pool": pool}  # limits types options as scalars
            self._shared = MovingWindowRateLimiter(storage_from_string(
                redis_storage_uri(redis_url), implementation="redispy",
                key_prefix=f"{key_prefix}:ratelimit", wrap_exceptions=True, **options))
        self._shared_down_until = 0.0  # time.monotonic(): use this process's counts until then

    @classmethod
    def from_settings(cls, settings: Any) -> RateLimits:
        per_minute = getattr(settings, "device_codes_per_minute", 10)
        return cls([Tier(FINANCIAL, settings.financial_rate_per_s, settings.financial_burst),
                    Tier(INFERENCE, settings.inference_rate_per_s, settings.inference_burst),
                    Tier(DEVICE, per_minute / 60, max(1, per_minute))],
                   getattr(settings, "redis_url", None),
                   key_prefix=getattr(settings, "redis_prefix", "darkbloom"),
                   exempt=frozenset(getattr(settings, "rate_limit_exempt_accounts", ())))

    @property
    def shared(self) -> bool:
        """Whether counts live in Redis (shared by every coordinator) rather than in this process."""
        return self._shared is not None

    async def _count(self, window: RateLimitItem, key: tuple[str, ...]) -> tuple[bool, float, int]:
        """Hit ``window`` for ``key``: (admitted, when its oldest entry leaves, remaining). Redis
        when configured and answering, this process's memory otherwise."""
        shared = self._shared
        if shared is not None and time.monotonic() >= self._shared_down_until:
            try:
                admitted = await shared.hit(window, *key)
                reset_at, remaining = await shared.get_window_stats(window, *key)
                return admitted, reset_at, remaining
            except (StorageError, OSError, TimeoutError) as exc:
                self._shared_down_until = time.monotonic() + REDIS_RETRY_S
                # The exception's class only: a redis-py message can quote the URL's password.
                log.warning("rate limits: Redis did not answer (%s); counting in this process "
                            "for %g s (each coordinator allows a full allowance meanwhile)",
                            type(exc.__cause__ or exc).__name__, REDIS_RETRY_S)
        admitted = await self._local.hit(window, *key)
        reset_at, remaining = await self._local.get_window_stats(window, *key)
        return admitted, reset_at, remaining

    async def hit(self, tier: str, *key: str, path: str = "") -> Standing | None:
        """Count one request for ``key`` in ``tier`` and return where it stands (None: the tier
        is off), or raise RateLimitExceeded (nothing counted) with headers in ``path``'s dialect."""
        window = self._windows[tier]
        if window is None:
            return None
        admitted, oldest_leaves, remaining = await self._count(window, key)
        now = time.time()
        standing = Standing(window.amount, max(0, remaining), now + window.get_expiry())
        if admitted:
            return standing
        retry_after = max(1, math.ceil(oldest_leaves - now))
        raise RateLimitExceeded(
            f"too many {tier} requests ({self.tiers[tier].describe()}); retry in {retry_after} s",
            tier=tier,
            headers={"retry-after": str(retry_after),
                     "x-ratelimit-reset": str(math.ceil(max(oldest_leaves, now + 1))),
                     **dialect_headers(Standing(window.amount, 0, standing.reset_at), path, now)})


def for_app(request: Request) -> RateLimits:
    """This app's limits, made from its settings on first use (one event loop, no await between
    the look-up and the store, so two first requests cannot make two)."""
    state = request.app.state
    limits: RateLimits | None = getattr(state, "rate_limits", None)
    if limits is None:
        limits = state.rate_limits = RateLimits.from_settings(state.settings)
    return limits


def admin_key_presented(request: Request) -> bool:
    configured = request.app.state.settings.admin_key
    return admin_key_matches(configured.get_secret_value() if configured else None,
                             presented_bearer(request))


async def enforce(request: Request, tier: str, *key: str) -> Standing | None:
    """Count this request against ``key`` (e.g. ``"account", account_id``) in ``tier``; the
    admin key and the exempt accounts pass untouched (None)."""
    if admin_key_presented(request):
        return None
    limits = for_app(request)
    if len(key) == 2 and key[0] == "account" and key[1] in limits.exempt:
        return None
    return await limits.hit(tier, *key, path=request.url.path)


async def financial_key(request: Request, identity: ApiKeyDep) -> KeyIdentity:
    await enforce(request, FINANCIAL, "account", identity.account_id)
    return identity


async def financial_session(request: Request, identity: SessionDep) -> SessionIdentity:
    await enforce(request, FINANCIAL, "account", identity.account_id)
    return identity


async def financial_admin(request: Request, admin: AdminDep) -> SessionIdentity | None:
    if admin is not None:  # None: the admin key, never limited
        await enforce(request, FINANCIAL, "account", admin.account_id)
    return admin


async def inference_key(request: Request, identity: ApiKeyDep) -> KeyIdentity:
    """Counted here, before the route reads (let alone validates) the body."""
    request.state.rate_limit = await enforce(request, INFERENCE, "account", identity.account_id)
    return identity


def with_rate_headers(request: Request, response: Response) -> Response:
    """``response`` with the inference tier's headers in its route's dialect, as OpenAI and
    Anthropic send them on every answer (none when the caller is not limited)."""
    standing: Standing | None = getattr(request.state, "rate_limit", None)
    if standing is not None:
        response.headers.update(dialect_headers(standing, request.url.path, time.time()))
    return response


def client_key(host: str) -> str:
    """Who a client address is, for per-IP limits: an IPv4 address (also when a dual-stack socket
    reports it as ``::ffff:a.b.c.d``), or an IPv6 /64, the least a site is given: keyed by the
    full v6 address, one client has 2^64 allowances."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


async def signup_limit(request: Request) -> None:
    """The financial tier per client (``client_key`` of the TCP peer, or of the forwarded address
    where ``forwarded_allow_ips`` trusts a proxy; without that, clients behind a proxy share one)."""
    await enforce(request, FINANCIAL, "ip",
                  client_key(request.client.host) if request.client else "unknown")


async def device_code_limit(request: Request) -> None:
    """The device tier per client, as ``signup_limit`` counts clients: a code pair costs a row
    and a draw of the user-code space, and nobody is signed in yet to count against."""
    await enforce(request, DEVICE, "ip", client_key(request.client.host) if request.client else "unknown")


FinancialKeyDep = Annotated[KeyIdentity, Depends(financial_key)]
FinancialSessionDep = Annotated[SessionIdentity, Depends(financial_session)]
FinancialAdminDep = Annotated[SessionIdentity | None, Depends(financial_admin)]
InferenceKeyDep = Annotated[KeyIdentity, Depends(inference_key)]
SignupLimit = Annotated[None, Depends(signup_limit)]
DeviceCodeLimit = Annotated[None, Depends(device_code_limit)]
