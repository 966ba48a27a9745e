"""What an operator's account has on record (GET /v1/me/summary, /v1/me/providers): earnings in
windows, per machine, and the stored track record of each machine it ever linked. Reads only;
counts and money, never text."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.coordinator.store.tables import ProviderEarning, ProviderReputation

Sessions = async_sessionmaker[AsyncSession]
# The most machines one account's listing reads (its most recently seen).
MAX_MACHINES = 1000


def _aware(stamp: datetime) -> datetime:
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Earned:
    micro_usd: int
    jobs: int


async def earned_since(sessions: Sessions, account_id: str,
                       since: dict[str, datetime | None]) -> dict[str, Earned]:
    """The account's provider earnings (sum, count) since each named time (None: all time)."""
    found: dict[str, Earned] = {}
    async with sessions() as session:
        for name, start in since.items():
            query = select(func.coalesce(func.sum(ProviderEarning.amount_micro_usd), 0),
                           func.count()).where(ProviderEarning.account_id == account_id)
            if start is not None:
                query = query.where(ProviderEarning.created_at >= start)
            total, count = (await session.execute(query)).one()
            found[name] = Earned(int(total), int(count))
    return found


async def earned_by_machine(sessions: Sessions, account_id: str) -> dict[str, Earned]:
    """The account's earnings per identity key (attested machines; an unattested machine's
    earnings carry no key and cannot be told apart)."""
    async with sessions() as session:
        rows = (await session.execute(
            select(ProviderEarning.provider_key, func.coalesce(func.sum(ProviderEarning.amount_micro_usd), 0),
                   func.count())
            .where(ProviderEarning.account_id == account_id, ProviderEarning.provider_key.is_not(None))
            .group_by(ProviderEarning.provider_key))).all()
    return {str(row[0]): Earned(int(row[1]), int(row[2])) for row in rows}


@dataclass(frozen=True, slots=True)
class Machine:
    """A stored provider_reputation row: one identity (attested key, or ``token:<id>``)."""

    key: str
    score: float
    jobs_succeeded: int
    jobs_failed: int
    timeouts: int
    challenges_passed: int
    challenges_failed: int
    response_ms_total: int
    response_samples: int
    requests_served: int
    tokens_generated: int
    uptime_total_s: int
    decode_tps: float
    first_seen: datetime
    last_seen: datetime


async def machines(sessions: Sessions, account_id: str) -> list[Machine]:
    """The account's machines on record, most recently seen first (at most MAX_MACHINES)."""
    async with sessions() as session:
        rows = (await session.execute(
            select(ProviderReputation).where(ProviderReputation.account_id == account_id)
            .order_by(ProviderReputation.last_seen.desc(), ProviderReputation.provider_key)
            .limit(MAX_MACHINES))).scalars().all()
    return [Machine(r.provider_key, float(r.score), int(r.jobs_succeeded), int(r.jobs_failed),
                    int(r.timeouts), int(r.challenges_passed), int(r.challenges_failed),
                    int(r.response_ms_total), int(r.response_samples), int(r.requests_served),
                    int(r.tokens_generated), int(r.uptime_total_s), float(r.decode_tps),
                    _aware(r.first_seen), _aware(r.last_seen)) for r in rows]


def windows(now: datetime) -> dict[str, datetime | None]:
    return {"lifetime": None, "last_24h": now - timedelta(hours=24), "last_7d": now - timedelta(days=7)}
