"""The micro-USD ledger (billing.md §0, §2, §11): every balance change is one ledger row written in
the same transaction as the ``balances`` update; debits are conditional so nothing can overdraw,
and ``(kind, reference)`` is unique so a retried movement happens once.

Each transaction's first statement is a write (the balance row upsert): the SQLite driver opens a
transaction only at the first write, so reads placed before it would run outside the transaction;
written first, the whole movement holds SQLite's single write lock (other processes wait in
``busy_timeout``). Writers in one process also queue on an asyncio lock per engine, so they wait on
the event loop in order instead of sleeping in SQLite's busy handler. On PostgreSQL
``SELECT … FOR UPDATE`` serializes writers per account.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import case, func, insert, literal, select, union_all, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from darkbloom.coordinator.store.tables import Account, Balance, LedgerEntry

PLATFORM_ACCOUNT_ID = "platform"
SYSTEM_ACTOR = "system"
MAX_REFERENCE = 200
# One movement is below 10^18 micro-USD (parse_usd's ceiling) and a balance stays within BIGINT, so
# no amount or sum ever overflows (SQLite would silently turn it into a float, PostgreSQL a 5xx).
MAX_AMOUNT_MICRO_USD = 10**18
MAX_BALANCE_MICRO_USD = 2**63 - 1

# Credit kinds and whether the credit is withdrawable (None: the caller decides), billing.md §11.
CREDIT_KINDS: dict[str, bool | None] = {
    "stripe_deposit": False, "invite_credit": False, "admin_credit": False, "refund": False,
    "deposit": False, "admin_reward": True, "payout": True, "referral_reward": True,
    "withdrawal_refund": True, "platform_fee": None, "withdrawal_fee": None,
}
# Debit kinds and whether they draw on withdrawable money (else the min rule applies).
DEBIT_KINDS: dict[str, bool] = {"reserve": False, "admin_debit": False, "stripe_payout": True,
                                "stripe_refund": False, "withdrawal_fee_refund": False}


class InsufficientFunds(Exception):
    """The account cannot cover a debit; nothing was written."""


class BalanceLimit(ValueError):
    """A credit would carry the balance past MAX_BALANCE_MICRO_USD; nothing was written."""


class ReferenceConflict(ValueError):
    """A ``(kind, reference)`` already names a different movement (another account or amount)."""


@dataclass(frozen=True, slots=True)
class Entry:
    id: int
    account_id: str
    kind: str
    amount_micro_usd: int
    withdrawable_delta_micro_usd: int
    balance_after_micro_usd: int
    reference: str
    request_id: str | None
    actor: str
    created_at: datetime
    replayed: bool = False  # True when this call found the movement already recorded


@dataclass(frozen=True, slots=True)
class Balances:
    balance_micro_usd: int
    withdrawable_micro_usd: int


@dataclass(frozen=True, slots=True)
class Mismatch:
    """An account whose cached balance disagrees with its ledger, or whose ``balance_after`` chain
    is broken (``bad_balance_after`` rows)."""

    account_id: str
    balance_micro_usd: int
    ledger_balance_micro_usd: int
    withdrawable_micro_usd: int
    ledger_withdrawable_micro_usd: int
    bad_balance_after: int


_write_locks: weakref.WeakKeyDictionary[Any, asyncio.Lock] = weakref.WeakKeyDictionary()


@contextlib.asynccontextmanager
async def transaction(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A write transaction for money; on SQLite, queued behind this process's other ledger
    writers. Its first statement must be a write (``lock`` is): see the module docstring."""
    engine = sessions.kw.get("bind")
    if isinstance(engine, AsyncEngine) and engine.dialect.name == "sqlite":
        lock_ = _write_locks.setdefault(engine.sync_engine, asyncio.Lock())
        async with lock_, sessions.begin() as session:
            yield session
        return
    async with sessions.begin() as session:
        yield session


def _entry(row: LedgerEntry, replayed: bool = False) -> Entry:
    stamp = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
    return Entry(row.id, row.account_id, row.kind, row.amount_micro_usd, row.withdrawable_delta_micro_usd,
                 row.balance_after_micro_usd, row.reference, row.request_id, row.actor, stamp, replayed)


def _check(amount: int, reference: str) -> None:
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= MAX_AMOUNT_MICRO_USD:
        raise ValueError(f"amount must be a positive integer of micro-USD up to {MAX_AMOUNT_MICRO_USD}, "
                         f"got {amount!r}")
    if not reference or len(reference) > MAX_REFERENCE:
        raise ValueError(f"reference must be 1 to {MAX_REFERENCE} characters")


async def insert_ignore(session: AsyncSession, table: Any, values: dict[str, Any]) -> None:
    """INSERT … ON CONFLICT DO NOTHING on either database."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    await session.execute(insert(table).values(**values).on_conflict_do_nothing())


async def lock(session: AsyncSession, *account_ids: str) -> dict[str, Balances]:
    """Lock the accounts' balance rows (creating empty ones) for the rest of the transaction, in
    one order (sorted ids), so transactions moving money between the same accounts never
    deadlock; returns their balances as locked. On SQLite the upsert comes first: it is the
    write that opens the transaction (see the module docstring)."""
    ids = sorted(set(account_ids))
    query = (select(Balance.account_id, Balance.balance_micro_usd, Balance.withdrawable_micro_usd)
             .where(Balance.account_id.in_(ids)).order_by(Balance.account_id).with_for_update())
    sqlite_ = session.get_bind().dialect.name == "sqlite"
    if not sqlite_:
        found = {row[0]: Balances(row[1], row[2]) for row in (await session.execute(query)).all()}
        if len(found) == len(ids):
            return found
    now = datetime.now(UTC)
    for account_id in ids:
        if account_id == PLATFORM_ACCOUNT_ID:
            await insert_ignore(session, Account, {"id": PLATFORM_ACCOUNT_ID, "name": "platform",
                                                   "created_at": now})
        await insert_ignore(session, Balance, {"account_id": account_id, "balance_micro_usd": 0,
                                               "withdrawable_micro_usd": 0, "updated_at": now})
    return {row[0]: Balances(row[1], row[2]) for row in (await session.execute(query)).all()}


async def existing(session: AsyncSession, kind: str, reference: str) -> LedgerEntry | None:
    return (await session.execute(select(LedgerEntry).where(
        LedgerEntry.kind == kind, LedgerEntry.reference == reference))).scalar_one_or_none()


def _replay(row: LedgerEntry, account_id: str, amount: int) -> Entry:
    if row.account_id != account_id or row.amount_micro_usd != amount:
        raise ReferenceConflict(f"{row.kind} {row.reference!r} is already recorded for another movement")
    return _entry(row, replayed=True)


def _withdrawable(kind: str, amount: int, asked: bool | None) -> bool:
    """Whether a credit is withdrawable (billing.md §11 fixes it per kind; ``asked`` decides where
    the kind leaves it open), or whether a debit must come out of withdrawable money."""
    if amount > 0:
        if kind not in CREDIT_KINDS:
            raise ValueError(f"{kind!r} is not a credit kind")
        fixed = CREDIT_KINDS[kind]
        if fixed is not None and asked is not None and fixed != asked:
            raise ValueError(f"{kind} credits are {'' if fixed else 'not '}withdrawable")
        return bool(fixed if fixed is not None else asked)
    if kind not in DEBIT_KINDS:
        raise ValueError(f"{kind!r} is not a debit kind")
    return DEBIT_KINDS[kind]


async def move(session: AsyncSession, account_id: str, amount: int, kind: str, reference: str, *,
               before: Balances, withdrawable: bool | None = None, request_id: str | None = None,
               actor: str = SYSTEM_ACTOR) -> LedgerEntry:
    """The movement itself, for a reference new by construction (a request's): the conditional
    balance update, and its row to write (``insert_rows`` writes a transaction's rows in one go).
    ``before`` is the account's balance as this transaction last left it. Raises
    InsufficientFunds (nothing written; the transaction stays usable)."""
    _check(abs(amount), reference)
    from_withdrawable = _withdrawable(kind, amount, withdrawable)
    now = datetime.now(UTC)
    new_balance = Balance.balance_micro_usd + amount
    stmt = update(Balance).where(Balance.account_id == account_id)
    if amount > 0:
        new_withdrawable: Any = Balance.withdrawable_micro_usd + (amount if from_withdrawable else 0)
        stmt = stmt.where(Balance.balance_micro_usd <= MAX_BALANCE_MICRO_USD - amount)
    elif from_withdrawable:
        new_withdrawable = Balance.withdrawable_micro_usd + amount
        stmt = stmt.where(Balance.withdrawable_micro_usd >= -amount)
    else:
        new_withdrawable = case((Balance.withdrawable_micro_usd > new_balance, new_balance),
                                else_=Balance.withdrawable_micro_usd)
        stmt = stmt.where(Balance.balance_micro_usd >= -amount)
    after = (await session.execute(stmt.values(
        balance_micro_usd=new_balance, withdrawable_micro_usd=new_withdrawable, updated_at=now,
    ).returning(Balance.balance_micro_usd, Balance.withdrawable_micro_usd))).one_or_none()
    if after is None and amount > 0:
        raise BalanceLimit(f"account {account_id} cannot hold {amount} more micro-USD")
    if after is None:
        raise InsufficientFunds(f"account {account_id} cannot cover {-amount} micro-USD")
    return LedgerEntry(account_id=account_id, kind=kind, amount_micro_usd=amount,
                       withdrawable_delta_micro_usd=after[1] - before.withdrawable_micro_usd,
                       balance_after_micro_usd=after[0], reference=reference,
                       request_id=request_id, actor=actor, created_at=now)


async def insert_rows(session: AsyncSession, rows: Sequence[Any]) -> None:
    """Write new ORM rows with plain INSERTs, one per table and shape, without the session's unit
    of work: the money path never reads them back in its transaction, and the unit of work costs
    more CPU than the statements themselves (docs/BENCHMARKS.md, money path)."""
    batches: dict[tuple[Any, tuple[str, ...]], list[dict[str, Any]]] = {}
    for row in rows:
        table = row.__table__
        values = {c.key: getattr(row, c.key) for c in table.columns
                  if not (getattr(row, c.key) is None and (c.primary_key or c.default is not None))}
        batches.setdefault((table, tuple(values)), []).append(values)
    for (table, _), batch in batches.items():
        await session.execute(insert(table), batch)


async def post(session: AsyncSession, account_id: str, amount: int, kind: str, reference: str, *,
               withdrawable: bool | None = None, request_id: str | None = None,
               actor: str = SYSTEM_ACTOR) -> Entry:
    """Apply a signed ``amount`` of ``kind`` inside a transaction that has ``lock``ed the account,
    and write its row. A credit is withdrawable as billing.md §11 fixes per kind (``withdrawable``
    decides where the kind leaves it open); a debit of a withdrawal kind must come out of
    withdrawable money, any other debit leaves withdrawable by the min rule. Raises
    InsufficientFunds (nothing written; the transaction stays usable) when a debit cannot be
    covered. A repeated ``(kind, reference)`` changes nothing and returns the recorded row."""
    _check(abs(amount), reference)
    _withdrawable(kind, amount, withdrawable)
    if (row := await existing(session, kind, reference)) is not None:
        return _replay(row, account_id, amount)
    before = (await session.execute(select(Balance.balance_micro_usd, Balance.withdrawable_micro_usd)
                                    .where(Balance.account_id == account_id))).one()
    entry = await move(session, account_id, amount, kind, reference, before=Balances(before[0], before[1]),
                       withdrawable=withdrawable, request_id=request_id, actor=actor)
    session.add(entry)
    await session.flush()
    return _entry(entry)


async def _post(sessions: async_sessionmaker[AsyncSession], account_id: str, amount: int, kind: str,
                reference: str, request_id: str | None, actor: str, *, withdrawable: bool | None) -> Entry:
    """One movement in its own transaction."""
    try:
        async with transaction(sessions) as session:
            await lock(session, account_id)
            return await post(session, account_id, amount, kind, reference, withdrawable=withdrawable,
                              request_id=request_id, actor=actor)
    except IntegrityError:
        # A concurrent duplicate on another account's row lock won the unique (kind, reference).
        async with sessions() as session:
            if (row := await existing(session, kind, reference)) is None:
                raise
            return _replay(row, account_id, amount)


async def credit(sessions: async_sessionmaker[AsyncSession], account_id: str, amount: int, kind: str,
                 reference: str, *, withdrawable: bool, request_id: str | None = None,
                 actor: str = SYSTEM_ACTOR) -> Entry:
    """Add ``amount`` micro-USD (withdrawable or not, as billing.md §11 fixes per kind). A repeated
    ``(kind, reference)`` changes nothing and returns the recorded entry with ``replayed=True``."""
    _check(amount, reference)
    fixed = CREDIT_KINDS.get(kind)
    if kind in CREDIT_KINDS and fixed is not None and fixed != withdrawable:
        raise ValueError(f"{kind} credits are {'' if fixed else 'not '}withdrawable")
    return await _post(sessions, account_id, amount, kind, reference, request_id, actor,
                       withdrawable=withdrawable)


async def debit(sessions: async_sessionmaker[AsyncSession], account_id: str, amount: int, kind: str,
                reference: str, *, request_id: str | None = None, actor: str = SYSTEM_ACTOR) -> Entry:
    """Take ``amount`` micro-USD only if the account has it (withdrawable money for a withdrawal),
    else raise InsufficientFunds with nothing written. Idempotent like ``credit``."""
    _check(amount, reference)
    return await _post(sessions, account_id, -amount, kind, reference, request_id, actor,
                       withdrawable=None)


async def balance(sessions: async_sessionmaker[AsyncSession], account_id: str) -> Balances:
    """The cached balance; an account that never moved money has zero."""
    async with sessions() as session:
        row = (await session.execute(select(Balance.balance_micro_usd, Balance.withdrawable_micro_usd)
                                     .where(Balance.account_id == account_id))).one_or_none()
    return Balances(row[0], row[1]) if row else Balances(0, 0)


async def entries(sessions: async_sessionmaker[AsyncSession], account_id: str, limit: int = 50,
                  before: int | None = None) -> list[Entry]:
    """Newest first; ``before`` is the id of the last entry of the previous page."""
    query = select(LedgerEntry).where(LedgerEntry.account_id == account_id)
    if before is not None:
        query = query.where(LedgerEntry.id < before)
    async with sessions() as session:
        rows = (await session.execute(query.order_by(LedgerEntry.id.desc())
                                      .limit(max(1, min(limit, 500))))).scalars().all()
    return [_entry(row) for row in rows]


async def audit(sessions: async_sessionmaker[AsyncSession]) -> list[Mismatch]:
    """Recompute every balance from the ledger and compare with the cache (reads only). Within an
    account rows are written under its lock, so ids order them and each ``balance_after`` must equal
    the running sum. One statement, so one snapshot: money moving meanwhile is not a mismatch."""
    running = func.sum(LedgerEntry.amount_micro_usd).over(partition_by=LedgerEntry.account_id,
                                                          order_by=LedgerEntry.id)
    zero = literal(0)
    rows = union_all(
        select(LedgerEntry.account_id.label("account_id"), zero.label("cached"), zero.label("cached_w"),
               LedgerEntry.amount_micro_usd.label("amount"),
               LedgerEntry.withdrawable_delta_micro_usd.label("delta"),
               case((LedgerEntry.balance_after_micro_usd != running, 1), else_=0).label("bad")),
        select(Balance.account_id, Balance.balance_micro_usd, Balance.withdrawable_micro_usd,
               zero, zero, zero),
    ).subquery()
    totals = [func.coalesce(func.sum(column), 0) for column in
              (rows.c.cached, rows.c.amount, rows.c.cached_w, rows.c.delta, rows.c.bad)]
    async with sessions() as session:
        result = (await session.execute(select(rows.c.account_id, *totals)
                                        .group_by(rows.c.account_id))).all()
    mismatches = []
    for account_id, *sums in sorted(result, key=lambda row: str(row[0])):
        have, ledger_sum, have_w, ledger_w, bad = (int(value) for value in sums)
        if have != ledger_sum or have_w != ledger_w or bad:
            mismatches.append(Mismatch(account_id, have, ledger_sum, have_w, ledger_w, bad))
    return mismatches
