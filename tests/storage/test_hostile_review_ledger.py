"""Hostile review of the ledger (issue 9): the audit must not cry wolf while money moves, amounts
beyond what a BIGINT balance can hold are refused before the database sees them, and the audit
catches each single-sided tamper. On real SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import delete, insert, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.coordinator.store import ledger
from darkbloom.coordinator.store.credentials import ensure_account, now
from darkbloom.coordinator.store.tables import Balance, LedgerEntry

Sessions = async_sessionmaker[AsyncSession]
BIGINT_MAX = 2**63 - 1


async def _accounts(sessions: Sessions, *names: str) -> None:
    async with sessions.begin() as session:
        for name in names:
            await ensure_account(session, name)


async def test_audit_sees_one_snapshot_while_money_moves(sessions: Sessions) -> None:
    """`admin audit` on a live coordinator: its reads must come from one snapshot, or a movement
    committed between reading the ledger and reading the balances is reported as a mismatch."""
    names = [f"acct{i}" for i in range(4)]
    await _accounts(sessions, *names)
    stop = asyncio.Event()

    async def move(name: str) -> None:
        i = 0
        while not stop.is_set():
            await ledger.credit(sessions, name, 1_000, "admin_credit", f"{name}-{i}", withdrawable=False)
            await ledger.debit(sessions, name, 300, "reserve", f"{name}-{i}")
            i += 1

    movers = [asyncio.ensure_future(move(name)) for name in names]
    try:
        reports = []
        for _ in range(40):
            reports.append(await ledger.audit(sessions))
            await asyncio.sleep(0)
    finally:
        stop.set()
        await asyncio.gather(*movers)
    assert [r for r in reports if r] == []
    assert await ledger.audit(sessions) == []


@pytest.mark.parametrize("amount", [BIGINT_MAX, BIGINT_MAX + 1, 10**30])
async def test_an_amount_beyond_bigint_is_refused_up_front(sessions: Sessions, amount: int) -> None:
    await _accounts(sessions, "alice")
    with pytest.raises(ValueError, match="amount"):
        await ledger.credit(sessions, "alice", amount, "admin_credit", "huge", withdrawable=False)
    with pytest.raises(ValueError, match="amount"):
        await ledger.debit(sessions, "alice", amount, "admin_debit", "huge")
    assert await ledger.balance(sessions, "alice") == ledger.Balances(0, 0)


async def test_a_balance_cannot_be_credited_past_the_limit(sessions: Sessions) -> None:
    """Credits that would carry a balance past what BIGINT holds fail cleanly, writing nothing (on
    SQLite the sum would silently turn into a float; on PostgreSQL it is a 5xx-shaped DataError)."""
    await _accounts(sessions, "alice")
    await ledger.credit(sessions, "alice", ledger.MAX_AMOUNT_MICRO_USD, "admin_credit", "a",
                        withdrawable=False)
    for i in range(BIGINT_MAX // ledger.MAX_AMOUNT_MICRO_USD + 1):
        try:
            await ledger.credit(sessions, "alice", ledger.MAX_AMOUNT_MICRO_USD, "admin_credit", f"b{i}",
                                withdrawable=False)
        except ledger.BalanceLimit:
            break
    else:
        pytest.fail("a balance grew past BIGINT")
    got = await ledger.balance(sessions, "alice")
    assert isinstance(got.balance_micro_usd, int) and got.balance_micro_usd <= ledger.MAX_BALANCE_MICRO_USD
    assert await ledger.audit(sessions) == []


async def test_audit_catches_each_one_sided_tamper(sessions: Sessions) -> None:
    await _accounts(sessions, "a", "b", "c", "d")
    for name in "abcd":
        await ledger.credit(sessions, name, 1_000, "admin_reward", f"r-{name}", withdrawable=True)
        await ledger.debit(sessions, name, 100, "reserve", f"d-{name}")
    assert await ledger.audit(sessions) == []
    async with sessions.begin() as session:
        # a: only the cached withdrawable changed.
        await session.execute(update(Balance).where(Balance.account_id == "a")
                              .values(withdrawable_micro_usd=Balance.withdrawable_micro_usd - 1))
        # b: a ledger row deleted.
        await session.execute(delete(LedgerEntry).where(LedgerEntry.reference == "d-b"))
        # c: a row inserted without touching the balance.
        await session.execute(insert(LedgerEntry).values(
            account_id="c", kind="admin_credit", amount_micro_usd=5, withdrawable_delta_micro_usd=0,
            balance_after_micro_usd=905, reference="forged", actor="x", created_at=now()))
        # d: a row's withdrawable delta rewritten, nothing else.
        await session.execute(update(LedgerEntry).where(LedgerEntry.reference == "r-d")
                              .values(withdrawable_delta_micro_usd=999))
    assert {m.account_id for m in await ledger.audit(sessions)} == {"a", "b", "c", "d"}
