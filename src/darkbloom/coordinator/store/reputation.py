"""provider_reputation rows: load a provider identity's record when it connects, upsert changed
records every few seconds (routing/reputation.py owns the arithmetic)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.coordinator.routing.reputation import Record
from darkbloom.coordinator.store.tables import ProviderReputation

# Added to the stored row as differences since this process last read or wrote it, so two
# coordinators counting the same identity (a failover, a forwarded request) never lose each
# other's counts; the rest are states, written whole (the last writer's).
_COUNTERS = ("jobs_succeeded", "jobs_failed", "timeouts", "challenges_passed", "challenges_failed",
             "response_ms_total", "response_samples", "requests_served", "tokens_generated",
             "uptime_total_s")
_STATES = ("last_requests_served", "last_tokens_generated")
_MAX_HOURS = 25


def _stamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _seconds(when: datetime) -> float:
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _hours(text: str) -> dict[int, float]:
    """The stored uptime buckets, ignoring anything malformed (it is our own JSON, but bounded)."""
    try:
        raw = json.loads(text) if len(text) < 4096 else {}
    except ValueError:
        return {}
    if not isinstance(raw, dict):
        return {}
    hours: dict[int, float] = {}
    for hour, seconds in list(raw.items())[:_MAX_HOURS]:
        try:
            hours[int(hour)] = min(3600.0, max(0.0, float(seconds)))
        except (TypeError, ValueError):
            continue
    return hours


class ReputationStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def load(self, key: str) -> Record | None:
        async with self.sessions() as session:
            row = await session.get(ProviderReputation, key)
        if row is None:
            return None
        record = Record(key=key, account_id=row.account_id, uptime_hours=_hours(row.uptime_hours),
                        decode_tps=float(row.decode_tps), first_seen=_seconds(row.first_seen),
                        last_seen=_seconds(row.last_seen), dirty=False)
        for name in (*_COUNTERS, *_STATES):
            setattr(record, name, int(getattr(row, name)))
        record.saved = {name: getattr(record, name) for name in _COUNTERS}
        return record

    async def account_of(self, key: str) -> str | None:
        """The account a proven identity earns for, as its home coordinator wrote it."""
        async with self.sessions() as session:
            row = await session.get(ProviderReputation, key)
        return row.account_id if row is not None else None

    async def save(self, records: list[Record]) -> None:
        if not records:
            return
        async with self.sessions() as session, session.begin():
            dialect = session.get_bind().dialect.name
            insert: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
            snapshots = []
            for record in records:
                counts = {name: getattr(record, name) for name in _COUNTERS}
                states: dict[str, Any] = {name: getattr(record, name) for name in _STATES}
                states.update(account_id=record.account_id, decode_tps=record.decode_tps,
                              uptime_hours=json.dumps({str(h): round(s, 1)
                                                       for h, s in record.uptime_hours.items()}),
                              score=record.score(), last_seen=_stamp(record.last_seen))
                added = {name: getattr(ProviderReputation, name) + (count - record.saved.get(name, 0))
                         for name, count in counts.items()}
                stmt = insert(ProviderReputation).values(
                    provider_key=record.key, first_seen=_stamp(record.first_seen), **counts, **states)
                await session.execute(stmt.on_conflict_do_update(
                    index_elements=[ProviderReputation.provider_key], set_={**added, **states}))
                snapshots.append((record, counts))
        for record, counts in snapshots:
            record.saved = counts
