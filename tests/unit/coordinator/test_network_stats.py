"""Public network data (api.md §9) without a database: pseudonyms, the zero-filled series, the
single-flight cache, and the routes under a storm with instrumented query functions (so the test
counts queries, not milliseconds)."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from darkbloom.config import CoordinatorSettings
from darkbloom.coordinator.api import errors, stats
from darkbloom.coordinator.routing.scheduler import Scheduler
from darkbloom.coordinator.store import network_stats
from darkbloom.coordinator.store.network_stats import AccountEarnings, UsageTotals, fill_minutes, pseudonym
from darkbloom.protocol.frames import CpuCores, Hardware
from tests.unit.conftest import MakeProvider

NAME = re.compile(r"^[a-z]+-[a-z]+-\d{4}$")


# --- pseudonyms -----------------------------------------------------------------------------


def test_pseudonyms_are_stable_and_keyed_by_the_secret() -> None:
    secret = b"s" * 32
    name = pseudonym(secret, "acct_operator")
    assert NAME.match(name)
    assert pseudonym(secret, "acct_operator") == name  # stable
    assert pseudonym(b"t" * 32, "acct_operator") != name  # HMAC: another secret, another name
    assert "operator" not in name
    # Not the reference's bare SHA-256 of the id, which anyone holding a known id could compute.
    digest = hashlib.sha256(b"acct_operator").digest()
    bare = (f"{network_stats.ADJECTIVES[int.from_bytes(digest[0:4], 'big') % 64]}-"
            f"{network_stats.ANIMALS[int.from_bytes(digest[4:8], 'big') % 64]}-"
            f"{int.from_bytes(digest[8:16], 'big') % 10_000:04d}")
    assert name != bare


def test_pseudonyms_rarely_collide() -> None:
    names = {pseudonym(b"k" * 32, f"account-{i}") for i in range(2000)}
    assert len(names) >= 1990
    assert all(NAME.match(name) for name in names)


# --- the series -----------------------------------------------------------------------------


def test_thirty_buckets_zero_filled_oldest_first() -> None:
    last = 29_000_000  # a unix minute
    counted = {last: UsageTotals(2, 10, 5), last - 3: UsageTotals(1, 4, 1),
               last - 30: UsageTotals(9, 9, 9), last + 1: UsageTotals(9, 9, 9)}  # outside: ignored
    buckets = fill_minutes(counted, last)
    assert len(buckets) == 30
    stamps = [datetime.strptime(b["timestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) for b in buckets]
    assert [int(s.timestamp()) // 60 for s in stamps] == list(range(last - 29, last + 1))
    assert buckets[-1] == {"timestamp": buckets[-1]["timestamp"], "requests": 2, "prompt_tokens": 10,
                           "completion_tokens": 5, "total_tokens": 15}
    assert buckets[-4]["requests"] == 1 and buckets[-4]["total_tokens"] == 5
    zeros = [b for i, b in enumerate(buckets) if i not in (26, 29)]
    assert len(zeros) == 28
    assert all(b["requests"] == b["prompt_tokens"] == b["completion_tokens"] == b["total_tokens"] == 0
               for b in zeros)


def test_no_usage_is_thirty_zero_buckets() -> None:
    buckets = fill_minutes({}, 1000)
    assert len(buckets) == 30 and sum(b["requests"] for b in buckets) == 0


# --- the cache ------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_concurrent_misses_share_one_computation() -> None:
    clock, calls = Clock(), []
    cache = stats.TtlCache(clock)
    gate = asyncio.Event()

    async def compute() -> int:
        calls.append(1)
        await gate.wait()
        return len(calls)

    waiters = [asyncio.create_task(cache.get("k", 10, compute)) for _ in range(200)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*waiters) == [1] * 200
    assert len(calls) == 1
    assert await cache.get("k", 10, compute) == 1  # fresh: no computation
    clock.now = 10.5  # stale: one more, shared again
    assert await asyncio.gather(*(cache.get("k", 10, compute) for _ in range(50))) == [2] * 50
    assert len(calls) == 2


async def test_a_failure_is_not_cached_and_a_leaving_caller_does_not_cancel_the_others() -> None:
    cache = stats.TtlCache(Clock())
    gate = asyncio.Event()
    attempts = []

    async def failing() -> int:
        attempts.append(1)
        raise RuntimeError("database down")

    for _ in range(2):
        with pytest.raises(RuntimeError):
            await cache.get("k", 10, failing)
    assert len(attempts) == 2  # each failure retried by the next caller

    async def slow() -> int:
        await gate.wait()
        return 7

    leaving = asyncio.create_task(cache.get("j", 10, slow))
    staying = asyncio.create_task(cache.get("j", 10, slow))
    await asyncio.sleep(0)
    leaving.cancel()
    await asyncio.sleep(0)
    gate.set()
    assert await staying == 7


# --- the routes -----------------------------------------------------------------------------


class Queries:
    """Instrumented stand-ins for network_stats' queries: each call counted, each slow enough
    (one event-loop turn at a time) that a storm arrives while it runs."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    async def _slow(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        for _ in range(20):
            await asyncio.sleep(0)

    async def usage_totals(self, sessions: Any) -> UsageTotals:
        await self._slow("usage_totals")
        return UsageTotals(3, 30, 12)

    async def usage_by_minute(self, sessions: Any, since_minute: int) -> dict[int, UsageTotals]:
        await self._slow("usage_by_minute")
        return {since_minute + 29: UsageTotals(3, 30, 12)}

    async def top_accounts(self, sessions: Any, metric: str, window: str, limit: int,
                           now: datetime) -> list[AccountEarnings]:
        await self._slow("top_accounts")
        return [AccountEarnings(f"acct_{i}", 1000 - i, 100 - i, 10) for i in range(limit)]

    async def earnings_totals(self, sessions: Any, window: str,
                              now: datetime) -> network_stats.EarningsTotals:
        await self._slow("earnings_totals")
        return network_stats.EarningsTotals(5000, 400, 40, 4)

    async def shared_secret(self, sessions: Any, name: str) -> bytes:
        await self._slow("shared_secret")
        return b"x" * 32


@pytest.fixture
def queries(monkeypatch: pytest.MonkeyPatch) -> Queries:
    fake = Queries()
    for name in ("usage_totals", "usage_by_minute", "top_accounts", "earnings_totals", "shared_secret"):
        monkeypatch.setattr(network_stats, name, getattr(fake, name))
    return fake


@pytest.fixture
async def api(make_provider: MakeProvider) -> AsyncIterator[tuple[httpx.AsyncClient, Scheduler]]:
    app = FastAPI()
    errors.install(app)
    app.include_router(stats.router)
    scheduler = Scheduler(10, 1.0, min_trust="none")
    app.state.settings, app.state.scheduler, app.state.sessions = CoordinatorSettings(), scheduler, None
    serving = make_provider("session-a", models=("m1", "m2"), max_concurrency=2)
    serving.hardware = Hardware(chip_name="Apple M2 Max", chip_family="M2", chip_tier="Max",
                                machine_model="Mac14,6", memory_gb=64, gpu_cores=38,
                                cpu_cores=CpuCores(total=12, performance=8, efficiency=4),
                                memory_bandwidth_gbs=400.0)
    serving.account_id = "acct_secret_operator"
    serving.in_flight = 1
    untrusted = make_provider("session-b", models=("m1",))
    untrusted.untrusted = True
    untrusted.hardware = Hardware(chip_name="x" * 5000, memory_gb=16, gpu_cores=10)
    scheduler.add(serving)
    scheduler.add(untrusted)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        yield client, scheduler


async def test_a_storm_of_stats_requests_queries_the_database_once(
        api: tuple[httpx.AsyncClient, Scheduler], queries: Queries) -> None:
    client, _ = api
    answers = await asyncio.gather(*(client.get("/v1/stats") for _ in range(200)))
    assert {a.status_code for a in answers} == {200}
    assert queries.calls == {"usage_totals": 1, "usage_by_minute": 1}
    assert len({a.content for a in answers}) == 1  # one computation, one answer
    assert answers[0].headers["cache-control"] == "public, max-age=10"
    body = answers[0].json()
    assert body["total_requests"] == 3 and body["total_tokens"] == 42 and body["avg_tokens_per_request"] == 14
    assert len(body["time_series"]) == 30 and body["time_series"][-1]["requests"] == 3
    # Only the routable provider counts toward the totals; both are listed, with their status.
    assert body["active_providers"] == 1
    assert (body["total_gpu_cores"], body["total_cpu_cores"], body["total_memory_gb"]) == (38, 12, 64)
    assert body["total_bandwidth_gbs"] == 400.0 and body["network_capacity_tps"] == 0
    assert body["models"] == [{"id": "m1", "providers": 1}, {"id": "m2", "providers": 1}]
    by_id = {p["id"]: p for p in body["providers"]}
    assert by_id["session-a"]["status"] == "serving" and by_id["session-b"]["status"] == "untrusted"
    assert by_id["session-a"]["cpu_cores"] == {"total": 12, "performance": 8, "efficiency": 4}
    assert by_id["session-a"]["chip"] == "Apple M2 Max" and by_id["session-a"]["models"] == ["m1", "m2"]
    assert len(by_id["session-b"]["chip"]) <= 64  # a provider's string is cut, not echoed whole
    assert set(by_id["session-a"]) == {
        "id", "chip", "chip_family", "chip_tier", "machine_model", "memory_gb", "gpu_cores", "cpu_cores",
        "memory_bandwidth_gbs", "status", "trust_level", "decode_tps", "requests_served",
        "tokens_generated", "models", "current_model"}
    assert "acct_secret_operator" not in answers[0].text


async def test_a_storm_of_leaderboard_requests_with_any_limit_queries_once_per_metric_and_window(
        api: tuple[httpx.AsyncClient, Scheduler], queries: Queries) -> None:
    client, _ = api
    limits = [1 + i % 200 for i in range(200)]
    answers = await asyncio.gather(*(client.get(f"/v1/leaderboard?metric=tokens&window=7d&limit={n}")
                                     for n in limits))
    assert {a.status_code for a in answers} == {200}
    assert queries.calls == {"shared_secret": 1, "top_accounts": 1}
    for limit, answer in zip(limits, answers, strict=True):
        body = answer.json()
        assert (body["metric"], body["window"], len(body["entries"])) == ("tokens", "7d", limit)
        assert [e["rank"] for e in body["entries"]] == list(range(1, limit + 1))
        assert all(NAME.match(e["pseudonym"]) for e in body["entries"])
        assert "acct_" not in answer.text
    # Aliases share the canonical window's entry; the secret is read once per process.
    one_day = await client.get("/v1/leaderboard?window=1d")
    lifetime = await client.get("/v1/leaderboard?window=lifetime&metric=jobs")
    assert (one_day.json()["window"], one_day.json()["metric"]) == ("24h", "earnings")
    assert lifetime.json()["window"] == "all"
    assert len(one_day.json()["entries"]) == 50  # the default limit
    again = await client.get("/v1/leaderboard?window=24h")
    assert again.json()["entries"] == one_day.json()["entries"]
    assert queries.calls == {"shared_secret": 1, "top_accounts": 3}


async def test_network_totals(api: tuple[httpx.AsyncClient, Scheduler], queries: Queries) -> None:
    client, _ = api
    answers = await asyncio.gather(*(client.get("/v1/network/totals?window=30d") for _ in range(100)))
    assert queries.calls == {"earnings_totals": 1}
    body = answers[0].json()
    assert {k: v for k, v in body.items() if k != "updated_at"} == {
        "window": "30d", "earnings_micro_usd": 5000, "tokens": 400, "jobs": 40, "active_accounts": 4}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["updated_at"])
    assert (await client.get("/v1/network/totals")).json()["window"] == "all"


@pytest.mark.parametrize("path", [
    "/v1/leaderboard?metric=money", "/v1/leaderboard?window=2d", "/v1/leaderboard?limit=0",
    "/v1/leaderboard?limit=201", "/v1/leaderboard?limit=abc", "/v1/leaderboard?limit=-1",
    "/v1/leaderboard?limit=" + "9" * 40, "/v1/leaderboard?limit=%C2%B2", "/v1/leaderboard?limit=",
    "/v1/leaderboard?metric=jobs&metric=tokens", "/v1/leaderboard?window=" + "7" * 5000,
    "/v1/network/totals?window=forever", "/v1/network/totals?window=24h&window=7d",
])
async def test_bad_parameters_are_400_in_openai_shape(
        api: tuple[httpx.AsyncClient, Scheduler], queries: Queries, path: str) -> None:
    client, _ = api
    answer = await client.get(path)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == error["code"] == "invalid_request_error"
    assert error["param"] in ("metric", "window", "limit")
    assert queries.calls == {}  # rejected before any query
