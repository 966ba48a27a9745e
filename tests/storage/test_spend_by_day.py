"""The Billing page's spend-per-day aggregate on real SQLite and PostgreSQL: one bucket per UTC
day of the asking account only, days cut at midnight UTC, the window's start honoured, and the
14-day series filled with zero days."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.coordinator.store.tables import UsageRecord
from darkbloom.coordinator.store.usage import DAY_S, DaySpend, fill_days, spend_by_day

Sessions = async_sessionmaker[AsyncSession]


def _usage(request_id: str, at: datetime, account: str, cost: int) -> UsageRecord:
    return UsageRecord(request_id=request_id, account_id=account, endpoint="/v1/chat/completions",
                       model="m", prompt_tokens=3, completion_tokens=4, cost_micro_usd=cost,
                       provider_payout_micro_usd=cost, platform_fee_micro_usd=0,
                       referral_reward_micro_usd=0, status="completed", self_routed=cost == 0,
                       duration_ms=1.0, created_at=at)


async def test_spend_is_summed_per_utc_day_for_one_account(sessions: Sessions) -> None:
    today = int(time.time()) // DAY_S
    midnight = datetime.fromtimestamp(today * DAY_S, UTC)
    async with sessions.begin() as session:
        session.add_all([
            _usage("a", midnight + timedelta(seconds=1), "alice", 100),
            _usage("b", midnight + timedelta(microseconds=1), "alice", 20),
            _usage("c", midnight - timedelta(microseconds=1), "alice", 3),  # yesterday, 23:59:59.999999
            _usage("d", midnight - timedelta(days=5, hours=-2), "alice", 0),  # free: counted, no cost
            _usage("e", midnight - timedelta(days=20), "alice", 9_999),  # before the window
            _usage("f", midnight + timedelta(seconds=5), "bob", 7_000),  # someone else's
            _usage("g", midnight - timedelta(days=2, hours=1), "alice", 5),  # 23:00 three days ago
        ])
    counted = await spend_by_day(sessions, "alice", today - 13)
    assert counted == {today: DaySpend(2, 120), today - 1: DaySpend(1, 3),
                       today - 5: DaySpend(1, 0), today - 3: DaySpend(1, 5)}
    series = fill_days(counted, today)
    assert [day for day, _ in series] == list(range(today - 13, today + 1))
    assert series[-1][1] == DaySpend(2, 120) and series[0][1] == DaySpend(0, 0)
    assert sum(spent.cost_micro_usd for _, spent in series) == 128
    assert await spend_by_day(sessions, "carol", today - 13) == {}


async def test_a_thousand_rows_aggregate_to_their_totals(sessions: Sessions) -> None:
    today = int(time.time()) // DAY_S
    start = datetime.fromtimestamp((today - 13) * DAY_S, UTC)
    async with sessions.begin() as session:
        session.add_all([_usage(f"r{i}", start + timedelta(minutes=20 * i), "alice", i) for i in range(1000)])
    counted = await spend_by_day(sessions, "alice", today - 13)
    # 72 rows a day (every 20 minutes) from the window's first midnight on.
    assert sum(spent.requests for spent in counted.values()) == 1000
    assert sum(spent.cost_micro_usd for spent in counted.values()) == sum(range(1000))
    assert counted[today - 13] == DaySpend(72, sum(range(72)))
