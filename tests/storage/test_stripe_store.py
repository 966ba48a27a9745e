"""Stripe's state and money on real SQLite and PostgreSQL (billing.md §6, §9): webhook deliveries
through the signature check into the store, concurrent duplicates, replays, forgeries, stale and
future-dated deliveries, refunds and disputes, withdrawals and their failure refunds. After each
test every balance still equals its ledger (``ledger.audit``)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.coordinator.payments import webhooks, withdrawal_amounts
from darkbloom.coordinator.store import ledger
from darkbloom.coordinator.store import stripe as store
from darkbloom.coordinator.store.credentials import ensure_account
from darkbloom.coordinator.store.tables import Account, LedgerEntry, StripeEvent

Sessions = async_sessionmaker[AsyncSession]
SECRET = "whsec_test_secret"
CONNECT_SECRET = "whsec_test_connect"


@pytest.fixture
async def db(sessions: Sessions) -> AsyncIterator[Sessions]:
    async with sessions.begin() as session:
        await ensure_account(session, "alice")
        await ensure_account(session, "bob")
    yield sessions
    assert await ledger.audit(sessions) == []


def _event(kind: str, obj: dict[str, Any], event_id: str, account: str | None = None,
           created: int | None = None) -> bytes:
    body: dict[str, Any] = {"id": event_id, "object": "event", "type": kind,
                            "created": created or int(time.time()), "data": {"object": obj}}
    if account:
        body["account"] = account
    return json.dumps(body).encode()


async def _deliver(sessions: Sessions, body: bytes, *, endpoint: str = "checkout", secret: str = SECRET,
                   at: float | None = None, signed_with: str | None = None) -> store.Outcome:
    stamp = int(time.time() if at is None else at)
    header = webhooks.sign(body, signed_with or secret, stamp)
    return await webhooks.receive(sessions, endpoint, body, header, secret)


async def _open_checkout(sessions: Sessions, account: str = "alice", amount: int = 10_000_000,
                         stripe_id: str = "cs_test_1", code: str | None = None) -> store.Checkout:
    made = await store.create_checkout(sessions, account, amount, code)
    await store.attach_stripe_session(sessions, made.id, stripe_id)
    return made


def _paid(stripe_id: str = "cs_test_1", cents: int = 1000, intent: str = "pi_1",
          billing_session_id: str | None = None) -> dict[str, Any]:
    return {"id": stripe_id, "object": "checkout.session", "payment_status": "paid",
            "status": "complete", "amount_total": cents, "currency": "usd", "payment_intent": intent,
            "metadata": {"billing_session_id": billing_session_id} if billing_session_id else {}}


async def _rows(sessions: Sessions, account: str, kind: str | None = None) -> list[LedgerEntry]:
    query = select(LedgerEntry).where(LedgerEntry.account_id == account)
    if kind:
        query = query.where(LedgerEntry.kind == kind)
    async with sessions() as session:
        return list((await session.execute(query.order_by(LedgerEntry.id))).scalars())


async def _events(sessions: Sessions) -> int:
    async with sessions() as session:
        return int((await session.execute(select(func.count()).select_from(StripeEvent))).scalar_one())


async def test_twenty_concurrent_deliveries_of_one_event_credit_once(db: Sessions) -> None:
    made = await _open_checkout(db)
    body = _event("checkout.session.completed", _paid(), "evt_dup_1")
    outcomes = await asyncio.gather(*(_deliver(db, body) for _ in range(20)))
    assert sorted(o.result for o in outcomes) == ["credited"] + ["duplicate"] * 19
    assert await ledger.balance(db, "alice") == ledger.Balances(10_000_000, 0)
    [row] = await _rows(db, "alice")
    assert (row.kind, row.reference, row.amount_micro_usd) == \
        ("stripe_deposit", "stripe:cs_test_1", 10_000_000)
    found = await store.find_checkout(db, "alice", made.id)
    assert found is not None and found.status == "completed" and found.credited_micro_usd == 10_000_000
    assert found.completed_at is not None
    assert await store.event_recorded(db, "evt_dup_1") == "credited"


async def test_different_events_for_one_session_credit_once(db: Sessions) -> None:
    """completed + async_payment_succeeded + a retried handler, all at once: one credit (the
    billing session row and the ledger's unique reference, not only the event id)."""
    await _open_checkout(db)
    bodies = [_event("checkout.session.completed", _paid(), f"evt_a{i}") for i in range(5)]
    bodies += [_event("checkout.session.async_payment_succeeded", _paid(), f"evt_b{i}") for i in range(5)]
    outcomes = await asyncio.gather(*(_deliver(db, body) for body in bodies))
    assert sorted(o.result for o in outcomes).count("credited") == 1
    assert {o.result for o in outcomes} == {"credited", "already_completed"}
    assert await ledger.balance(db, "alice") == ledger.Balances(10_000_000, 0)
    assert len(await _rows(db, "alice")) == 1


async def test_credit_is_what_stripe_collected_and_unpaid_is_not_credited(db: Sessions) -> None:
    await _open_checkout(db)
    unpaid = {**_paid(), "payment_status": "unpaid"}
    assert (await _deliver(db, _event("checkout.session.completed", unpaid, "evt_u"))).result == "not_paid"
    assert await ledger.balance(db, "alice") == ledger.Balances(0, 0)
    euros = {**_paid(), "currency": "eur"}
    assert (await _deliver(db, _event("checkout.session.completed", euros, "evt_eur"))).result == "ignored"
    # Stripe collected 9.50 (a discount): that, not the 10.00 asked for, is credited.
    done = await _deliver(db, _event("checkout.session.async_payment_succeeded", _paid(cents=950), "evt_p"))
    assert (done.result, done.amount_micro_usd) == ("credited", 9_500_000)
    assert await ledger.balance(db, "alice") == ledger.Balances(9_500_000, 0)


async def test_replayed_forged_stale_and_future_deliveries_change_nothing(db: Sessions) -> None:
    await _open_checkout(db)
    body = _event("checkout.session.completed", _paid(), "evt_once")
    assert (await _deliver(db, body)).result == "credited"
    # A replay an hour later with a fresh, valid signature: the event id was already acted on.
    assert (await _deliver(db, body, at=time.time() + 1)).result == "duplicate"
    other = _event("checkout.session.completed", _paid("cs_test_2"), "evt_other")
    await _open_checkout(db, "bob", stripe_id="cs_test_2")
    for attempt in ({"signed_with": "whsec_wrong"}, {"at": time.time() - 301}, {"at": time.time() + 301}):
        with pytest.raises(webhooks.SignatureError):
            await _deliver(db, other, **attempt)  # type: ignore[arg-type]
    with pytest.raises(webhooks.SignatureError):  # no secret configured: nothing is accepted
        await webhooks.receive(db, "checkout", other, webhooks.sign(other, SECRET, int(time.time())), None)
    tampered = other.replace(b"1000", b"9000")
    with pytest.raises(webhooks.SignatureError):
        await webhooks.receive(db, "checkout", tampered,
                               webhooks.sign(other, SECRET, int(time.time())), SECRET)
    with pytest.raises(webhooks.PayloadError):
        await _deliver(db, b'{"id": "evt_x", "type": "checkout.session.completed"}')
    assert await ledger.balance(db, "bob") == ledger.Balances(0, 0)
    assert await ledger.balance(db, "alice") == ledger.Balances(10_000_000, 0)
    assert await _events(db) == 1
    # Within the tolerance either side is fine.
    assert (await _deliver(db, other, at=time.time() + 290)).result == "credited"


async def test_unknown_sessions_are_ignored_and_metadata_binds_a_lost_stripe_id(db: Sessions) -> None:
    stray = await _deliver(db, _event("checkout.session.completed", _paid("cs_stray"), "evt_stray"))
    assert stray.result == "unknown_session"
    # The Stripe id never got stored (a crash after Stripe answered): the metadata finds the session.
    made = await store.create_checkout(db, "bob", 2_000_000, None)
    bound = await _deliver(db, _event("checkout.session.completed",
                                      _paid("cs_lost", cents=200, billing_session_id=made.id), "evt_lost"))
    assert (bound.result, bound.account_id) == ("credited", "bob")
    found = await store.find_checkout(db, "bob", "cs_lost")
    assert found is not None and found.id == made.id and found.status == "completed"
    # Metadata cannot re-point a session that already has its own Stripe id.
    again = await _deliver(db, _event("checkout.session.completed",
                                      _paid("cs_hijack", cents=500, billing_session_id=made.id), "evt_hj"))
    assert again.result == "unknown_session"
    assert await ledger.balance(db, "bob") == ledger.Balances(2_000_000, 0)


async def test_expired_sessions(db: Sessions) -> None:
    made = await _open_checkout(db)
    expired = {"id": "cs_test_1", "object": "checkout.session", "status": "expired"}
    assert (await _deliver(db, _event("checkout.session.expired", expired, "evt_exp"))).result == "expired"
    found = await store.find_checkout(db, "alice", made.id)
    assert found is not None and found.status == "expired"
    assert (await _deliver(db, _event("checkout.session.expired", expired, "evt_exp2"))).result == "ignored"


async def test_refunds_and_disputes_debit_or_hold(db: Sessions) -> None:
    await _open_checkout(db)
    await _deliver(db, _event("checkout.session.completed", _paid(), "evt_pay"))
    charge = {"id": "ch_1", "object": "charge", "payment_intent": "pi_1", "amount": 1000}
    # A partial refund of 3.00, then Stripe's running total reaches 5.00: 5.00 in all, once.
    first = await _deliver(db, _event("charge.refunded", {**charge, "amount_refunded": 300}, "evt_r1"))
    assert (first.result, first.amount_micro_usd) == ("debited", 3_000_000)
    second = await _deliver(db, _event("charge.refunded", {**charge, "amount_refunded": 500}, "evt_r2"))
    assert (second.result, second.amount_micro_usd) == ("debited", 2_000_000)
    resent = await _deliver(db, _event("charge.refunded", {**charge, "amount_refunded": 500}, "evt_r3"))
    assert resent.result == "nothing_to_reverse"
    assert await ledger.balance(db, "alice") == ledger.Balances(5_000_000, 0)
    # The rest is spent; a dispute for the whole charge cannot be debited: the account is held.
    await ledger.debit(db, "alice", 4_000_000, "reserve", "req-1")
    dispute = {"id": "dp_1", "object": "dispute", "charge": "ch_1", "payment_intent": "pi_1", "amount": 1000}
    held = await _deliver(db, _event("charge.dispute.created", dispute, "evt_d1"))
    assert (held.result, held.amount_micro_usd) == ("held", 5_000_000)  # never more than was credited
    assert await ledger.balance(db, "alice") == ledger.Balances(1_000_000, 0)
    assert await store.on_hold(db, "alice") and not await store.on_hold(db, "bob")
    kinds = [(r.kind, r.amount_micro_usd, r.actor) for r in await _rows(db, "alice")]
    assert kinds[1:3] == [(store.REVERSAL_KIND, -3_000_000, "stripe"),
                          (store.REVERSAL_KIND, -2_000_000, "stripe")]
    unknown = {**dispute, "id": "dp_2", "payment_intent": "pi_unknown"}
    stray = await _deliver(db, _event("charge.dispute.created", unknown, "evt_d2"))
    assert stray.result == "unknown_payment"


async def test_concurrent_refund_deliveries_debit_once(db: Sessions) -> None:
    await _open_checkout(db)
    await _deliver(db, _event("checkout.session.completed", _paid(), "evt_pay"))
    charge = {"id": "ch_1", "object": "charge", "payment_intent": "pi_1", "amount_refunded": 1000}
    outcomes = await asyncio.gather(*(_deliver(db, _event("charge.refunded", charge, f"evt_r{i % 3}"))
                                      for i in range(12)))
    assert [o.result for o in outcomes].count("debited") == 1
    assert await ledger.balance(db, "alice") == ledger.Balances(0, 0)
    async with db() as session:
        hold = (await session.execute(select(Account.billing_hold).where(Account.id == "alice"))).scalar_one()
    assert hold is False


async def _fund(sessions: Sessions, account: str, amount: int) -> None:
    await ledger.credit(sessions, account, amount, "admin_reward", f"fund-{account}-{amount}",
                        withdrawable=True, actor="admin")


async def test_withdrawal_debit_fee_and_one_refund_under_concurrent_failures(db: Sessions) -> None:
    await _fund(db, "alice", 150_000_000)
    await store.save_connect(db, "alice", "acct_a", "US")
    amounts = withdrawal_amounts(100_010_000, "instant")  # $100.01: fee 1.50015 + dust -> 1.51
    assert (amounts.fee, amounts.net, amounts.net_cents) == (1_510_000, 98_500_000, 9850)
    with pytest.raises(ledger.InsufficientFunds):
        await store.begin_withdrawal(db, "alice", "acct_a", gross=160_000_000, fee=0, net=160_000_000,
                                     method="standard")
    wd = await store.begin_withdrawal(db, "alice", "acct_a", gross=amounts.gross, fee=amounts.fee,
                                      net=amounts.net, method="instant")
    assert await ledger.balance(db, "alice") == ledger.Balances(49_990_000, 49_990_000)
    assert (await ledger.balance(db, ledger.PLATFORM_ACCOUNT_ID)).balance_micro_usd == 1_510_000
    await store.mark_transferred(db, wd.id, "tr_1")
    await store.record_payout(db, wd.id, payout_id="po_1", arrival_unix=123)
    payout = {"id": "po_1", "object": "payout", "status": "failed", "failure_code": "account_closed",
              "failure_message": "The bank account has been closed", "metadata": {"withdrawal_id": wd.id}}
    bodies = [_event("payout.failed", payout, f"evt_pf{i % 4}", account="acct_a") for i in range(16)]
    bodies += [_event("transfer.reversed", {"id": "tr_1", "object": "transfer", "destination": "acct_a"},
                      f"evt_tr{i}") for i in range(4)]
    outcomes = await asyncio.gather(*(_deliver(db, body, endpoint="connect", secret=CONNECT_SECRET)
                                      for body in bodies))
    results = [o.result for o in outcomes]
    assert results.count("refunded") == 1 and set(results) <= {"refunded", "already_refunded", "duplicate"}
    assert await ledger.balance(db, "alice") == ledger.Balances(150_000_000, 150_000_000)
    assert (await ledger.balance(db, ledger.PLATFORM_ACCOUNT_ID)).balance_micro_usd == 0
    row = await store.get_withdrawal(db, wd.id)
    assert row is not None and (row.status, row.refunded) == ("failed", True)
    assert row.failure_reason is not None and row.failure_reason.startswith("payout_failed: account_closed")
    assert [r.kind for r in await _rows(db, "alice", "withdrawal_refund")] == ["withdrawal_refund"]
    # A late payout.paid does not resurrect a refunded withdrawal.
    late = _event("payout.paid", {**payout, "status": "paid"}, "evt_paid", account="acct_a")
    assert (await _deliver(db, late, endpoint="connect", secret=CONNECT_SECRET)).result == "already_refunded"


async def test_payout_paid_and_events_from_another_connect_account(db: Sessions) -> None:
    await _fund(db, "bob", 5_000_000)
    await store.save_connect(db, "bob", "acct_b", "US")
    wd = await store.begin_withdrawal(db, "bob", "acct_b", gross=5_000_000, fee=0, net=5_000_000,
                                      method="standard")
    await store.mark_transferred(db, wd.id, "tr_b")
    await store.record_payout(db, wd.id, payout_id="po_b")
    payout = {"id": "po_b", "object": "payout", "metadata": {"withdrawal_id": wd.id}}
    # The same payout id reported for a different connected account is not ours to refund.
    forged = _event("payout.failed", payout, "evt_x", account="acct_other")
    refused = await _deliver(db, forged, endpoint="connect", secret=CONNECT_SECRET)
    assert refused.result == "unknown_withdrawal"
    paid = _event("payout.paid", payout, "evt_ok", account="acct_b")
    assert (await _deliver(db, paid, endpoint="connect", secret=CONNECT_SECRET)).result == "paid"
    row = await store.get_withdrawal(db, wd.id)
    assert row is not None and (row.status, row.refunded) == ("paid", False)
    assert await ledger.balance(db, "bob") == ledger.Balances(0, 0)
    # The checkout secret does not sign Connect events.
    with pytest.raises(webhooks.SignatureError):
        await _deliver(db, paid, endpoint="connect", secret=CONNECT_SECRET, signed_with=SECRET)


async def test_account_updates_apply_newest_first(db: Sessions) -> None:
    await store.save_connect(db, "alice", "acct_a", "US")
    ready = {"id": "acct_a", "object": "account", "payouts_enabled": True, "details_submitted": True,
             "requirements": {"currently_due": []},
             "external_accounts": {"data": [{"object": "card", "last4": "4242", "funding": "debit"}]}}
    now = int(time.time())
    newer = _event("account.updated", ready, "evt_new", created=now)
    assert (await _deliver(db, newer, endpoint="connect", secret=CONNECT_SECRET)).result == "updated"
    stale = _event("account.updated", {"id": "acct_a", "object": "account", "payouts_enabled": False},
                   "evt_old", created=now - 60)
    assert (await _deliver(db, stale, endpoint="connect", secret=CONNECT_SECRET)).result == "ignored"
    found = await store.get_connect(db, "alice")
    assert found is not None
    assert (found.status, found.destination_type, found.destination_last4, found.instant_eligible) \
        == ("ready", "card", "4242", True)
    rejected = {"id": "acct_a", "requirements": {"disabled_reason": "rejected.fraud"}}
    await _deliver(db, _event("account.updated", rejected, "evt_rej", created=now + 1),
                   endpoint="connect", secret=CONNECT_SECRET)
    found = await store.get_connect(db, "alice")
    assert found is not None and found.status == "rejected"


async def test_concurrent_first_onboardings_keep_one_account(db: Sessions) -> None:
    saved = await asyncio.gather(*(store.save_connect(db, "alice", "acct_same", "US") for _ in range(10)))
    assert {s.stripe_account_id for s in saved} == {"acct_same"} and {s.status for s in saved} == {"pending"}
    moved = await store.save_connect(db, "alice", "acct_de", "DE")  # a new country: a new account
    assert (moved.stripe_account_id, moved.country, moved.status) == ("acct_de", "DE", "pending")
    with pytest.raises(ValueError):
        await store.save_connect(db, "bob", "acct_de", "DE")
