"""Device-code login end to end (api.md §6, provider.md "Device-code login") against a real
coordinator on SQLite and on PostgreSQL: a machine asks for a code, a signed-in person approves
it, the machine's poll takes a provider token exactly once, a real provider agent registers with
that token, serves paid work and earns into the approving account (read back with the provider
token, as `darkbloom earnings` does), and revoking the token from the account closes its socket.

Time is the test's: instead of sleeping out the poll interval or the 15-minute expiry, the test
moves a code's stored times back (``Stack.age``), which is what the clock moving forward does."""

from __future__ import annotations

import asyncio
import re
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from darkbloom.coordinator.store.credentials import hash_secret, mint_provider_token
from darkbloom.coordinator.store.db import make_engine, make_sessionmaker
from darkbloom.coordinator.store.tables import DeviceCode
from tests.conftest import drop_postgres_database, fresh_postgres_database
from tests.e2e.harness import MODEL, Coordinator, Provider

PUBLIC_URL = "https://console.example.com"
PASSWORD = "correct horse battery staple"
ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
HI = [{"role": "user", "content": "Say hello."}]


class Stack:
    def __init__(self, coordinator: Coordinator, database_url: str) -> None:
        self.coordinator, self.database_url = coordinator, database_url

    def http(self, token: str | None = None) -> httpx.Client:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.coordinator.base_url, headers=headers, timeout=30)

    def signup(self) -> dict[str, Any]:
        with self.http() as http:
            answer = http.post("/v1/auth/signup", json={
                "email": f"op-{uuid.uuid4().hex[:10]}@example.com", "password": PASSWORD})
        assert answer.status_code == 201, answer.text
        return dict(answer.json())

    def code(self) -> dict[str, Any]:
        with self.http() as http:
            answer = http.post("/v1/device/code")
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def poll(self, device_code: Any) -> httpx.Response:
        with self.http() as http:
            return http.post("/v1/device/token", json={"device_code": device_code})

    def approve(self, session: str, user_code: Any) -> httpx.Response:
        with self.http(session) as http:
            return http.post("/v1/device/approve", json={"user_code": user_code})

    def age(self, device_code: str, seconds: float) -> None:
        """``seconds`` pass for this code: its stored times move back by that much."""
        shift = timedelta(seconds=seconds)

        async def go() -> None:
            engine = make_engine(self.database_url)
            try:
                async with make_sessionmaker(engine).begin() as session:
                    # In Python: SQLite keeps times as text, which SQL arithmetic would garble.
                    row = (await session.execute(select(DeviceCode).where(
                        DeviceCode.device_code_hash == hash_secret(device_code)))).scalar_one()
                    moved = {name: stamp - shift for name in ("created_at", "expires_at",
                                                              "last_poll_at", "approved_at")
                             if (stamp := getattr(row, name)) is not None}
                    await session.execute(update(DeviceCode).where(DeviceCode.id == row.id)
                                          .values(**moved))
            finally:
                await engine.dispose()
        asyncio.run(go())

    def linked(self, session: str) -> tuple[str, str]:
        """A device login run to the end for the account of ``session``: (token, account id)."""
        code = self.code()
        assert self.approve(session, code["user_code"]).status_code == 200
        answer = self.poll(code["device_code"])
        assert answer.status_code == 200 and answer.json()["status"] == "authorized", answer.text
        return answer.json()["token"], answer.json()["account_id"]


def _error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = dict(response.json()["error"])
    if code is not None:
        assert error["code"] == code, error
    return error


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp(f"device-{request.param}")
    name = None
    if request.param == "postgresql":
        name, database = fresh_postgres_database()
    else:
        database = f"sqlite+aiosqlite:///{(workdir / 'state' / 'coordinator.db').resolve()}"
    # Codes are asked for faster than 10 a minute here; the limit has its own test below.
    coordinator = Coordinator(workdir, database_url=database, public_url=PUBLIC_URL,
                              device_codes_per_minute=10_000, provider_token_poll_s=0.5,
                              reputation_flush_s=0.5).start()
    try:
        yield Stack(coordinator, database)
    finally:
        coordinator.stop()
        if name:
            drop_postgres_database(name)


def test_a_code_pair_has_the_documented_shape(stack: Stack) -> None:
    with stack.http() as http:
        answer = http.post("/v1/device/code", content=b"not even json")  # no body is read
    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert set(body) == {"device_code", "user_code", "verification_uri", "expires_in", "interval"}
    assert re.fullmatch(r"[0-9a-f]{64}", body["device_code"])
    assert re.fullmatch(f"[{ALPHABET}]{{4}}-[{ALPHABET}]{{4}}", body["user_code"])
    assert body["verification_uri"] == f"{PUBLIC_URL}/link"
    assert (body["expires_in"], body["interval"]) == (900, 5)
    assert body["device_code"] not in stack.coordinator.log_text()
    assert stack.code()["device_code"] != body["device_code"]


def test_login_links_a_machine_that_then_earns_for_the_account(stack: Stack) -> None:
    person = stack.signup()
    session, account = person["session_token"], person["account_id"]
    code = stack.code()
    device = code["device_code"]
    assert stack.poll(device).json() == {"status": "authorization_pending"}
    # Polled again at once: too fast, whatever the code's state.
    slow = stack.poll(device)
    assert _error(slow, 429, "slow_down") and slow.headers["retry-after"] == "5"

    typed = code["user_code"].replace("-", "").lower()  # as a person might type it
    approved = stack.approve(session, typed)
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "approved" and approved.json()["message"]
    _error(stack.approve(session, code["user_code"]), 409, "already_used")

    _error(stack.poll(device), 429, "slow_down")  # still inside the interval
    stack.age(device, 5)
    answer = stack.poll(device)
    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert set(body) == {"status", "token", "account_id"} and body["status"] == "authorized"
    assert body["account_id"] == account and re.fullmatch(r"darkbloom-pt-[0-9a-f]{64}", body["token"])
    token = body["token"]
    for _ in range(2):  # issued once: the code is used up, however long the device waits
        stack.age(device, 5)
        _error(stack.poll(device), 410, "expired_token")
    log = stack.coordinator.log_text()
    assert token not in log and device not in log

    # The account sees the token (never the secret); the machine registers with it and serves.
    with stack.http(session) as http:
        [listed] = http.get("/v1/me/provider-tokens").json()["tokens"]
    assert token.startswith(listed["prefix"]) and len(listed["prefix"]) < len(token)
    assert listed["last_used_at"] is None and listed["created_at"].endswith("Z")
    provider = Provider(stack.coordinator, simulated=True)
    provider.env["DARKBLOOM_PROVIDER_TOKEN"] = token
    provider.start()
    try:
        with stack.http(session) as http:
            [machine] = http.get("/v1/me/providers").json()["providers"]
            assert machine["status"] in ("online", "serving") and machine["online"] is True
            assert machine["account_id"] == account and MODEL in machine["models"]
            assert machine["session_id"] == machine["id"] and machine["attested"] is True
            assert http.get("/v1/me/provider-tokens").json()["tokens"][0]["last_used_at"] is not None

        reply = stack.coordinator.client().chat.completions.create(model=MODEL, messages=HI,  # type: ignore[arg-type]
                                                                   max_tokens=4)
        assert reply.choices[0].message.content
        # `darkbloom earnings`: the machine's own token reads its account's earnings.
        with stack.http(token) as http:
            earned = _until(lambda: http.get("/v1/provider/account-earnings").json(),
                            lambda body: body["count"] >= 1 and body["earnings"])
        assert earned["account_id"] == account and earned["total_micro_usd"] > 0
        assert earned["available_balance_micro_usd"] == earned["total_micro_usd"]
        assert earned["payouts"] == []
        assert earned["earnings"][0]["provider_key"] == machine["provider_key"]

        # Revoked from the account: this coordinator closes the machine's socket (4001) and the
        # agent stops instead of redialling; the token no longer reads anything.
        with stack.http(session) as http:
            gone = http.request("DELETE", "/v1/me/provider-tokens", json={"id": listed["id"]})
            assert gone.status_code == 200 and gone.json() == {"status": "revoked"}
            assert http.get("/v1/me/provider-tokens").json()["tokens"] == []
        assert provider.proc is not None
        provider.proc.wait(30)
        assert "4001" in provider.log_text()
        with stack.http(token) as http:
            _error(http.get("/v1/provider/account-earnings"), 401, "invalid_provider_token")
        with stack.http(session) as http:
            # The machine's record is written every reputation flush: between its socket closing
            # and that write it can be briefly missing from the listing (docs/device-login.md).
            [machine] = _until(lambda: http.get("/v1/me/providers").json()["providers"],
                               lambda machines: len(machines) == 1)
            assert machine["status"] == "offline" and machine["online"] is False
            assert machine["earnings_count"] == earned["count"]
    finally:
        provider.stop()


def _until(read: Any, done: Any, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        body = read()
        if done(body):
            return body
        assert time.monotonic() < deadline, f"never got there: {body}"
        time.sleep(0.2)


def test_expired_codes(stack: Stack) -> None:
    session = stack.signup()["session_token"]
    waiting, approved = stack.code(), stack.code()
    assert stack.approve(session, approved["user_code"]).status_code == 200
    for code in (waiting, approved):
        stack.age(code["device_code"], 900)
    _error(stack.poll(waiting["device_code"]), 410, "expired_token")
    # Approved in time, collected too late: no token.
    _error(stack.poll(approved["device_code"]), 410, "expired_token")
    _error(stack.approve(session, waiting["user_code"]), 410, "expired_code")
    _error(stack.approve(session, approved["user_code"]), 409, "already_used")


def test_two_polls_racing_after_approval_get_one_token(stack: Stack) -> None:
    session = stack.signup()["session_token"]
    for _ in range(3):
        code = stack.code()
        assert stack.approve(session, code["user_code"]).status_code == 200
        start = threading.Barrier(8)
        answers: list[httpx.Response] = []

        def race(device: str, start: threading.Barrier, answers: list[httpx.Response]) -> None:
            with stack.http() as http:
                start.wait()
                answers.append(http.post("/v1/device/token", json={"device_code": device}))

        threads = [threading.Thread(target=race, args=(code["device_code"], start, answers))
                   for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        statuses = sorted(a.status_code for a in answers)
        assert len(statuses) == 8 and statuses.count(200) == 1, statuses
        assert set(statuses) <= {200, 410, 429}
    with stack.http(session) as http:
        assert len(http.get("/v1/me/provider-tokens").json()["tokens"]) == 3


def test_bad_requests_are_4xx_in_openai_shape(stack: Stack) -> None:
    session = stack.signup()["session_token"]
    url = stack.coordinator.base_url
    bad_token_bodies: list[tuple[dict[str, Any], int]] = [
        ({}, 400), ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400),
        ({"json": []}, 400), ({"json": {"device_code": 7}}, 400), ({"json": {"device_code": None}}, 400),
        ({"json": {"device_code": ""}}, 400), ({"json": {"device_code": ["a"]}}, 400),
        ({"json": {"device_code": "a" * 129}}, 400), ({"json": {"device_code": "A" * 64}}, 404),
        ({"json": {"device_code": "f" * 64}}, 404),
        ({"content": b'{"device_code": "' + b"\\ud800" * 64 + b'"}',  # a lone surrogate
          "headers": {"content-type": "application/json"}}, 400),
        ({"json": {"device_code": "x" * 200_000}}, 413),
        ({"content": b"device_code=abc", "headers": {"content-type": "application/x-www-form-urlencoded"}},
         415),
    ]
    for kwargs, status in bad_token_bodies:
        answer = httpx.post(f"{url}/v1/device/token", timeout=30, **kwargs)
        error = _error(answer, status)
        assert set(error) >= {"message", "type", "code"}
    _error(httpx.post(f"{url}/v1/device/token", json={"device_code": "f" * 64}), 404, "invalid_grant")

    approve = f"{url}/v1/device/approve"
    auth = {"authorization": f"Bearer {session}"}
    for body, status, code in [({}, 400, None), ({"user_code": 12345678}, 400, None),
                               ({"user_code": ""}, 400, None), ({"user_code": "   "}, 400, None),
                               ({"user_code": "x" * 33}, 400, None),
                               ({"user_code": "ABCD-EFG0"}, 404, "invalid_code"),
                               ({"user_code": "!!!!-!!!!"}, 404, "invalid_code")]:
        _error(httpx.post(approve, json=body, headers=auth, timeout=30), status, code)
    _error(httpx.post(approve, content=b"[", headers={**auth, "content-type": "application/json"}), 400)
    _error(httpx.post(approve, content=b"x" * 100_000, headers={**auth, "content-type": "application/json"}),
           413)
    _error(httpx.post(approve, json={"user_code": "ABCD-EFGH"}), 401, "missing_session")
    _error(httpx.post(approve, json={"user_code": "ABCD-EFGH"},
                      headers={"authorization": f"Bearer {stack.coordinator.api_key}"}), 403)
    _error(httpx.post(approve, json={"user_code": "ABCD-EFGH"},
                      headers={"authorization": f"Bearer {stack.coordinator.provider_token}"}), 401)

    # Someone else's code: already linked to them, so 409 for this account too.
    other = stack.signup()["session_token"]
    code = stack.code()
    assert stack.approve(other, code["user_code"]).status_code == 200
    _error(stack.approve(session, code["user_code"]), 409, "already_used")


def test_provider_tokens_are_the_accounts_own(stack: Stack) -> None:
    mine, theirs = stack.signup()["session_token"], stack.signup()["session_token"]
    stack.linked(mine)
    stack.linked(theirs)
    with stack.http(mine) as http:
        [own] = http.get("/v1/me/provider-tokens").json()["tokens"]
        assert set(own) == {"id", "prefix", "label", "created_at", "last_used_at"}
    with stack.http(theirs) as http:
        [their] = http.get("/v1/me/provider-tokens").json()["tokens"]
        # Revoking someone else's token: not found, and it stays valid.
        _error(http.request("DELETE", "/v1/me/provider-tokens", json={"id": own["id"]}), 404)
        _error(http.request("DELETE", "/v1/me/provider-tokens", json={}), 400)
        _error(http.request("DELETE", "/v1/me/provider-tokens", json={"id": 5}), 400)
        _error(http.request("DELETE", "/v1/me/provider-tokens", json={"id": "x" * 65}), 400)
        _error(http.request("DELETE", "/v1/me/provider-tokens", content=b"{",
                            headers={"content-type": "application/json"}), 400)
        assert http.request("DELETE", "/v1/me/provider-tokens", json={"id": their["id"]}).status_code == 200
        _error(http.request("DELETE", "/v1/me/provider-tokens", json={"id": their["id"]}), 404)
    with stack.http(mine) as http:
        assert [t["id"] for t in http.get("/v1/me/provider-tokens").json()["tokens"]] == [own["id"]]
    _error(httpx.get(f"{stack.coordinator.base_url}/v1/me/provider-tokens"), 401)


def test_provider_tokens_page_with_a_cursor(stack: Stack) -> None:
    """Pages follow newest first, tokens minted in the same instant included, each token once;
    a revoked token is still a place to continue from."""
    person = stack.signup()
    stack.linked(person["session_token"])

    async def mint() -> None:
        engine = make_engine(stack.database_url)
        try:
            async with make_sessionmaker(engine).begin() as session:
                same = datetime.now(UTC) + timedelta(minutes=1)
                for _ in range(4):
                    await mint_provider_token(session, person["account_id"], "device login", same)
        finally:
            await engine.dispose()
    asyncio.run(mint())
    with stack.http(person["session_token"]) as http:
        everything = http.get("/v1/me/provider-tokens").json()
        assert everything["truncated"] is False and everything["next_before"] is None
        expected = [t["id"] for t in everything["tokens"]]
        assert len(expected) == 5
        first = http.get("/v1/me/provider-tokens", params={"limit": 2}).json()
        assert first["truncated"] and first["next_before"] == first["tokens"][-1]["id"]
        # The cursor's own token revoked between pages: the walk goes on from its place.
        assert http.request("DELETE", "/v1/me/provider-tokens",
                            json={"id": first["next_before"]}).status_code == 200
        pages, seen = [first], [t["id"] for t in first["tokens"]]
        while pages[-1]["truncated"]:
            pages.append(http.get("/v1/me/provider-tokens",
                                  params={"limit": 2, "before": pages[-1]["next_before"]}).json())
            seen += [t["id"] for t in pages[-1]["tokens"]]
        assert seen == expected and len(pages) == 3
        for bad in ({"limit": 0}, {"limit": 1001}, {"limit": "x"}, {"before": ""},
                    {"before": "x" * 65}, {"before": "no-such-token"}):
            _error(http.get("/v1/me/provider-tokens", params=bad), 400)


def test_codes_are_limited_per_client_address(tmp_path: Path) -> None:
    coordinator = Coordinator(tmp_path, admin_key="adm-" + uuid.uuid4().hex).start()  # 10 a minute
    try:
        answers = [httpx.post(f"{coordinator.base_url}/v1/device/code", timeout=30) for _ in range(11)]
        assert [a.status_code for a in answers[:10]] == [200] * 10
        error = _error(answers[10], 429, "rate_limit_exceeded")
        assert "device" in error["message"] and int(answers[10].headers["retry-after"]) >= 1
        metrics = httpx.get(f"{coordinator.base_url}/v1/admin/metrics?format=prom", timeout=30,
                            headers={"authorization": f"Bearer {coordinator.env['DARKBLOOM_ADMIN_KEY']}"})
        assert 'rate_limit_rejections_total{tier="device"} 1.0' in metrics.text
    finally:
        coordinator.stop()
