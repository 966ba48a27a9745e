"""The public network data's queries on real SQLite and PostgreSQL: totals and the per-minute
series over usage rows (free work included), leaderboards by metric and window, and the shared
pseudonym secret made once even when several processes ask at the same moment."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.coordinator.store import network_stats
from darkbloom.coordinator.store.credentials import ensure_account
from darkbloom.coordinator.store.db import make_engine, make_sessionmaker
from darkbloom.coordinator.store.tables import ProviderEarning, UsageRecord

Sessions = async_sessionmaker[AsyncSession]


def _usage(request_id: str, at: datetime, prompt: int, completion: int, cost: int = 0) -> UsageRecord:
    return UsageRecord(request_id=request_id, account_id="alice", endpoint="/v1/chat/completions",
                       model="m", prompt_tokens=prompt, completion_tokens=completion, cost_micro_usd=cost,
                       provider_payout_micro_usd=cost, platform_fee_micro_usd=0,
                       referral_reward_micro_usd=0, status="completed", self_routed=cost == 0,
                       duration_ms=1.0, created_at=at)


def _earning(job: str, account: str, at: datetime, amount: int, prompt: int, completion: int
             ) -> ProviderEarning:
    return ProviderEarning(account_id=account, provider_id="s", job_id=job, model="m",
                           amount_micro_usd=amount, prompt_tokens=prompt, completion_tokens=completion,
                           created_at=at)


async def test_totals_and_minutes_count_every_settled_request(sessions: Sessions) -> None:
    now = datetime.now(UTC).replace(second=30, microsecond=0)
    minute = int(now.timestamp()) // 60
    async with sessions.begin() as session:
        session.add_all([
            _usage("a", now, 10, 5, cost=7), _usage("b", now + timedelta(seconds=10), 1, 1),  # free
            _usage("c", now - timedelta(minutes=3), 2, 3, cost=1),
            _usage("d", now - timedelta(hours=2), 100, 100, cost=9),  # before the series
        ])
    totals = await network_stats.usage_totals(sessions)
    assert totals == network_stats.UsageTotals(4, 113, 109)
    counted = await network_stats.usage_by_minute(sessions, minute - 29)
    assert counted == {minute: network_stats.UsageTotals(2, 11, 6),
                       minute - 3: network_stats.UsageTotals(1, 2, 3)}
    series = network_stats.fill_minutes(counted, minute)
    assert series[-1]["requests"] == 2 and series[-4]["total_tokens"] == 5
    assert sum(b["requests"] for b in series) == 3


async def test_an_empty_database_has_zero_totals(sessions: Sessions) -> None:
    assert await network_stats.usage_totals(sessions) == network_stats.UsageTotals(0, 0, 0)
    assert await network_stats.usage_by_minute(sessions, 0) == {}
    assert await network_stats.earnings_totals(sessions, "all", datetime.now(UTC)) == \
        network_stats.EarningsTotals(0, 0, 0, 0)
    assert await network_stats.top_accounts(sessions, "earnings", "all", 50, datetime.now(UTC)) == []


async def test_leaderboard_by_metric_and_window(sessions: Sessions) -> None:
    now = datetime.now(UTC)
    async with sessions.begin() as session:
        for account in ("rich", "busy", "old"):
            await ensure_account(session, account)
    big = 2**31 - 1  # two INTEGER token columns near their maximum: the sum must not overflow
    async with sessions.begin() as session:
        session.add_all([
            _earning("r1", "rich", now - timedelta(hours=1), 5_000, 10, 10),
            _earning("b1", "busy", now - timedelta(hours=1), 100, big, big),
            _earning("b2", "busy", now - timedelta(hours=2), 100, 1, 1),
            _earning("b3", "busy", now - timedelta(days=2), 100, 1, 1),
            _earning("o1", "old", now - timedelta(days=40), 90_000, 1, 1),
        ])

    async def board(metric: network_stats.Metric, window: str, limit: int = 50
                    ) -> list[tuple[str, int, int, int]]:
        rows = await network_stats.top_accounts(sessions, metric, window, limit, now)
        return [(r.account_id, r.earnings_micro_usd, r.tokens, r.jobs) for r in rows]

    assert await board("earnings", "24h") == [("rich", 5_000, 20, 1), ("busy", 200, 2 * big + 2, 2)]
    assert await board("tokens", "24h") == [("busy", 200, 2 * big + 2, 2), ("rich", 5_000, 20, 1)]
    assert await board("jobs", "7d") == [("busy", 300, 2 * big + 4, 3), ("rich", 5_000, 20, 1)]
    assert await board("earnings", "30d", limit=1) == [("rich", 5_000, 20, 1)]
    assert (await board("earnings", "all"))[0] == ("old", 90_000, 2, 1)
    totals = await network_stats.earnings_totals(sessions, "7d", now)
    assert totals == network_stats.EarningsTotals(5_300, 2 * big + 24, 4, 2)
    assert (await network_stats.earnings_totals(sessions, "all", now)).active_accounts == 3


async def test_the_pseudonym_secret_is_made_once_for_every_process(database_url: str,
                                                                   sessions: Sessions) -> None:
    """Several engines (as several coordinator processes would) ask at once: one value wins."""
    engines = [make_engine(database_url) for _ in range(4)]
    try:
        values = await asyncio.gather(*(network_stats.shared_secret(make_sessionmaker(e), "pseudonym")
                                        for e in engines))
    finally:
        for engine in engines:
            await engine.dispose()
    assert len(set(values)) == 1 and len(values[0]) == 32
    assert await network_stats.shared_secret(sessions, "pseudonym") == values[0]  # survives restarts
    assert await network_stats.shared_secret(sessions, "other") != values[0]
