"""Hostile review of sign-in (issue 9): a cross-site form must not sign a browser in, and a flood of
sign-ins must neither take the threads request parsing and tokenizing use nor queue without bound.
On real SQLite and PostgreSQL behind an in-process app."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.config import CoordinatorSettings
from darkbloom.coordinator.api import accounts as routes
from darkbloom.coordinator.api import errors
from darkbloom.coordinator.api.auth import KeyCache
from darkbloom.coordinator.store import accounts
from darkbloom.coordinator.store.credentials import now

PASSWORD = "correct horse battery"


def _client(sessions: async_sessionmaker[AsyncSession], rate_per_s: float = 0) -> httpx.AsyncClient:
    app = FastAPI()
    errors.install(app)
    app.state.sessions = sessions
    app.state.settings = CoordinatorSettings(financial_rate_per_s=rate_per_s)
    app.state.key_cache = KeyCache(sessions)
    app.include_router(routes.router)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "text/plain; charset=utf-8"])
async def test_a_cross_site_form_cannot_sign_in_or_up(sessions: async_sessionmaker[AsyncSession],
                                                      content_type: str) -> None:
    """An HTML form (enctype=text/plain) can carry a JSON body cross-site with no preflight; answering
    it with a session cookie signs the victim's browser into the attacker's account (login CSRF)."""
    body = f'{{"email": "mallory@example.com", "password": "{PASSWORD}", "pad": "="}}'
    async with _client(sessions) as http:
        for path in ("/v1/auth/signup", "/v1/auth/login"):
            answer = await http.post(path, content=body, headers={"content-type": content_type})
            assert answer.status_code == 415, answer.text
            assert answer.json()["error"]["type"] == "invalid_request_error"
            assert "set-cookie" not in answer.headers
        assert await accounts.find_login(sessions, "mallory@example.com") is None
        # JSON (with parameters, any case) and a body with no declared type still work.
        ok = await http.post("/v1/auth/signup", content=body,
                             headers={"content-type": "Application/JSON; charset=utf-8"})
        assert ok.status_code == 201, ok.text
        assert (await http.post("/v1/auth/login", content=body)).status_code == 200


async def test_password_hashing_does_not_use_the_default_executor(
        sessions: async_sessionmaker[AsyncSession]) -> None:
    """Request parsing and tokenizing run on the loop's default executor; argon2 (tens of ms and
    64 MiB a call) must not queue there, or a sign-in flood stalls inference."""
    loop = asyncio.get_running_loop()
    blocked, release = ThreadPoolExecutor(max_workers=1), threading.Event()
    loop.set_default_executor(blocked)
    blocked.submit(release.wait)  # the only default thread is now busy
    try:
        async with _client(sessions) as http:
            signup = http.post("/v1/auth/signup", json={"email": "a@example.com", "password": PASSWORD})
            answer = await asyncio.wait_for(signup, timeout=60)  # a hang guard, not a timing
            assert answer.status_code == 201, answer.text
    finally:
        release.set()
        loop.set_default_executor(ThreadPoolExecutor())  # the fixture's teardown needs one
        blocked.shutdown()


async def test_sign_ins_waiting_for_argon2_are_bounded(sessions: async_sessionmaker[AsyncSession],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond MAX_PASSWORD_WAITING sign-ins in flight, more get a 429 at once instead of queueing."""
    release = threading.Event()

    def slow_verify(stored: str | None, password: str) -> bool:
        release.wait(60)
        return False

    monkeypatch.setattr(accounts, "verify_password", slow_verify)
    async with _client(sessions) as http:
        def login() -> asyncio.Task[httpx.Response]:
            return asyncio.ensure_future(http.post("/v1/auth/login",
                                                   json={"email": "a@example.com", "password": PASSWORD}))
        waiting = [login() for _ in range(routes.MAX_PASSWORD_WAITING)]
        for _ in range(6_000):  # until all of them wait on argon2 (a hang guard, not a timing)
            if routes.password_waiting() >= routes.MAX_PASSWORD_WAITING:
                break
            await asyncio.sleep(0.01)
        refused = await login()
        release.set()
        answers = await asyncio.gather(*waiting)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "rate_limited"
    assert {a.status_code for a in answers} == {401}
    assert routes.password_waiting() == 0


async def test_a_session_ends_exactly_at_its_idle_expiry(sessions: async_sessionmaker[AsyncSession]) -> None:
    account_id = await accounts.create_account(sessions, "idle@example.com", "h")
    assert account_id is not None
    idle = timedelta(days=1)
    opened = now()
    token = (await accounts.open_session(sessions, account_id, idle)).token
    # Used just inside the minute: no slide, so the expiry is still opened + idle.
    assert await accounts.find_session(sessions, token, idle, at=opened + timedelta(seconds=30))
    assert await accounts.find_session(sessions, token, idle, at=opened + idle + timedelta(seconds=1)) is None
    assert await accounts.find_session(sessions, token, idle, at=opened + idle - timedelta(seconds=1))
    # That use slid it forward one idle period from then; a wrong-prefix or tampered token finds nothing.
    later = opened + 2 * idle - timedelta(seconds=2)
    assert await accounts.find_session(sessions, token, idle, at=later)
    tampered = token[:-1] + ("1" if token.endswith("0") else "0")
    assert await accounts.find_session(sessions, tampered, idle, at=later) is None
    assert await accounts.find_session(sessions, "sk-db-" + token[4:], idle, at=later) is None


async def test_password_guessing_is_rate_limited_per_client_and_address(
        sessions: async_sessionmaker[AsyncSession]) -> None:
    """Failed or not, sign-ins count against the financial tier per (client, address): a guesser
    gets 429s after the burst, while the same client may still sign in to another address."""
    await accounts.create_account(sessions, "victim@example.com", accounts.hash_password(PASSWORD))
    async with _client(sessions, rate_per_s=0.2) as http:
        tries = [await http.post("/v1/auth/login", json={"email": "victim@example.com",
                                                         "password": f"guess-{i:06d}"}) for i in range(4)]
        other = await http.post("/v1/auth/login", json={"email": "other@example.com", "password": PASSWORD})
    assert [t.status_code for t in tries] == [401, 401, 401, 429]
    assert tries[-1].json()["error"]["type"] == "rate_limit_exceeded"
    assert int(tries[-1].headers["retry-after"]) >= 1
    assert other.status_code == 401
