"""Reading what requests cost and earned: an account's usage rows and a provider account's earnings
(api.md §7). Counts and money only; these tables never hold text."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Integer, cast, func, literal_column, select
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


# --- spend per day (the console's Billing chart) ------------------------------------------------

DAY_S = 86_400


@dataclass(frozen=True, slots=True)
class DaySpend:
    requests: int
    cost_micro_usd: int


def _unix_day(column: Any, dialect: str) -> ColumnElement[Any]:
    """Unix day (UTC) of a stored time, in SQL. Literals, not bound parameters, so that the GROUP
    BY expression is textually the SELECT's (PostgreSQL compares them as written)."""
    day = literal_column(str(DAY_S), Integer)
    if dialect == "postgresql":
        return cast(func.floor(func.extract("epoch", column) / day), BigInteger)
    # SQLite keeps naive UTC text (tz dropped); strftime('%s') reads it as UTC, but rounds to the
    # millisecond (23:59:59.9999995 would be the next day): whole seconds only, cut from the text.
    seconds = func.strftime("%s", func.substr(column, literal_column("1"), literal_column("19")))
    return cast(seconds, Integer) // day


async def spend_by_day(sessions: async_sessionmaker[AsyncSession], account_id: str, since_day: int
                       ) -> dict[int, DaySpend]:
    """An account's settled requests and what they cost, per UTC unix day from ``since_day`` on;
    days without a request are absent. One aggregate over the account's rows of those days (the
    account index narrows it), so a page can show it however much the account has used."""
    since = datetime.fromtimestamp(since_day * DAY_S, UTC)
    async with sessions() as session:
        day = _unix_day(UsageRecord.created_at, session.get_bind().dialect.name)
        rows = (await session.execute(
            select(day, func.count(), func.coalesce(func.sum(UsageRecord.cost_micro_usd), 0))
            .where(UsageRecord.account_id == account_id, UsageRecord.created_at >= since)
            .group_by(day))).all()
    return {int(d): DaySpend(int(n), int(cost)) for d, n, cost in rows}


def fill_days(counted: dict[int, DaySpend], last_day: int, count: int = 14) -> list[tuple[int, DaySpend]]:
    """Exactly ``count`` days, oldest first, ending with ``last_day`` (today, partial); a day
    without requests is zeros."""
    zero = DaySpend(0, 0)
    return [(day, counted.get(day, zero)) for day in range(last_day - count + 1, last_day + 1)]
