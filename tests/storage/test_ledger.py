"""The micro-USD ledger on real SQLite (a file, WAL) and PostgreSQL: conditional debits, the min
rule, idempotent (kind, reference), concurrency, and `darkbloom admin audit`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.coordinator.store import ledger
from darkbloom.coordinator.store.credentials import ensure_account
from darkbloom.coordinator.store.db import make_engine, make_sessionmaker
from darkbloom.coordinator.store.tables import Account, Balance, LedgerEntry

Sessions = async_sessionmaker[AsyncSession]


async def _account(sessions: Sessions, account_id: str = "alice") -> str:
    async with sessions.begin() as session:
        await ensure_account(session, account_id)
    return account_id


async def _ledger_sums(sessions: Sessions, account_id: str) -> tuple[int, int, int]:
    async with sessions() as session:
        total, withdrawable, rows = (await session.execute(select(
            func.coalesce(func.sum(LedgerEntry.amount_micro_usd), 0),
            func.coalesce(func.sum(LedgerEntry.withdrawable_delta_micro_usd), 0),
            func.count()).where(LedgerEntry.account_id == account_id))).one()
    return int(total), int(withdrawable), int(rows)


async def test_credits_debits_and_the_min_rule(sessions: Sessions) -> None:
    alice = await _account(sessions)
    assert await ledger.balance(sessions, alice) == ledger.Balances(0, 0)
    await ledger.credit(sessions, alice, 1_000, "admin_credit", "grant-1", withdrawable=False, actor="adm")
    await ledger.credit(sessions, alice, 500, "payout", "req-1", withdrawable=True, request_id="req-1")
    assert await ledger.balance(sessions, alice) == ledger.Balances(1_500, 500)
    # Spending takes non-withdrawable money first: withdrawable = min(withdrawable, balance).
    spent = await ledger.debit(sessions, alice, 1_200, "reserve", "req-2", request_id="req-2")
    assert (spent.amount_micro_usd, spent.withdrawable_delta_micro_usd, spent.balance_after_micro_usd) \
        == (-1_200, -200, 300)
    assert await ledger.balance(sessions, alice) == ledger.Balances(300, 300)
    with pytest.raises(ledger.InsufficientFunds):
        await ledger.debit(sessions, alice, 301, "reserve", "req-3")
    await ledger.credit(sessions, alice, 100, "refund", "req-2", withdrawable=False)
    with pytest.raises(ledger.InsufficientFunds):  # a withdrawal needs withdrawable money
        await ledger.debit(sessions, alice, 301, "stripe_payout", "stripe_withdraw:1")
    out = await ledger.debit(sessions, alice, 300, "stripe_payout", "stripe_withdraw:1")
    assert out.withdrawable_delta_micro_usd == -300
    assert await ledger.balance(sessions, alice) == ledger.Balances(100, 0)
    assert await _ledger_sums(sessions, alice) == (100, 0, 5)  # failed debits wrote nothing
    page = await ledger.entries(sessions, alice, limit=3)
    assert [e.kind for e in page] == ["stripe_payout", "refund", "reserve"]
    older = await ledger.entries(sessions, alice, limit=3, before=page[-1].id)
    assert [(e.kind, e.actor) for e in older] == [("payout", "system"), ("admin_credit", "adm")]
    assert await ledger.audit(sessions) == []


async def test_platform_account_is_made_on_demand(sessions: Sessions) -> None:
    await ledger.credit(sessions, ledger.PLATFORM_ACCOUNT_ID, 7, "platform_fee", "req-9", withdrawable=False)
    async with sessions() as session:
        assert await session.get(Account, ledger.PLATFORM_ACCOUNT_ID) is not None
    assert await ledger.balance(sessions, ledger.PLATFORM_ACCOUNT_ID) == ledger.Balances(7, 0)


async def test_bad_movements_are_refused(sessions: Sessions) -> None:
    alice = await _account(sessions)
    for amount in (0, -5, True, 1.5):
        with pytest.raises(ValueError, match="positive integer"):
            await ledger.credit(sessions, alice, amount, "admin_credit", "x", withdrawable=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a credit kind"):
        await ledger.credit(sessions, alice, 1, "reserve", "x", withdrawable=False)
    with pytest.raises(ValueError, match="not a debit kind"):
        await ledger.debit(sessions, alice, 1, "refund", "x")
    with pytest.raises(ValueError, match="are withdrawable"):
        await ledger.credit(sessions, alice, 1, "payout", "x", withdrawable=False)
    with pytest.raises(ValueError, match="reference"):
        await ledger.credit(sessions, alice, 1, "admin_credit", "r" * 201, withdrawable=False)
    assert await _ledger_sums(sessions, alice) == (0, 0, 0)


async def test_a_repeated_kind_and_reference_changes_nothing(sessions: Sessions) -> None:
    alice, bob = await _account(sessions), await _account(sessions, "bob")
    first = await ledger.credit(sessions, alice, 10_000, "stripe_deposit", "stripe:cs_1", withdrawable=False)
    again = await ledger.credit(sessions, alice, 10_000, "stripe_deposit", "stripe:cs_1", withdrawable=False)
    assert not first.replayed and again.replayed and again.id == first.id
    reserve = await ledger.debit(sessions, alice, 4_000, "reserve", "req-1")
    assert (await ledger.debit(sessions, alice, 4_000, "reserve", "req-1")).id == reserve.id
    assert await ledger.balance(sessions, alice) == ledger.Balances(6_000, 0)
    with pytest.raises(ledger.ReferenceConflict):  # the same key for another movement is a bug
        await ledger.credit(sessions, bob, 10_000, "stripe_deposit", "stripe:cs_1", withdrawable=False)
    await ledger.credit(sessions, alice, 10_000, "invite_credit", "stripe:cs_1",  # another kind
                        withdrawable=False)
    assert await _ledger_sums(sessions, alice) == (16_000, 0, 3)


async def test_concurrent_duplicates_post_once(sessions: Sessions) -> None:
    alice = await _account(sessions)
    results = await asyncio.gather(*(ledger.credit(sessions, alice, 2_500, "admin_reward", "idem-1",
                                                   withdrawable=True) for _ in range(50)))
    assert len({r.id for r in results}) == 1 and sum(not r.replayed for r in results) == 1
    assert await ledger.balance(sessions, alice) == ledger.Balances(2_500, 2_500)
    assert await _ledger_sums(sessions, alice) == (2_500, 2_500, 1)


async def test_concurrent_duplicates_across_accounts_post_once(sessions: Sessions) -> None:
    """Different accounts take different row locks, so the unique index alone must stop this."""
    accounts = [await _account(sessions, f"acct-{i}") for i in range(8)]
    results = await asyncio.gather(*(ledger.credit(sessions, a, 1, "deposit", "dup", withdrawable=False)
                                     for a in accounts), return_exceptions=True)
    winners = [r for r in results if isinstance(r, ledger.Entry) and not r.replayed]
    assert len(winners) == 1
    assert all(isinstance(r, ledger.ReferenceConflict) for r in results if r is not winners[0])
    assert await ledger.audit(sessions) == []


async def test_a_thousand_concurrent_reservations_never_overdraw(sessions: Sessions,
                                                                 database_url: str) -> None:
    """Two engines stand for two coordinator processes: each has its own pool (and, on SQLite, its
    own in-process queue), so only the database's own locking keeps them apart."""
    alice = await _account(sessions)
    await ledger.credit(sessions, alice, 333 * 100 + 50, "admin_credit", "seed", withdrawable=False)
    await ledger.credit(sessions, alice, 99, "admin_reward", "seed-w", withdrawable=True)
    other_engine = make_engine(database_url)
    pools = (sessions, make_sessionmaker(other_engine))

    async def reserve(i: int) -> bool:
        try:
            await ledger.debit(pools[i % 2], alice, 100, "reserve", f"req-{i}", request_id=f"req-{i}")
        except ledger.InsufficientFunds:
            return False
        return True

    try:
        outcomes = await asyncio.gather(*(reserve(i) for i in range(1_000)))
    finally:
        await other_engine.dispose()
    assert sum(outcomes) == 334  # (33_300 + 50 + 99) // 100
    assert await ledger.balance(sessions, alice) == ledger.Balances(49, 49)
    assert await _ledger_sums(sessions, alice) == (49, 49, 2 + 334)
    async with sessions() as session:
        lowest = (await session.execute(select(func.min(LedgerEntry.balance_after_micro_usd)))).scalar_one()
    assert lowest == 49
    assert await ledger.audit(sessions) == []


async def test_audit_finds_a_tampered_cache_and_a_broken_chain(sessions: Sessions) -> None:
    alice, bob = await _account(sessions), await _account(sessions, "bob")
    await ledger.credit(sessions, alice, 1_000, "admin_credit", "a", withdrawable=False)
    await ledger.credit(sessions, bob, 1_000, "admin_reward", "b", withdrawable=True)
    await ledger.debit(sessions, bob, 10, "admin_debit", "c")
    assert await ledger.audit(sessions) == []
    async with sessions.begin() as session:
        await session.execute(update(Balance).where(Balance.account_id == alice)
                              .values(balance_micro_usd=Balance.balance_micro_usd + 1))
        await session.execute(update(LedgerEntry).where(LedgerEntry.reference == "b")
                              .values(balance_after_micro_usd=999))
    assert await ledger.audit(sessions) == [
        ledger.Mismatch("alice", 1_001, 1_000, 0, 0, 0),
        ledger.Mismatch("bob", 990, 990, 990, 990, 1),
    ]


def _audit_cli(database_url: str, state_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DARKBLOOM_STATE_DIR": str(state_dir), "DARKBLOOM_DATABASE_URL": database_url}
    return subprocess.run([sys.executable, "-m", "darkbloom", "admin", "audit"], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


async def test_admin_audit_cli(sessions: Sessions, database_url: str, tmp_path: Path) -> None:
    alice = await _account(sessions)
    await ledger.credit(sessions, alice, 5_000_000, "admin_credit", "grant", withdrawable=False)
    await ledger.debit(sessions, alice, 1_500, "reserve", "req-1")
    clean = await asyncio.to_thread(_audit_cli, database_url, tmp_path / "cli")
    assert clean.returncode == 0, clean.stderr
    assert "agree" in clean.stdout
    async with sessions.begin() as session:
        await session.execute(update(Balance).values(balance_micro_usd=7_000_000))
    tampered = await asyncio.to_thread(_audit_cli, database_url, tmp_path / "cli")
    assert tampered.returncode == 1
    assert "alice" in tampered.stdout and "7.000000" in tampered.stdout and "4.998500" in tampered.stdout


def test_admin_audit_refuses_a_database_without_a_ledger(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    result = _audit_cli(url, tmp_path / "cli")
    assert result.returncode == 2 and "cannot read the ledger" in result.stderr
