"""Reading what requests cost and earned: an account's usage rows and a provider account's earnings
(api.md §7). Counts and money only; these tables never hold text."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.coordinator.store.tables import ProviderEarning, UsageRecord


def utc(stamp: datetime) -> datetime:
    """SQLite returns naive datetimes; every stored time is UTC."""
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


async def usage_page(sessions: async_sessionmaker[AsyncSession], account_id: str, limit: int,
                     before: datetime | None) -> list[UsageRecord]:
    """Newest first, strictly before ``before`` when given."""
    query = select(UsageRecord).where(UsageRecord.account_id == account_id)
    if before is not None:
        query = query.where(UsageRecord.created_at < before)
    async with sessions() as session:
        return list((await session.execute(
            query.order_by(UsageRecord.created_at.desc(), UsageRecord.request_id.desc())
            .limit(limit))).scalars())


@dataclass(frozen=True, slots=True)
class Earnings:
    rows: list[ProviderEarning]
    total_micro_usd: int
    count: int


async def earnings(sessions: async_sessionmaker[AsyncSession], account_id: str, limit: int,
                   provider_key: str | None = None) -> Earnings:
    """The newest ``limit`` earnings of an account (of one node when ``provider_key`` is given),
    and the all-time total and count."""
    where = [ProviderEarning.account_id == account_id]
    if provider_key is not None:
        where.append(ProviderEarning.provider_key == provider_key)
    async with sessions() as session:
        rows = list((await session.execute(select(ProviderEarning).where(*where)
                                           .order_by(ProviderEarning.id.desc()).limit(limit))).scalars())
        total, count = (await session.execute(select(
            func.coalesce(func.sum(ProviderEarning.amount_micro_usd), 0), func.count())
            .where(*where))).one()
    return Earnings(rows, int(total), int(count))
