"""Hostile review of the Stripe, invite and admin-grant stores (issue 9) on real SQLite and
PostgreSQL: each finding's test failed before its fix (the docstring says what went wrong); the
rest pin down what already held under attack. Every test ends with a clean ledger audit."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.coordinator.payments import CENT_MICRO_USD, INSTANT_FEE_BPS, webhooks, withdrawal_amounts
from darkbloom.coordinator.payments.stripe_gateway import GatewayError
from darkbloom.coordinator.store import admin_actions, invites, ledger
from darkbloom.coordinator.store import stripe as store
from darkbloom.coordinator.store.credentials import ensure_account

Sessions = async_sessionmaker[AsyncSession]
SECRET = "whsec_hostile_checkout"
CONNECT_SECRET = "whsec_hostile_connect"


@pytest.fixture
async def db(sessions: Sessions) -> AsyncIterator[Sessions]:
    async with sessions.begin() as session:
        for account in ("alice", "bob", "carol"):
            await ensure_account(session, account)
    yield sessions
    assert await ledger.audit(sessions) == []


def _event(kind: str, obj: dict[str, Any], event_id: str, account: str | None = None) -> bytes:
    body: dict[str, Any] = {"id": event_id, "object": "event", "type": kind, "created": int(time.time()),
                            "data": {"object": obj}}
    if account:
        body["account"] = account
    return json.dumps(body).encode()


async def _deliver(sessions: Sessions, body: bytes, *, connect: bool = False,
                   **options: Any) -> store.Outcome:
    secret = CONNECT_SECRET if connect else SECRET
    header = webhooks.sign(body, secret, int(time.time()))
    return await webhooks.receive(sessions, "connect" if connect else "checkout", body, header, secret,
                                  **options)


async def _fund(sessions: Sessions, account: str, amount: int) -> None:
    await ledger.credit(sessions, account, amount, "admin_reward", f"hostile-fund-{account}-{amount}",
                        withdrawable=True, actor="test")


async def _withdrawal(sessions: Sessions, account: str, stripe_account: str, gross: int,
                      method: str = "standard", transfer: str | None = None,
                      payout: str | None = None) -> store.Withdrawal:
    amounts = withdrawal_amounts(gross, method)
    made = await store.begin_withdrawal(sessions, account, stripe_account, gross=amounts.gross,
                                        fee=amounts.fee, net=amounts.net, method=method)
    if transfer:
        await store.mark_transferred(sessions, made.id, transfer)
    if payout:
        await store.record_payout(sessions, made.id, payout_id=payout)
    return made


# --- Connect: failed payouts and reversed transfers -----------------------------------------------------


async def test_a_failed_payout_reverses_its_transfer_before_any_refund(db: Sessions) -> None:
    """Finding (high): a failed payout leaves the money in the user's Stripe balance; refunding
    it to darkbloom as well paid twice. The refund now waits for the transfer's reversal."""
    await _fund(db, "alice", 30_000_000)
    await store.save_connect(db, "alice", "acct_a", "US")
    await _withdrawal(db, "alice", "acct_a", 10_000_000, "instant", "tr_1", "po_1")
    reversed_: list[str] = []

    async def reverse(withdrawal: store.Withdrawal) -> None:
        now = await store.get_withdrawal(db, withdrawal.id)
        assert now is not None and now.refunded is False  # reversed first, refunded after
        reversed_.append(str(withdrawal.transfer_id))

    failed = _event("payout.failed", {"id": "po_1", "object": "payout"}, "evt_pf1", account="acct_a")
    assert (await _deliver(db, failed, connect=True, reverse_transfer=reverse)).result == "refunded"
    assert reversed_ == ["tr_1"]
    assert await ledger.balance(db, "alice") == ledger.Balances(30_000_000, 30_000_000)
    # Already refunded: nothing is reversed again.
    again = _event("payout.canceled", {"id": "po_1", "object": "payout"}, "evt_pc1", account="acct_a")
    assert (await _deliver(db, again, connect=True, reverse_transfer=reverse)).result == "already_refunded"
    assert reversed_ == ["tr_1"]

    # Stripe refuses the reversal: no refund, the event is settled, the row says why.
    second = await _withdrawal(db, "alice", "acct_a", 5_000_000, "standard", "tr_2", "po_2")

    async def refuse(withdrawal: store.Withdrawal) -> None:
        raise GatewayError("Stripe answered 400 (insufficient_funds)")

    failed = _event("payout.failed", {"id": "po_2", "object": "payout"}, "evt_pf2", account="acct_a")
    assert (await _deliver(db, failed, connect=True, reverse_transfer=refuse)).result == "reversal_refused"
    assert await store.event_recorded(db, "evt_pf2") == "reversal_refused"
    row = await store.get_withdrawal(db, second.id)
    assert row is not None and (row.status, row.refunded) == ("failed", False)
    assert await ledger.balance(db, "alice") == ledger.Balances(25_000_000, 25_000_000)

    # Stripe unreachable: nothing recorded, so Stripe's redelivery tries again.
    third = await _withdrawal(db, "alice", "acct_a", 2_000_000, "standard", "tr_3", "po_3")

    async def unreachable(withdrawal: store.Withdrawal) -> None:
        raise GatewayError("could not reach Stripe", ambiguous=True)

    failed = _event("payout.failed", {"id": "po_3", "object": "payout"}, "evt_pf3", account="acct_a")
    with pytest.raises(GatewayError):
        await _deliver(db, failed, connect=True, reverse_transfer=unreachable)
    assert await store.event_recorded(db, "evt_pf3") is None
    assert (await _deliver(db, failed, connect=True, reverse_transfer=reverse)).result == "refunded"
    assert reversed_ == ["tr_1", "tr_3"]
    row = await store.get_withdrawal(db, third.id)
    assert row is not None and row.refunded
    assert await ledger.balance(db, "alice") == ledger.Balances(25_000_000, 25_000_000)


async def test_concurrent_payout_failures_reverse_and_refund_once(db: Sessions) -> None:
    await _fund(db, "bob", 10_000_000)
    await store.save_connect(db, "bob", "acct_b", "US")
    await _withdrawal(db, "bob", "acct_b", 10_000_000, "instant", "tr_b", "po_b")
    calls: list[str] = []

    async def reverse(withdrawal: store.Withdrawal) -> None:
        calls.append(withdrawal.id)
        await asyncio.sleep(0)

    bodies = [_event("payout.failed", {"id": "po_b"}, f"evt_b{i % 3}", account="acct_b") for i in range(9)]
    outcomes = await asyncio.gather(*(_deliver(db, body, connect=True, reverse_transfer=reverse)
                                      for body in bodies))
    results = [o.result for o in outcomes]
    assert results.count("refunded") == 1 and set(results) <= {"refunded", "already_refunded", "duplicate"}
    assert calls  # reversal is idempotent at Stripe (wd-rv-<id>): several calls are one reversal
    assert await ledger.balance(db, "bob") == ledger.Balances(10_000_000, 10_000_000)
    assert (await ledger.balance(db, ledger.PLATFORM_ACCOUNT_ID)).balance_micro_usd == 0


async def test_a_partial_transfer_reversal_is_not_a_refund(db: Sessions) -> None:
    """Finding (medium): a partial ``transfer.reversed`` refunded the whole withdrawal."""
    await _fund(db, "carol", 20_000_000)
    await store.save_connect(db, "carol", "acct_c", "US")
    made = await _withdrawal(db, "carol", "acct_c", 20_000_000, "standard", "tr_c", "po_c")
    partial = {"id": "tr_c", "object": "transfer", "amount": 2000, "amount_reversed": 1,
               "reversed": False, "destination": "acct_c"}
    assert (await _deliver(db, _event("transfer.reversed", partial, "evt_tp"))).result == "partial_reversal"
    assert await ledger.balance(db, "carol") == ledger.Balances(0, 0)
    full = dict(partial, amount_reversed=2000, reversed=True)
    assert (await _deliver(db, _event("transfer.reversed", full, "evt_tf"))).result == "refunded"
    row = await store.get_withdrawal(db, made.id)
    assert row is not None and row.refunded and row.status == "failed"
    assert await ledger.balance(db, "carol") == ledger.Balances(20_000_000, 20_000_000)


async def test_concurrent_withdrawals_never_overdraw_or_spend_deposits(db: Sessions) -> None:
    await _fund(db, "alice", 10_000_000)
    await ledger.credit(db, "alice", 50_000_000, "stripe_deposit", "stripe:cs_hostile", withdrawable=False)
    await store.save_connect(db, "alice", "acct_a", "US")

    async def attempt() -> bool:
        try:
            await _withdrawal(db, "alice", "acct_a", 3_000_000)
        except ledger.InsufficientFunds:
            return False
        return True

    done = await asyncio.gather(*(attempt() for _ in range(12)))
    assert sum(done) == 3  # 3 × $3 of the $10 withdrawable; the $50 deposit is not withdrawable
    assert await ledger.balance(db, "alice") == ledger.Balances(51_000_000, 1_000_000)


def test_the_instant_fee_never_rounds_in_the_users_favour() -> None:
    for cents in (*range(100, 5_000), 3_335, 99_999_999, 10**9 + 7):
        gross = cents * CENT_MICRO_USD
        amounts = withdrawal_amounts(gross, "instant")
        assert amounts.gross == amounts.fee + amounts.net and amounts.net % CENT_MICRO_USD == 0
        assert amounts.fee * 10_000 >= gross * INSTANT_FEE_BPS and amounts.fee >= 500_000
        assert withdrawal_amounts(gross, "standard").fee == 0


# --- Checkout: a refund that overtakes its payment ------------------------------------------------------


async def test_a_refund_before_its_payment_is_retried_not_dropped(db: Sessions) -> None:
    """Finding (medium): a ``charge.refunded`` delivered before the payment's completion was
    settled as ``unknown_payment``; the completion then credited everything, refund lost."""
    made = await store.create_checkout(db, "alice", 8_000_000, None)
    await store.attach_stripe_session(db, made.id, "cs_early")
    charge = {"id": "ch_early", "object": "charge", "payment_intent": "pi_early", "amount_refunded": 800,
              "metadata": {"billing_session_id": made.id}}
    refund = _event("charge.refunded", charge, "evt_refund_early")
    with pytest.raises(store.PaymentNotCredited):
        await _deliver(db, refund)
    assert await store.event_recorded(db, "evt_refund_early") is None
    paid = {"id": "cs_early", "object": "checkout.session", "status": "complete", "payment_status": "paid",
            "amount_total": 800, "currency": "usd", "payment_intent": "pi_early",
            "metadata": {"billing_session_id": made.id}}
    completed = _event("checkout.session.completed", paid, "evt_paid_late")
    assert (await _deliver(db, completed)).result == "credited"
    assert (await _deliver(db, refund)).result == "debited"
    assert await ledger.balance(db, "alice") == ledger.Balances(0, 0)
    # Another account's session named in a refund's metadata, or a session we never opened: 200s.
    stray = dict(charge, id="ch_stray", payment_intent="pi_stray", metadata={"billing_session_id": "bs_nope"})
    assert (await _deliver(db, _event("charge.refunded", stray, "evt_stray"))).result == "unknown_payment"


# --- Invite codes and admin grants -------------------------------------------------------------------


async def test_an_invite_expiry_keeps_its_instant_whatever_the_offset(db: Sessions) -> None:
    """Finding (medium, SQLite): an offset ``expires_at`` was stored as wall-clock time and read
    back as UTC, moving the expiry by the offset."""
    east, west = timezone(timedelta(hours=5)), timezone(timedelta(hours=-8))
    instant = datetime.now(UTC) + timedelta(seconds=1)
    made = await invites.create_invite(db, amount_micro_usd=1_000_000, actor="admin-key", code="TZ-EAST",
                                       expires_at=instant.astimezone(east))
    late = await invites.create_invite(db, amount_micro_usd=1_000_000, actor="admin-key", code="TZ-WEST",
                                       expires_at=(instant + timedelta(hours=1)).astimezone(west))
    listed = {info.code: info for info in await invites.list_invites(db)}
    assert listed[made.code].expires_at == instant
    assert listed[late.code].expires_at == instant + timedelta(hours=1)
    await asyncio.sleep(max(0.0, (instant - datetime.now(UTC)).total_seconds()) + 0.2)
    with pytest.raises(invites.InviteError) as refused:
        await invites.redeem_invite(db, "alice", "tz-east")
    assert refused.value.reason == "expired"
    assert (await invites.redeem_invite(db, "alice", " tz-west ")).credited_micro_usd == 1_000_000


async def test_an_idempotency_key_belongs_to_the_admin_who_used_it(db: Sessions) -> None:
    """Finding (low): a second admin's grant with the first admin's key was answered as a replay
    of the first admin's grant; it is a conflict (nothing moves)."""
    async def grant(actor: str) -> admin_actions.Grant:
        return await admin_actions.grant(db, "admin_credit", account_id="bob", email="bob@example.com",
                                         amount_micro_usd=1_000_000, note=None, idempotency_key="shared-key",
                                         actor=actor)

    assert (await grant("admin-key")).replayed is False
    assert (await grant("admin-key")).replayed is True
    with pytest.raises(admin_actions.IdempotencyConflict):
        await grant("boss-account")
    assert await ledger.balance(db, "bob") == ledger.Balances(1_000_000, 0)
    assert len([a for a in await admin_actions.list_actions(db) if a.reference == "shared-key"]) == 1


async def test_every_admin_money_move_has_its_audit_row(db: Sessions) -> None:
    """Grants, debits and invite codes each write one admin_actions row with the change; a debit
    the balance cannot cover writes neither."""
    for kind, key in (("admin_credit", "k1"), ("admin_reward", "k2"), ("admin_debit", "k3")):
        await admin_actions.grant(db, kind, account_id="carol", email="c@example.com",
                                  amount_micro_usd=1_000_000, note=None, idempotency_key=key, actor="a1")
    with pytest.raises(ledger.InsufficientFunds):
        await admin_actions.grant(db, "admin_debit", account_id="carol", email="c@example.com",
                                  amount_micro_usd=5_000_000, note=None, idempotency_key="k4", actor="a1")
    await invites.create_invite(db, amount_micro_usd=10_000, actor="a1", code="AUDIT-1", max_uses=2)
    await invites.deactivate_invite(db, "AUDIT-1", actor="a1")
    actions = [(a.action, a.reference) for a in reversed(await admin_actions.list_actions(db))]
    assert actions == [("admin_credit", "k1"), ("admin_reward", "k2"), ("admin_debit", "k3"),
                       ("invite_create", "AUDIT-1"), ("invite_deactivate", "AUDIT-1")]
    assert await ledger.balance(db, "carol") == ledger.Balances(1_000_000, 1_000_000)
