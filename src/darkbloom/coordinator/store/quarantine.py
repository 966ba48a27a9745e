"""Quarantine rows (trust.md §4 Decision): written when a provider is untrusted, read back at start
so a coordinator restart does not lift a quarantine."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.coordinator.store.tables import ProviderQuarantine


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    identity_key: str
    serial: str | None
    reason: str
    until: datetime


def _aware(stamp: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stamp here is UTC."""
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


async def add_quarantine(sessions: async_sessionmaker[AsyncSession], entry: QuarantineEntry) -> None:
    async with sessions.begin() as session:
        session.add(ProviderQuarantine(identity_key=entry.identity_key[:128],
                                       serial=entry.serial[:128] if entry.serial else None,
                                       reason=entry.reason[:256], until=entry.until,
                                       created_at=datetime.now(UTC)))


async def active_quarantines(sessions: async_sessionmaker[AsyncSession],
                             now: datetime | None = None) -> list[QuarantineEntry]:
    async with sessions() as session:
        rows = (await session.execute(
            select(ProviderQuarantine).where(ProviderQuarantine.until > (now or datetime.now(UTC)))
            .order_by(ProviderQuarantine.until))).scalars().all()
    return [QuarantineEntry(r.identity_key, r.serial, r.reason, _aware(r.until)) for r in rows]
