"""GET /v1/me/providers and /v1/me/summary (api.md §6) against real coordinators on SQLite and
PostgreSQL, with fake providers over real WebSockets (tests/e2e/fakes.py) so the test decides each
machine's state: linked and never started, online, serving, needing attention, offline; and, with
two coordinators on one PostgreSQL and Redis, a machine connected to one shows online on the
other."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import drop_postgres_database, fresh_postgres_database
from tests.e2e.fakes import FakeProvider, Job
from tests.e2e.harness import MODEL, Coordinator
from tests.e2e.test_device_login import Stack
from tests.e2e.test_scale_out import Cluster

FAST = {"device_codes_per_minute": 10_000, "reputation_flush_s": 0.5, "provider_token_poll_s": 0.5}
HI = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp(f"me-{request.param}")
    name = None
    if request.param == "postgresql":
        name, database = fresh_postgres_database()
    else:
        database = f"sqlite+aiosqlite:///{(workdir / 'state' / 'coordinator.db').resolve()}"
    coordinator = Coordinator(workdir, database_url=database, **FAST).start()
    try:
        yield Stack(coordinator, database)
    finally:
        coordinator.stop()
        if name:
            drop_postgres_database(name)


async def _get(c: Coordinator, session: str, path: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=c.base_url, timeout=30,
                                 headers={"authorization": f"Bearer {session}"}) as http:
        answer = await http.get(path)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


async def _until(c: Coordinator, session: str, path: str,
                 done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        body = await _get(c, session, path)
        if done(body):
            return body
        assert time.monotonic() < deadline, f"{path} never got there: {body}"
        await asyncio.sleep(0.2)


def _statuses(body: dict[str, Any]) -> list[str]:
    return sorted(p["status"] for p in body["providers"])


def test_an_account_without_machines(stack: Stack) -> None:
    session = stack.signup()["session_token"]
    with stack.http(session) as http:
        listing = http.get("/v1/me/providers").json()
        summary = http.get("/v1/me/summary").json()
    assert listing["providers"] == [] and listing["min_provider_version"] is None
    assert listing["latest_provider_version"] and listing["heartbeat_timeout_seconds"] == 90
    assert listing["challenge_max_age_seconds"] == pytest.approx(360.0)
    assert summary["counts"] == {"total": 0, "online": 0, "serving": 0, "offline": 0, "untrusted": 0,
                                 "hardware": 0, "needs_attention": 0}
    assert summary["payout_ready"] is False
    for name in ("available_balance_micro_usd", "withdrawable_balance_micro_usd", "lifetime_micro_usd",
                 "lifetime_jobs", "last_24h_micro_usd", "last_24h_jobs", "last_7d_micro_usd", "last_7d_jobs"):
        assert summary[name] == 0, name
    url = stack.coordinator.base_url
    for path in ("/v1/me/providers", "/v1/me/summary"):
        assert httpx.get(f"{url}{path}").status_code == 401
        refused = httpx.get(f"{url}{path}", headers={"authorization": f"Bearer {stack.coordinator.api_key}"})
        assert refused.status_code == 403 and refused.json()["error"]["type"] == "forbidden"


def test_machines_through_their_states(stack: Stack) -> None:
    person = stack.signup()
    session, account = person["session_token"], person["account_id"]
    token, _ = stack.linked(session)
    c = stack.coordinator

    async def go() -> None:
        listing = await _get(c, session, "/v1/me/providers")
        [linked] = listing["providers"]
        assert linked["status"] == "never_seen" and linked["online"] is False
        assert linked["registered_at"] and linked["reputation"] is None

        gate = asyncio.Event()

        async def hold(job: Job) -> None:
            await job.accepted()
            await gate.wait()
            await job.error(400, "scripted refusal")

        async with FakeProvider(c, token=token, heartbeat_s=0.3, behaviour=hold) as fake:
            body = await _until(c, session, "/v1/me/providers",
                                lambda b: _statuses(b) == ["online"] and b["providers"][0]["routable"])
            [machine] = body["providers"]
            assert machine["id"] == machine["session_id"] == fake.registered["provider_id"]
            assert machine["account_id"] == account and machine["models"] == [MODEL]
            assert machine["trust_level"] == "self_signed" and machine["attested"] is True
            assert machine["provider_key"] == machine["se_public_key"] == fake.identity.public_b64
            assert machine["last_challenge_verified"] and machine["failed_challenges"] == 0
            assert machine["attention"] == [] and machine["pending_requests"] == 0
            assert machine["hardware"]["chip_name"] is not None and machine["max_concurrency"] >= 1
            assert set(machine["reputation"]) == {
                "score", "total_jobs", "successful_jobs", "failed_jobs", "avg_response_time_ms",
                "challenges_passed", "challenges_failed", "total_uptime_seconds"}
            assert machine["reputation"]["challenges_passed"] >= 1
            assert machine["earnings_total_micro_usd"] == 0 and machine["earnings_count"] == 0
            await _until(c, session, "/v1/me/providers",
                         lambda b: b["providers"][0]["warm_models"] == [MODEL])
            summary = await _get(c, session, "/v1/me/summary")
            assert summary["counts"]["online"] == 1 and summary["counts"]["total"] == 1

            # A request in flight: serving, one pending.
            async with httpx.AsyncClient(base_url=c.base_url, timeout=60) as consumer:
                call = asyncio.create_task(consumer.post(
                    "/v1/chat/completions", json={"model": MODEL, "messages": HI, "max_tokens": 4},
                    headers={"authorization": f"Bearer {c.api_key}"}))
                body = await _until(c, session, "/v1/me/providers", lambda b: _statuses(b) == ["serving"])
                assert body["providers"][0]["pending_requests"] == 1
                assert (await _get(c, session, "/v1/me/summary"))["counts"]["serving"] == 1
                gate.set()
                assert (await call).status_code >= 400  # refused: the provider said so

            # An unattested machine on the same token: connected, never routed, and says why.
            async with FakeProvider(c, token=token, blob={}, answer=None):
                body = await _until(c, session, "/v1/me/providers", lambda b: len(b["providers"]) == 2)
                [odd] = [p for p in body["providers"] if not p["attested"]]
                assert odd["status"] == "online" and odd["routable"] is False
                assert odd["trust_level"] == "none" and "below this network's minimum" in odd["attention"][0]
                assert odd["earnings_total_micro_usd"] is None  # no identity: earnings not its own
                summary = await _get(c, session, "/v1/me/summary")
                assert summary["counts"]["needs_attention"] == 1 and summary["counts"]["total"] == 2

        # Both gone: offline, with what is on record.
        body = await _until(c, session, "/v1/me/providers",
                            lambda b: _statuses(b) == ["offline", "offline"])
        attested = next(p for p in body["providers"] if p["attested"])
        assert attested["session_id"] is None and attested["id"] == fake.identity.public_b64
        assert attested["reputation"]["challenges_passed"] >= 1 and attested["last_seen"]
        summary = await _get(c, session, "/v1/me/summary")
        assert summary["counts"]["offline"] == 2 and summary["counts"]["online"] == 0

        # Another account sees none of it.
        other = stack.signup()["session_token"]
        assert (await _get(c, other, "/v1/me/providers"))["providers"] == []

    asyncio.run(go())


@pytest.mark.timeout(300)
def test_a_machine_on_one_coordinator_is_online_on_the_other(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 2, **FAST)
    try:
        a, b = cluster.coordinators
        stack = Stack(a, "")
        session = stack.signup()["session_token"]
        token, _ = stack.linked(session)

        async def go() -> None:
            async with FakeProvider(a, token=token, heartbeat_s=0.3) as fake, \
                    FakeProvider(a, token=token, blob={}, answer=None, heartbeat_s=0.3):
                # The attested one through B's mirror of A's presence record (its account proven
                # from the database); the unattested one through the record A keeps writing.
                body = await _until(b, session, "/v1/me/providers",
                                    lambda x: _statuses(x) == ["online", "online"])
                mirrored = next(p for p in body["providers"] if p["attested"])
                assert mirrored["session_id"] == fake.registered["provider_id"]
                assert mirrored["models"] == [MODEL]
                unattested = next(p for p in body["providers"] if not p["attested"])
                assert unattested["session_id"] is None and unattested["last_heartbeat"]
            await _until(b, session, "/v1/me/providers",
                         lambda x: _statuses(x) == ["offline", "offline"])

        asyncio.run(go())
    finally:
        cluster.close()
