"""Per-account rate limits (api.md §1) as FastAPI dependencies: a "financial" tier (key creation,
device approve, checkout, referral register/apply, invite create/redeem, withdrawals, admin grants)
and an "inference" tier. The admin key is never limited.

How to apply one: use the dependency *in place of* the route's plain auth dependency. Each one
authenticates the caller first (an unauthenticated request never spends anyone's allowance), then
counts the request against the caller's account, then returns the identity::

    FinancialKeyDep      key (or session) routes: checkout, invite redeem     -> KeyIdentity
    FinancialSessionDep  session routes: keys, referral, withdrawals, device   -> SessionIdentity
    FinancialAdminDep    admin routes (admin key: no limit)                    -> SessionIdentity | None
    InferenceKeyDep      inference routes (off while DARKBLOOM_INFERENCE_RATE_PER_S = 0) -> KeyIdentity
    SignupLimit          no account yet: the financial tier per client IP      -> None

    @router.post("/v1/invite/redeem")
    async def redeem(request: Request, identity: FinancialKeyDep) -> ...

``enforce(request, tier, key)`` limits anything else. A refusal is 429 ``rate_limit_exceeded`` with
``Retry-After`` (whole seconds, at least 1) and ``X-RateLimit-Reset`` (unix seconds).

Algorithm: the reference uses a token bucket (``rate`` per second, ``burst`` at once). ``limits``
has no token bucket; its moving window of ``burst`` requests per ``ceil(burst / rate)`` seconds has
the same burst and the same sustained rate and never admits more than the bucket would (after a
full burst the next request waits for the oldest to leave the window, not for one token). The
window has one-second granularity, so a tier faster than ``burst`` per second becomes ``rate`` per
second. Counts live in this process's memory (``async+memory://``); several coordinator processes
would share them through a ``limits`` Redis storage URL instead.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from darkbloom.coordinator.api.auth import (
    AdminDep,
    ApiKeyDep,
    SessionDep,
    admin_key_matches,
    presented_bearer,
)
from darkbloom.coordinator.store.accounts import SessionIdentity
from darkbloom.coordinator.store.credentials import KeyIdentity
from darkbloom.errors import TooManyRequests

FINANCIAL = "financial"
INFERENCE = "inference"
MEMORY_STORAGE = "async+memory://"


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


class RateLimits:
    """The tiers and their counts: one per coordinator process (``for_app``)."""

    def __init__(self, tiers: list[Tier], storage_uri: str = MEMORY_STORAGE) -> None:
        self.tiers = {tier.name: tier for tier in tiers}
        self._windows = {tier.name: tier.window() for tier in tiers}
        self._limiter = MovingWindowRateLimiter(storage_from_string(storage_uri))

    @classmethod
    def from_settings(cls, settings: Any) -> RateLimits:
        return cls([Tier(FINANCIAL, settings.financial_rate_per_s, settings.financial_burst),
                    Tier(INFERENCE, settings.inference_rate_per_s, settings.inference_burst)])

    async def hit(self, tier: str, *key: str) -> None:
        """Count one request for ``key`` in ``tier``, or raise TooManyRequests (nothing counted)."""
        window = self._windows[tier]
        if window is None:
            return
        if await self._limiter.hit(window, *key):
            return
        reset_at, _ = await self._limiter.get_window_stats(window, *key)
        retry_after = max(1, math.ceil(reset_at - time.time()))
        raise TooManyRequests(
            f"too many {tier} requests ({self.tiers[tier].describe()}); retry in {retry_after} s",
            headers={"retry-after": str(retry_after),
                     "x-ratelimit-reset": str(math.ceil(max(reset_at, time.time() + 1)))})


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


async def enforce(request: Request, tier: str, *key: str) -> None:
    """Count this request against ``key`` (e.g. ``"account", account_id``) in ``tier``; the
    admin key passes untouched."""
    if not admin_key_presented(request):
        await for_app(request).hit(tier, *key)


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
    await enforce(request, INFERENCE, "account", identity.account_id)
    return identity


async def signup_limit(request: Request) -> None:
    """The financial tier per client IP (the TCP peer; behind a proxy, all clients share one)."""
    await enforce(request, FINANCIAL, "ip", request.client.host if request.client else "unknown")


FinancialKeyDep = Annotated[KeyIdentity, Depends(financial_key)]
FinancialSessionDep = Annotated[SessionIdentity, Depends(financial_session)]
FinancialAdminDep = Annotated[SessionIdentity | None, Depends(financial_admin)]
InferenceKeyDep = Annotated[KeyIdentity, Depends(inference_key)]
SignupLimit = Annotated[None, Depends(signup_limit)]
