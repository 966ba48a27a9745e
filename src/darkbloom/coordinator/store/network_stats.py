"""Queries behind the public network data (api.md §9): request and token totals, a per-minute
series, and per-provider-account earnings for the leaderboard; plus the shared secret that keys
leaderboard pseudonyms. Counts and money only, and never an account id leaves this module's
callers: the API turns account ids into pseudonyms.

Totals and the series read ``usage_records``: one row per settled request (completed or partial),
written in the settlement's transaction, *including* free work (self-routed requests and free
models, cost 0). ``requests`` also holds failures and rows still in progress, and its tokens are
not the billed ones. The leaderboard and network totals read ``provider_earnings``: paid work
only, so routing requests to one's own provider (free) cannot climb the board.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import BigInteger, ColumnElement, Integer, cast, distinct, func, literal_column, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.coordinator.store.tables import CoordinatorSecret, ProviderEarning, UsageRecord

Metric = Literal["earnings", "tokens", "jobs"]
Window = Literal["24h", "7d", "30d", "all"]
WINDOWS: dict[str, timedelta | None] = {"24h": timedelta(hours=24), "7d": timedelta(days=7),
                                        "30d": timedelta(days=30), "all": None}
PSEUDONYM_SECRET = "pseudonym"


# --- /v1/stats ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UsageTotals:
    requests: int
    prompt_tokens: int
    completion_tokens: int


async def usage_totals(sessions: async_sessionmaker[AsyncSession]) -> UsageTotals:
    """Every settled request since the network began."""
    async with sessions() as session:
        count, prompt, completion = (await session.execute(select(
            func.count(), func.coalesce(func.sum(UsageRecord.prompt_tokens), 0),
            func.coalesce(func.sum(UsageRecord.completion_tokens), 0)))).one()
    return UsageTotals(int(count), int(prompt), int(completion))


def _minute(column: Any, dialect: str) -> ColumnElement[Any]:
    """Unix minute of a stored UTC time, in SQL. Literals, not bound parameters, so that the
    GROUP BY expression is textually the SELECT's (PostgreSQL compares them as written)."""
    sixty = literal_column("60", Integer)
    if dialect == "postgresql":
        seconds: ColumnElement[Any] = func.extract("epoch", column)
        return cast(func.floor(seconds / sixty), BigInteger)
    # SQLite keeps naive UTC text (tz dropped); strftime('%s') reads it as UTC.
    return cast(func.strftime("%s", column), Integer) // sixty


async def usage_by_minute(sessions: async_sessionmaker[AsyncSession], since_minute: int
                          ) -> dict[int, UsageTotals]:
    """Settled requests and tokens per unix minute, from ``since_minute`` on; empty minutes absent."""
    since = datetime.fromtimestamp(since_minute * 60, UTC)
    async with sessions() as session:
        minute = _minute(UsageRecord.created_at, session.get_bind().dialect.name)
        rows = (await session.execute(
            select(minute, func.count(), func.coalesce(func.sum(UsageRecord.prompt_tokens), 0),
                   func.coalesce(func.sum(UsageRecord.completion_tokens), 0))
            .where(UsageRecord.created_at >= since).group_by(minute))).all()
    return {int(m): UsageTotals(int(n), int(p), int(c)) for m, n, p, c in rows}


def fill_minutes(counted: dict[int, UsageTotals], last_minute: int, count: int = 30
                 ) -> list[dict[str, Any]]:
    """api.md §9 Decision: exactly ``count`` one-minute buckets, oldest first, ending with the
    current (partial) minute ``last_minute``; a minute with no request is a bucket of zeros."""
    zero = UsageTotals(0, 0, 0)
    buckets = []
    for minute in range(last_minute - count + 1, last_minute + 1):
        totals = counted.get(minute, zero)
        buckets.append({
            "timestamp": datetime.fromtimestamp(minute * 60, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "requests": totals.requests, "prompt_tokens": totals.prompt_tokens,
            "completion_tokens": totals.completion_tokens,
            "total_tokens": totals.prompt_tokens + totals.completion_tokens,
        })
    return buckets


# --- /v1/leaderboard, /v1/network/totals ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccountEarnings:
    account_id: str  # never shown: the API shows its pseudonym
    earnings_micro_usd: int
    tokens: int
    jobs: int


@dataclass(frozen=True, slots=True)
class EarningsTotals:
    earnings_micro_usd: int
    tokens: int
    jobs: int
    active_accounts: int


def _since(window: str, now: datetime) -> datetime | None:
    span = WINDOWS[window]
    return None if span is None else now - span


def _tokens() -> ColumnElement[Any]:
    # BIGINT before adding: two INTEGER columns near their maximum would overflow on PostgreSQL.
    return cast(ProviderEarning.prompt_tokens, BigInteger) + cast(ProviderEarning.completion_tokens,
                                                                  BigInteger)


async def top_accounts(sessions: async_sessionmaker[AsyncSession], metric: Metric, window: str,
                       limit: int, now: datetime) -> list[AccountEarnings]:
    """Provider accounts by paid earnings, tokens (prompt + completion) or jobs in the window,
    best first; ties broken by the other two metrics, then by account id (a stable order)."""
    earned = func.sum(ProviderEarning.amount_micro_usd)
    tokens = func.sum(_tokens())
    jobs = func.count()
    order = {"earnings": [earned, tokens, jobs], "tokens": [tokens, earned, jobs],
             "jobs": [jobs, earned, tokens]}[metric]
    query = select(ProviderEarning.account_id, earned, tokens, jobs).group_by(ProviderEarning.account_id)
    since = _since(window, now)
    if since is not None:
        query = query.where(ProviderEarning.created_at >= since)
    query = query.order_by(*(column.desc() for column in order), ProviderEarning.account_id).limit(limit)
    async with sessions() as session:
        rows = (await session.execute(query)).all()
    return [AccountEarnings(str(a), int(e or 0), int(t or 0), int(j)) for a, e, t, j in rows]


async def earnings_totals(sessions: async_sessionmaker[AsyncSession], window: str,
                          now: datetime) -> EarningsTotals:
    """What all provider accounts earned in the window, and how many earned anything."""
    query = select(func.coalesce(func.sum(ProviderEarning.amount_micro_usd), 0),
                   func.coalesce(func.sum(_tokens()), 0), func.count(),
                   func.count(distinct(ProviderEarning.account_id)))
    since = _since(window, now)
    if since is not None:
        query = query.where(ProviderEarning.created_at >= since)
    async with sessions() as session:
        earned, tokens, jobs, accounts = (await session.execute(query)).one()
    return EarningsTotals(int(earned), int(tokens), int(jobs), int(accounts))


# --- pseudonyms -----------------------------------------------------------------------------


async def shared_secret(sessions: async_sessionmaker[AsyncSession], name: str) -> bytes:
    """The secret ``name`` every process on this database uses, made by the first to ask. Two
    processes making it at once both insert; the primary key keeps the first, and both read it."""
    query = select(CoordinatorSecret.value).where(CoordinatorSecret.name == name)
    async with sessions() as session:
        value = (await session.execute(query)).scalar_one_or_none()
    if value is None:
        try:
            async with sessions.begin() as session:
                session.add(CoordinatorSecret(name=name, value=secrets.token_hex(32),
                                              created_at=datetime.now(UTC)))
        except IntegrityError:
            pass  # another process made it first: its value stands
        async with sessions() as session:
            value = (await session.execute(query)).scalar_one()
    return bytes.fromhex(value)


ADJECTIVES = (
    "amber", "ancient", "azure", "bold", "brave", "breezy", "bright", "calm", "clever", "cosmic",
    "crimson", "curious", "dapper", "daring", "dusty", "eager", "electric", "emerald", "fancy",
    "fearless", "fluffy", "frosty", "gentle", "gilded", "golden", "happy", "hidden", "humble",
    "icy", "jolly", "keen", "lively", "lucky", "lunar", "mellow", "mighty", "misty", "nimble",
    "noble", "olive", "patient", "plucky", "polar", "proud", "quick", "quiet", "rapid", "rosy",
    "rustic", "scarlet", "serene", "silent", "silver", "sleepy", "snowy", "solar", "steady",
    "stormy", "sunny", "swift", "tidy", "velvet", "witty", "zesty",
)
ANIMALS = (
    "albatross", "alpaca", "badger", "beaver", "bison", "bobcat", "buffalo", "camel", "caribou",
    "cheetah", "condor", "cougar", "coyote", "crane", "dingo", "dolphin", "donkey", "eagle",
    "falcon", "ferret", "finch", "fox", "gazelle", "gecko", "gibbon", "giraffe", "heron", "hippo",
    "ibex", "iguana", "jackal", "jaguar", "koala", "lemur", "leopard", "llama", "lynx", "marmot",
    "meerkat", "mongoose", "moose", "narwhal", "ocelot", "octopus", "orca", "osprey", "otter",
    "owl", "panda", "panther", "pelican", "penguin", "puffin", "quokka", "raccoon", "raven",
    "salmon", "seal", "sparrow", "tapir", "tiger", "toucan", "walrus", "wombat",
)


def pseudonym(secret: bytes, account_id: str) -> str:
    """``adjective-animal-NNNN`` from HMAC-SHA256(secret, account id) (api.md §9 Decision): stable
    for an account on every process sharing the secret, and not computable from a known account
    id without it. 64 × 64 × 10 000 names: two accounts rarely share one."""
    digest = hmac.new(secret, account_id.encode("utf-8"), hashlib.sha256).digest()
    adjective = ADJECTIVES[int.from_bytes(digest[0:4], "big") % len(ADJECTIVES)]
    animal = ANIMALS[int.from_bytes(digest[4:8], "big") % len(ANIMALS)]
    return f"{adjective}-{animal}-{int.from_bytes(digest[8:16], 'big') % 10_000:04d}"
