"""provider_reputation rows on real SQLite and PostgreSQL: a record survives a save and a reload
with every counter, its uptime buckets and its measured speed; a second save updates in place."""

from __future__ import annotations

import time

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.coordinator.routing.reputation import Record
from darkbloom.coordinator.store.reputation import ReputationStore
from darkbloom.coordinator.store.tables import ProviderReputation
from darkbloom.protocol.frames import Stats


async def test_a_record_round_trips_and_updates_in_place(
        sessions: async_sessionmaker[AsyncSession]) -> None:
    store = ReputationStore(sessions)
    assert await store.load("IDKEY") is None
    record = Record("IDKEY", account_id="acct")
    record.succeeded(800.0, completion_tokens=64, decode_s=0.5)
    record.failed(timeout=True)
    record.challenged(True)
    record.challenged(False)
    record.heartbeat(Stats(requests_served=3, tokens_generated=90), None, 5)
    record.heartbeat(Stats(requests_served=4, tokens_generated=120), 5.0, 5)
    await store.save([record])

    loaded = await store.load("IDKEY")
    assert loaded is not None and not loaded.dirty
    for name in ("account_id", "jobs_succeeded", "jobs_failed", "timeouts", "challenges_passed",
                 "challenges_failed", "response_ms_total", "response_samples", "requests_served",
                 "tokens_generated", "last_requests_served", "last_tokens_generated",
                 "uptime_total_s", "decode_tps"):
        assert getattr(loaded, name) == getattr(record, name), name
    assert loaded.uptime_hours == record.uptime_hours
    assert abs(loaded.last_seen - record.last_seen) < 1 and loaded.first_seen <= time.time()
    assert loaded.score() == record.score()

    loaded.succeeded(100.0)
    await store.save([loaded])
    again = await store.load("IDKEY")
    assert again is not None and again.jobs_succeeded == 2
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(ProviderReputation)) == 1


async def test_malformed_uptime_text_loads_as_empty(sessions: async_sessionmaker[AsyncSession]) -> None:
    store = ReputationStore(sessions)
    await store.save([Record("K")])
    async with sessions() as session, session.begin():
        row = await session.get(ProviderReputation, "K")
        assert row is not None
        row.uptime_hours = '{"x": "y", "5": 99999}'
    loaded = await store.load("K")
    assert loaded is not None and loaded.uptime_hours == {5: 3600.0}
