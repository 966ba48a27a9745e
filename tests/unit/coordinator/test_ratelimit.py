"""Rate limits (api.md §1) through their FastAPI dependencies on an in-process app, on a fake clock:
the financial tier per account and per sign-up IP, the inference tier (1/s, burst 10 by default),
the admin key's bypass, exempt accounts and the 429's headers in each dialect. Authentication is
stubbed; the limits are real."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import limits.aio.storage.memory
import pytest
from fastapi import FastAPI, Request, Response
from pydantic import SecretStr

from darkbloom.config import CoordinatorSettings
from darkbloom.coordinator.api import errors, ratelimit
from darkbloom.coordinator.api.auth import require_admin, require_key, require_session
from darkbloom.coordinator.api.ratelimit import (
    FinancialAdminDep,
    FinancialKeyDep,
    FinancialSessionDep,
    InferenceKeyDep,
    SignupLimit,
    Tier,
    with_rate_headers,
)
from darkbloom.coordinator.store.accounts import SessionIdentity
from darkbloom.coordinator.store.credentials import KeyIdentity

ADMIN_KEY = "adm-unit-test"
T0 = 1_900_000_000.25


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    """One fake wall clock for the limits library's memory storage and for our Retry-After."""
    fake = Clock()
    monkeypatch.setattr(limits.aio.storage.memory, "time", fake)
    monkeypatch.setattr(ratelimit, "time", fake)
    yield fake


def _app(**settings: Any) -> FastAPI:
    app = FastAPI()
    errors.install(app)
    app.state.settings = CoordinatorSettings(admin_key=SecretStr(ADMIN_KEY), **settings)

    async def key(request: Request) -> KeyIdentity:
        return KeyIdentity("key-1", request.headers.get("x-account", "alice"))

    async def session(request: Request) -> SessionIdentity:
        return SessionIdentity("s-1", request.headers.get("x-account", "alice"), None, False, "")

    async def admin(request: Request) -> SessionIdentity | None:
        if request.headers.get("authorization") == f"Bearer {ADMIN_KEY}":
            return None
        return await session(request)

    app.dependency_overrides.update({require_key: key, require_session: session, require_admin: admin})

    @app.post("/financial/key")
    async def by_key(identity: FinancialKeyDep) -> dict[str, str]:
        return {"account": identity.account_id}

    @app.post("/financial/session")
    async def by_session(identity: FinancialSessionDep) -> dict[str, str]:
        return {"account": identity.account_id}

    @app.post("/financial/admin")
    async def by_admin(identity: FinancialAdminDep) -> dict[str, str | None]:
        return {"account": identity.account_id if identity else None}

    @app.post("/v1/chat/completions")
    async def chat(identity: InferenceKeyDep) -> dict[str, str]:
        return {"account": identity.account_id}

    @app.post("/v1/messages")
    async def messages(request: Request, identity: InferenceKeyDep) -> Response:
        return with_rate_headers(request, Response(b"{}", media_type="application/json"))

    @app.post("/v1/responses")
    async def responses(request: Request, identity: InferenceKeyDep) -> Response:
        return with_rate_headers(request, Response(b"{}", media_type="application/json"))

    @app.post("/signup")
    async def signup(_limited: SignupLimit) -> dict[str, str]:
        return {"ok": "yes"}

    return app


def _client(app: FastAPI, ip: str = "203.0.113.7") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app, client=(ip, 4242)), base_url="http://t")


@pytest.mark.parametrize(("rate", "burst", "amount", "seconds"), [
    (0.2, 3, 3, 15), (1.0, 10, 10, 10), (0.3, 3, 3, 10), (0.1, 3, 3, 30), (0.7, 2, 2, 3),
    (100.0, 1, 100, 1), (2.0, 2, 2, 1),
])
def test_a_bucket_becomes_a_window_never_more_permissive(rate: float, burst: int, amount: int,
                                                         seconds: int) -> None:
    window = Tier("t", rate, burst).window()
    assert window is not None and (window.amount, window.get_expiry()) == (amount, seconds)
    # Same burst, and at most what a token bucket admits in the window: burst + rate * seconds.
    assert amount >= burst
    assert amount <= burst + rate * seconds


def test_rate_zero_turns_a_tier_off() -> None:
    assert Tier("t", 0.0, 10).window() is None


async def test_financial_burst_then_429_with_headers(clock: Clock) -> None:
    app = _app()  # the defaults: 0.2/s, burst 3 -> 3 per 15 s
    async with _client(app) as http:
        for _ in range(3):
            assert (await http.post("/financial/session")).status_code == 200
        refused = await http.post("/financial/session")
        assert refused.status_code == 429, refused.text
        error = refused.json()["error"]
        assert error["type"] == "rate_limit_exceeded" and error["code"] == "rate_limit_exceeded"
        assert refused.headers["retry-after"] == "15"
        assert refused.headers["x-ratelimit-reset"] == str(math.ceil(T0 + 15))
        # Another account has its own allowance; the same account on a key route shares its own.
        assert (await http.post("/financial/session", headers={"x-account": "bob"})).status_code == 200
        assert (await http.post("/financial/key")).status_code == 429
        clock.now = T0 + 14.5
        later = await http.post("/financial/key")
        assert later.status_code == 429 and later.headers["retry-after"] == "1"  # never 0
        clock.now = T0 + 15.01  # the whole burst has left the window
        for _ in range(3):
            assert (await http.post("/financial/key")).status_code == 200
        assert (await http.post("/financial/key")).status_code == 429


async def test_a_window_frees_one_slot_at_a_time(clock: Clock) -> None:
    app = _app()
    async with _client(app) as http:
        for step in (0, 5, 10):
            clock.now = T0 + step
            assert (await http.post("/financial/session")).status_code == 200
        clock.now = T0 + 12
        refused = await http.post("/financial/session")
        assert refused.headers["retry-after"] == "3"  # the first request leaves at T0 + 15
        clock.now = T0 + 15.5
        assert (await http.post("/financial/session")).status_code == 200
        assert (await http.post("/financial/session")).status_code == 429  # refusals cost nothing


async def test_the_admin_key_is_never_limited(clock: Clock) -> None:
    app = _app()
    async with _client(app) as http:
        for _ in range(20):
            answer = await http.post("/financial/admin", headers={"authorization": f"Bearer {ADMIN_KEY}"})
            assert answer.status_code == 200 and answer.json() == {"account": None}
            signup = await http.post("/signup", headers={"authorization": f"Bearer {ADMIN_KEY}"})
            assert signup.status_code == 200
        for _ in range(3):  # an admin's session is an account like any other
            assert (await http.post("/financial/admin", headers={"x-account": "boss"})).status_code == 200
        assert (await http.post("/financial/admin", headers={"x-account": "boss"})).status_code == 429
        wrong = {"authorization": "Bearer adm-wrong"}
        for _ in range(3):
            assert (await http.post("/signup", headers=wrong)).status_code == 200
        assert (await http.post("/signup", headers=wrong)).status_code == 429


async def test_signup_is_limited_per_client_ip(clock: Clock) -> None:
    app = _app()
    async with _client(app, "198.51.100.1") as one, _client(app, "2001:db8::1") as two:
        for _ in range(3):
            assert (await one.post("/signup")).status_code == 200
        assert (await one.post("/signup")).status_code == 429
        assert (await two.post("/signup")).status_code == 200
        # A signed-in account's allowance is its own, not its address's.
        assert (await one.post("/financial/session")).status_code == 200


async def test_inference_tier_defaults_to_one_per_second_burst_ten(clock: Clock) -> None:
    async with _client(_app()) as http:
        for _ in range(10):
            assert (await http.post("/v1/chat/completions")).status_code == 200
        refused = await http.post("/v1/chat/completions")
        assert refused.status_code == 429 and refused.headers["retry-after"] == "10"
        assert refused.headers["x-ratelimit-limit-requests"] == "10"
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert refused.headers["x-ratelimit-reset-requests"] == "10s"


async def test_rate_zero_turns_the_inference_tier_off(clock: Clock) -> None:
    async with _client(_app(inference_rate_per_s=0)) as http:
        for _ in range(50):
            assert (await http.post("/v1/chat/completions")).status_code == 200


async def test_exempt_accounts_are_never_limited(clock: Clock) -> None:
    app = _app(rate_limit_exempt_accounts=["local"])
    async with _client(app) as http:
        for _ in range(30):
            answer = await http.post("/v1/responses", headers={"x-account": "local"})
            assert answer.status_code == 200 and "x-ratelimit-limit-requests" not in answer.headers
            assert (await http.post("/financial/key", headers={"x-account": "local"})).status_code == 200
        for _ in range(3):  # any other account meets the defaults
            assert (await http.post("/financial/key", headers={"x-account": "new"})).status_code == 200
        assert (await http.post("/financial/key", headers={"x-account": "new"})).status_code == 429


async def test_admitted_inference_carries_its_dialects_headers(clock: Clock) -> None:
    async with _client(_app()) as http:
        first = await http.post("/v1/responses")
        assert first.headers["x-ratelimit-limit-requests"] == "10"
        assert first.headers["x-ratelimit-remaining-requests"] == "9"
        assert first.headers["x-ratelimit-reset-requests"] == "10s"  # the whole allowance is back
        assert "anthropic-ratelimit-requests-limit" not in first.headers
        clock.now = T0 + 2.5
        second = await http.post("/v1/messages")  # same account, same tier, Anthropic's names
        assert second.headers["anthropic-ratelimit-requests-limit"] == "10"
        assert second.headers["anthropic-ratelimit-requests-remaining"] == "8"
        reset = datetime.fromtimestamp(math.ceil(T0 + 12.5), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        assert second.headers["anthropic-ratelimit-requests-reset"] == reset
        assert "x-ratelimit-limit-requests" not in second.headers


async def test_inference_tier_in_each_dialect(clock: Clock) -> None:
    app = _app(inference_rate_per_s=1.0, inference_burst=2, financial_rate_per_s=0.0)
    async with _client(app) as http:
        assert (await http.post("/v1/chat/completions")).status_code == 200
        assert (await http.post("/v1/messages")).status_code == 200
        openai = await http.post("/v1/chat/completions")
        assert openai.status_code == 429 and openai.json()["error"]["type"] == "rate_limit_exceeded"
        assert openai.headers["retry-after"] == "2"
        anthropic = await http.post("/v1/messages")
        assert anthropic.status_code == 429
        message = anthropic.json()["error"]["message"]
        assert anthropic.json() == {"type": "error",
                                    "error": {"type": "rate_limit_error", "message": message}}
        assert anthropic.headers["retry-after"] == "2" and "x-ratelimit-reset" in anthropic.headers
        assert anthropic.headers["anthropic-ratelimit-requests-limit"] == "2"
        assert anthropic.headers["anthropic-ratelimit-requests-remaining"] == "0"
        assert anthropic.headers["anthropic-ratelimit-requests-reset"].endswith("Z")
        assert "x-ratelimit-limit-requests" not in anthropic.headers
        assert openai.headers["x-ratelimit-limit-requests"] == "2"
        assert "anthropic-ratelimit-requests-limit" not in openai.headers
        clock.now = T0 + 2.01
        assert (await http.post("/v1/messages")).status_code == 200
        # The financial tier is off in this app (rate 0).
        for _ in range(10):
            assert (await http.post("/financial/key")).status_code == 200
