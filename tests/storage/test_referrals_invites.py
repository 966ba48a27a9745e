"""Referrals, invite codes and admin grants on real SQLite (a file, WAL) and PostgreSQL: the rules of
billing.md §7, §8 and §10, and their races (the last use of a code, concurrent applies, a retried
grant). Concurrent tests use two engines, standing for two coordinator processes: each has its own
pool (and, on SQLite, its own in-process queue), so only the database's own locking keeps them apart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.coordinator.store import admin_actions, invites, ledger, referrals
from darkbloom.coordinator.store.credentials import ensure_account, now
from darkbloom.coordinator.store.db import make_engine, make_sessionmaker
from darkbloom.coordinator.store.tables import (
    AdminAction,
    InviteCode,
    InviteRedemption,
    LedgerEntry,
    Referral,
)

Sessions = async_sessionmaker[AsyncSession]
USD = 1_000_000


async def _accounts(sessions: Sessions, *names: str) -> list[str]:
    async with sessions.begin() as session:
        for name in names:
            await ensure_account(session, name)
    return list(names)


@pytest.fixture
async def two_pools(sessions: Sessions, database_url: str) -> AsyncIterator[tuple[Sessions, Sessions]]:
    engine = make_engine(database_url)
    try:
        yield sessions, make_sessionmaker(engine)
    finally:
        await engine.dispose()


async def _count(sessions: Sessions, table: type, *where: ColumnElement[bool]) -> int:
    async with sessions() as session:
        return int((await session.execute(select(func.count()).select_from(table).where(*where)))
                   .scalar_one())


# --- referral codes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "code"), [
    ("abc", "ABC"), ("  my-Code1 ", "MY-CODE1"), ("A" * 20, "A" * 20), ("a-b", "A-B"),
    ("ab", None), ("A" * 21, None), ("-abc", None), ("abc-", None), ("a_b", None), ("a b", None),
    ("ÄBC", None), ("", None), ("x" * 10_000, None), ("\ud800bc", None),
])
def test_normalise_code(text: str, code: str | None) -> None:
    assert referrals.normalise_code(text) == code


async def test_register_once_and_keep_the_code(sessions: Sessions) -> None:
    alice, bob = await _accounts(sessions, "alice", "bob")
    made = await referrals.register_code(sessions, alice, " alice-1 ")
    assert made == referrals.RegisteredCode("ALICE-1", created=True)
    # Registering again, with the same or another code, returns the code the account has.
    kept = referrals.RegisteredCode("ALICE-1", created=False)
    assert await referrals.register_code(sessions, alice, "alice-1") == kept
    assert await referrals.register_code(sessions, alice, "OTHER") == kept
    with pytest.raises(referrals.ReferralError) as taken:
        await referrals.register_code(sessions, bob, "Alice-1")
    assert taken.value.reason == "taken"
    with pytest.raises(referrals.ReferralError) as invalid:
        await referrals.register_code(sessions, bob, "-x")
    assert invalid.value.reason == "invalid"
    assert await referrals.referral_info(sessions, bob) == referrals.ReferralInfo(None, None)


async def test_apply_rules(sessions: Sessions) -> None:
    alice, bob, carol = await _accounts(sessions, "alice", "bob", "carol")
    await referrals.register_code(sessions, alice, "ALICE")
    await referrals.register_code(sessions, carol, "CAROL")
    for code, reason in (("nobody", "unknown"), ("alice", "self"), ("a", "invalid")):
        with pytest.raises(referrals.ReferralError) as refused:
            await referrals.apply_referral(sessions, alice, code)
        assert refused.value.reason == reason, code
    applied = await referrals.apply_referral(sessions, bob, " alice ")
    assert applied == referrals.AppliedReferral("ALICE", alice)
    for code in ("ALICE", "CAROL"):  # once, permanently: neither the same nor another code again
        with pytest.raises(referrals.ReferralError) as again:
            await referrals.apply_referral(sessions, bob, code)
        assert again.value.reason == "already_referred"
    assert await referrals.referrer_of(sessions, bob) == alice
    # A referred account can still become a referrer, and refer others.
    await referrals.register_code(sessions, bob, "BOB")
    await referrals.apply_referral(sessions, carol, "BOB")
    assert await referrals.referral_info(sessions, bob) == referrals.ReferralInfo("BOB", "ALICE")
    assert await referrals.referral_info(sessions, carol) == referrals.ReferralInfo("CAROL", "BOB")


async def test_stats_sum_only_referral_rewards(sessions: Sessions) -> None:
    alice, bob, carol = await _accounts(sessions, "alice", "bob", "carol")
    assert await referrals.referral_stats(sessions, alice) is None  # not a referrer
    await referrals.register_code(sessions, alice, "ALICE")
    assert await referrals.referral_stats(sessions, alice) == referrals.ReferralStats("ALICE", 0, 0, 0)
    await referrals.apply_referral(sessions, bob, "ALICE")
    await referrals.apply_referral(sessions, carol, "ALICE")
    await ledger.credit(sessions, alice, 7, "referral_reward", "req-1", withdrawable=True)
    await ledger.credit(sessions, alice, 5, "referral_reward", "req-2", withdrawable=True)
    await ledger.credit(sessions, alice, 1_000, "admin_credit", "grant", withdrawable=False)
    await ledger.credit(sessions, bob, 99, "referral_reward", "req-3", withdrawable=True)
    assert await referrals.referral_stats(sessions, alice) == referrals.ReferralStats("ALICE", 2, 12, 1_012)


async def test_concurrent_applies_exactly_one_wins(sessions: Sessions,
                                                   two_pools: tuple[Sessions, Sessions]) -> None:
    names = [f"ref{i}" for i in range(10)]
    await _accounts(sessions, "target", *names)
    for name in names:
        await referrals.register_code(sessions, name, f"CODE-{name}")
    await referrals.register_code(sessions, "target", "TARGET")

    async def apply(i: int) -> str:
        code = "TARGET" if i % 5 == 0 else f"CODE-ref{i % 10}"  # some try the account's own code
        try:
            await referrals.apply_referral(two_pools[i % 2], "target", code)
        except referrals.ReferralError as exc:
            return exc.reason
        return "applied"

    outcomes = await asyncio.gather(*(apply(i) for i in range(30)))
    assert outcomes.count("applied") == 1
    assert outcomes.count("self") == 6
    assert set(outcomes) == {"applied", "self", "already_referred"}
    assert await _count(sessions, Referral, Referral.account_id == "target") == 1


async def test_concurrent_registrations_of_one_code(sessions: Sessions,
                                                     two_pools: tuple[Sessions, Sessions]) -> None:
    names = await _accounts(sessions, *(f"acct{i}" for i in range(12)))

    async def register(i: int) -> str:
        try:
            return (await referrals.register_code(two_pools[i % 2], names[i], "POPULAR")).code
        except referrals.ReferralError as exc:
            return exc.reason

    outcomes = await asyncio.gather(*(register(i) for i in range(12)))
    assert outcomes.count("POPULAR") == 1 and outcomes.count("taken") == 11


# --- invite codes ------------------------------------------------------------------------------------


async def test_create_list_and_deactivate(sessions: Sessions) -> None:
    made = await invites.create_invite(sessions, amount_micro_usd=5 * USD, actor="adm")
    assert made.code.startswith("INV-") and len(made.code) == 12 and made.code == made.code.upper()
    assert (made.max_uses, made.used_count, made.active, made.expires_at) == (1, 0, True, None)
    soon = now() + timedelta(days=1)
    named = await invites.create_invite(sessions, amount_micro_usd=10_000, code="WELCOME", max_uses=3,
                                        expires_at=soon, actor="admin-key")
    assert named.expires_at is not None and abs(named.expires_at - soon) < timedelta(seconds=1)
    with pytest.raises(invites.InviteExists):
        await invites.create_invite(sessions, amount_micro_usd=USD, code="WELCOME", actor="adm")
    for bad in (0, 1_000 * USD + 10_000, 5_001):  # zero, over 1 000 USD, not whole cents
        with pytest.raises(ValueError):
            await invites.create_invite(sessions, amount_micro_usd=bad, actor="adm")
    with pytest.raises(ValueError):
        await invites.create_invite(sessions, amount_micro_usd=USD, max_uses=0, actor="adm")
    assert {i.code for i in await invites.list_invites(sessions)} == {made.code, "WELCOME"}
    assert await invites.deactivate_invite(sessions, "WELCOME", actor="adm")
    assert not await invites.deactivate_invite(sessions, "NOPE", actor="adm")
    listed = {i.code: i for i in await invites.list_invites(sessions)}
    assert listed["WELCOME"].active is False and listed[made.code].active is True
    actions = await admin_actions.list_actions(sessions)
    assert [(a.action, a.reference, a.actor) for a in actions] == [
        ("invite_deactivate", "WELCOME", "adm"), ("invite_create", "WELCOME", "admin-key"),
        ("invite_create", made.code, "adm")]
    assert actions[1].amount_micro_usd == 10_000 and actions[1].detail is not None
    assert actions[1].detail["max_uses"] == 3


async def test_redeem_credits_once_per_account(sessions: Sessions) -> None:
    alice, bob, carol = await _accounts(sessions, "alice", "bob", "carol")
    await invites.create_invite(sessions, amount_micro_usd=5 * USD, code="FIVE", max_uses=2, actor="adm")
    done = await invites.redeem_invite(sessions, alice, "  five ")
    assert done == invites.Redeemed("FIVE", 5 * USD, 5 * USD)
    assert await ledger.balance(sessions, alice) == ledger.Balances(5 * USD, 0)  # non-withdrawable
    async with sessions() as session:
        row = (await session.execute(select(LedgerEntry).where(LedgerEntry.account_id == alice))).scalar_one()
    assert (row.kind, row.reference) == ("invite_credit", f"invite:FIVE:{alice}")
    assert row.amount_micro_usd == 5 * USD
    with pytest.raises(invites.InviteError) as again:
        await invites.redeem_invite(sessions, alice, "FIVE")
    assert again.value.reason == "already_used"
    await invites.redeem_invite(sessions, bob, "FIVE")
    with pytest.raises(invites.InviteError) as exhausted:
        await invites.redeem_invite(sessions, carol, "FIVE")
    assert exhausted.value.reason == "exhausted"
    for text in ("NOPE", "", "x" * 500, "a b"):
        with pytest.raises(invites.InviteError) as unknown:
            await invites.redeem_invite(sessions, carol, text)
        assert unknown.value.reason == "not_found"
    assert await ledger.balance(sessions, carol) == ledger.Balances(0, 0)
    assert await _count(sessions, InviteRedemption) == 2
    assert await ledger.audit(sessions) == []


async def test_inactive_and_expired_codes(sessions: Sessions) -> None:
    (alice,) = await _accounts(sessions, "alice")
    await invites.create_invite(sessions, amount_micro_usd=USD, code="OFF", actor="adm")
    await invites.deactivate_invite(sessions, "OFF", actor="adm")
    await invites.create_invite(sessions, amount_micro_usd=USD, code="OLD", actor="adm",
                                expires_at=now() + timedelta(days=1))
    async with sessions.begin() as session:
        await session.execute(update(InviteCode).where(InviteCode.code == "OLD")
                              .values(expires_at=now() - timedelta(seconds=1)))
    for code, reason in (("OFF", "inactive"), ("OLD", "expired")):
        with pytest.raises(invites.InviteError) as refused:
            await invites.redeem_invite(sessions, alice, code)
        assert refused.value.reason == reason
    async with sessions() as session:
        used = (await session.execute(select(func.sum(InviteCode.used_count)))).scalar_one()
    assert used == 0 and await _count(sessions, LedgerEntry) == 0


@pytest.mark.parametrize("max_uses", [1, 5])
async def test_concurrent_redemptions_of_the_last_uses(sessions: Sessions, max_uses: int,
                                                      two_pools: tuple[Sessions, Sessions]) -> None:
    names = await _accounts(sessions, *(f"user{i}" for i in range(30)))
    await invites.create_invite(sessions, amount_micro_usd=USD, code="RACE", max_uses=max_uses, actor="adm")

    async def redeem(i: int) -> str:
        try:
            await invites.redeem_invite(two_pools[i % 2], names[i], "RACE")
        except invites.InviteError as exc:
            return exc.reason
        return "redeemed"

    outcomes = await asyncio.gather(*(redeem(i) for i in range(30)))
    assert outcomes.count("redeemed") == max_uses
    assert outcomes.count("exhausted") == 30 - max_uses
    async with sessions() as session:
        used = (await session.execute(select(InviteCode.used_count)
                                      .where(InviteCode.code == "RACE"))).scalar_one()
    assert used == max_uses
    assert await _count(sessions, InviteRedemption) == max_uses
    assert await _count(sessions, LedgerEntry, LedgerEntry.kind == "invite_credit") == max_uses
    assert await ledger.audit(sessions) == []


async def test_one_account_racing_itself_is_credited_once(sessions: Sessions,
                                                         two_pools: tuple[Sessions, Sessions]) -> None:
    (alice,) = await _accounts(sessions, "alice")
    await invites.create_invite(sessions, amount_micro_usd=USD, code="MANY", max_uses=100, actor="adm")

    async def redeem(i: int) -> str:
        try:
            await invites.redeem_invite(two_pools[i % 2], alice, "MANY")
        except invites.InviteError as exc:
            return exc.reason
        return "redeemed"

    outcomes = await asyncio.gather(*(redeem(i) for i in range(20)))
    assert outcomes.count("redeemed") == 1 and outcomes.count("already_used") == 19
    assert await ledger.balance(sessions, alice) == ledger.Balances(USD, 0)


# --- admin grants and the action log -----------------------------------------------------------------


async def _grant(sessions: Sessions, kind: str, account: str, amount: int, key: str,
                 note: str | None = None) -> admin_actions.Grant:
    return await admin_actions.grant(sessions, kind, account_id=account, email=f"{account}@example.com",
                                     amount_micro_usd=amount, note=note, idempotency_key=key, actor="adm-1")


async def test_grants_replays_and_conflicts(sessions: Sessions) -> None:
    alice, bob = await _accounts(sessions, "alice", "bob")
    first = await _grant(sessions, "admin_credit", alice, 5 * USD, "k-1", note="welcome")
    assert (first.balance_after_micro_usd, first.withdrawable_after_micro_usd) == (5 * USD, 0)
    assert not first.replayed
    again = await _grant(sessions, "admin_credit", alice, 5 * USD, "k-1", note="welcome")
    assert again == admin_actions.Grant(alice, "alice@example.com", 5 * USD, "welcome", 5 * USD, 0, True)
    for account, amount, note in ((alice, 6 * USD, "welcome"), (alice, 5 * USD, None),
                                  (bob, 5 * USD, "welcome")):
        with pytest.raises(admin_actions.IdempotencyConflict):
            await _grant(sessions, "admin_credit", account, amount, "k-1", note=note)
    reward = await _grant(sessions, "admin_reward", alice, 2 * USD, "k-1")  # another kind: its own key space
    assert (reward.balance_after_micro_usd, reward.withdrawable_after_micro_usd) == (7 * USD, 2 * USD)
    # A debit spends non-withdrawable money first; one it cannot cover writes nothing.
    with pytest.raises(ledger.InsufficientFunds):
        await _grant(sessions, "admin_debit", alice, 7 * USD + 1, "k-2")
    debit = await _grant(sessions, "admin_debit", alice, 6 * USD, "k-2")
    assert (debit.balance_after_micro_usd, debit.withdrawable_after_micro_usd) == (USD, USD)
    assert await ledger.balance(sessions, alice) == ledger.Balances(USD, USD)
    assert await ledger.balance(sessions, bob) == ledger.Balances(0, 0)
    async with sessions() as session:
        rows = (await session.execute(select(LedgerEntry.kind, LedgerEntry.reference, LedgerEntry.actor)
                                      .order_by(LedgerEntry.id))).all()
    assert [tuple(r) for r in rows] == [("admin_credit", "k-1", "adm-1"), ("admin_reward", "k-1", "adm-1"),
                                        ("admin_debit", "k-2", "adm-1")]
    actions = await admin_actions.list_actions(sessions)
    assert [(a.action, a.target_account_id, a.amount_micro_usd) for a in actions] == [
        ("admin_debit", alice, 6 * USD), ("admin_reward", alice, 2 * USD), ("admin_credit", alice, 5 * USD)]
    assert await ledger.audit(sessions) == []


async def test_a_key_already_used_by_a_system_movement(sessions: Sessions) -> None:
    (alice,) = await _accounts(sessions, "alice")
    await ledger.credit(sessions, alice, USD, "admin_credit", "dev-credit", withdrawable=False)
    with pytest.raises(admin_actions.IdempotencyConflict):  # same account and amount: still not ours
        await _grant(sessions, "admin_credit", alice, USD, "dev-credit")
    with pytest.raises(admin_actions.IdempotencyConflict):
        await _grant(sessions, "admin_credit", alice, 2 * USD, "dev-credit")
    assert await ledger.balance(sessions, alice) == ledger.Balances(USD, 0)


async def test_concurrent_retries_of_one_grant_move_money_once(sessions: Sessions,
                                                              two_pools: tuple[Sessions, Sessions]) -> None:
    alice, bob = await _accounts(sessions, "alice", "bob")

    async def retry(i: int) -> admin_actions.Grant | str:
        account = alice if i % 3 else bob  # a third reuse the key for another account
        try:
            return await _grant(two_pools[i % 2], "admin_reward", account, 3 * USD, "same-key")
        except admin_actions.IdempotencyConflict:
            return "conflict"

    outcomes = await asyncio.gather(*(retry(i) for i in range(24)))
    grants = [o for o in outcomes if isinstance(o, admin_actions.Grant)]
    winner = grants[0].account_id
    assert all(g.account_id == winner and g.balance_after_micro_usd == 3 * USD for g in grants)
    assert sum(not g.replayed for g in grants) == 1
    loser_count = sum(1 for i in range(24) if (alice if i % 3 else bob) != winner)
    assert outcomes.count("conflict") == loser_count
    assert await _count(sessions, LedgerEntry) == 1 and await _count(sessions, AdminAction) == 1
    assert await ledger.audit(sessions) == []


async def test_action_log_pages_and_bounds(sessions: Sessions) -> None:
    async with sessions.begin() as session:
        for i in range(7):
            await admin_actions.record_action(session, actor="adm", action="price_set", reference=f"m{i}",
                                              detail={"i": i, "text": "ünïcode"})
        await admin_actions.record_action(session, actor="adm", action="bare")
    first = await admin_actions.list_actions(sessions, limit=3)
    assert [a.action for a in first] == ["bare", "price_set", "price_set"] and first[0].detail is None
    second = await admin_actions.list_actions(sessions, limit=3, before=first[-1].id)
    assert [a.reference for a in second] == ["m4", "m3", "m2"]
    assert second[0].detail == {"i": 4, "text": "ünïcode"}
    assert len(await admin_actions.list_actions(sessions, limit=10_000)) == 8
    async with sessions.begin() as session:
        with pytest.raises(ValueError):
            await admin_actions.record_action(session, actor="adm", action="big", detail={"x": "y" * 9000})
