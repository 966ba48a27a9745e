"""Stripe's state and money (billing.md §6, §9): Checkout top-ups, webhook events already acted on,
Connect accounts and withdrawals.

Every money change is a ``ledger.post`` in the same transaction as the state change it belongs to
and, for a webhook, the ``stripe_events`` row that records the event: a crash leaves all or none.
That row is each webhook transaction's first statement (a write, as ``ledger.transaction`` needs):
a concurrent duplicate delivery waits on it (PostgreSQL's unique index; SQLite's single writer)
and then finds it, so it changes nothing; the ledger's unique ``(kind, reference)`` is the second
guard. The row being changed is locked next by an ``UPDATE … RETURNING`` (the same order
everywhere: event, then the Stripe row, then balances), so webhook and route never interleave.
"""

from __future__ import annotations

import json
import logging
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.coordinator.store import ledger
from darkbloom.coordinator.store.tables import (
    Account,
    BillingSession,
    ReferralCode,
    StripeConnectAccount,
    StripeEvent,
    StripeWithdrawal,
)

log = logging.getLogger(__name__)
Sessions = async_sessionmaker[AsyncSession]
CENT = 10_000  # micro-USD per cent
STRIPE_ACTOR = "stripe"
MAX_REASON = 300

# Kinds billing.md §11 does not name (docs/billing.md adds them): money Stripe takes back (a
# refunded or disputed top-up) and a failed withdrawal's fee returned by the platform.
REVERSAL_KIND = "stripe_refund"
FEE_RETURN_KIND = "withdrawal_fee_refund"


def now() -> datetime:
    return datetime.now(UTC)


def _reason(text: str) -> str:
    """A failure reason fit to store: printable characters only (PostgreSQL refuses NUL bytes and
    lone surrogates), bounded."""
    return "".join(ch for ch in text[:MAX_REASON] if ch.isprintable())


def _aware(stamp: datetime | None) -> datetime | None:
    return stamp if stamp is None or stamp.tzinfo else stamp.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Event:
    """The webhook event being acted on: its id is recorded once, with what came of it."""

    id: str
    endpoint: str  # checkout | connect
    type: str


class PaymentNotCredited(Exception):
    """A refund arrived before the payment it refunds was credited (Stripe does not order its
    deliveries): nothing was recorded, so the webhook answers an error and Stripe redelivers it
    after the completion has been credited."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one event or call did: ``result`` names it (``duplicate`` when the event was already
    recorded); ``credited`` when this call credited a Checkout session, whose ``referral_code``
    is then to be applied."""

    result: str
    account_id: str | None = None
    amount_micro_usd: int = 0
    referral_code: str | None = None


@dataclass(frozen=True, slots=True)
class Checkout:
    id: str
    account_id: str
    stripe_session_id: str | None
    amount_micro_usd: int
    credited_micro_usd: int
    reversed_micro_usd: int
    referral_code: str | None
    status: str
    created_at: datetime
    completed_at: datetime | None


@dataclass(frozen=True, slots=True)
class AccountSnapshot:
    """What Stripe says about a Connect account, reduced to what §9 uses."""

    stripe_account_id: str
    status: str  # pending | ready | restricted | rejected
    destination_type: str = ""
    destination_last4: str = ""
    instant_eligible: bool = False
    currently_due: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ConnectAccount:
    account_id: str
    stripe_account_id: str
    country: str
    status: str
    destination_type: str
    destination_last4: str
    instant_eligible: bool
    currently_due: list[str]


@dataclass(frozen=True, slots=True)
class Withdrawal:
    id: str
    account_id: str
    stripe_account_id: str
    transfer_id: str | None
    payout_id: str | None
    amount_micro_usd: int
    fee_micro_usd: int
    net_micro_usd: int
    method: str
    status: str
    failure_reason: str | None
    refunded: bool
    arrival_unix: int | None
    created_at: datetime
    updated_at: datetime


def _insert(session: AsyncSession) -> Any:
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


async def _claim(session: AsyncSession, event: Event | None) -> bool:
    """Record ``event`` (the transaction's first write); False if it was already recorded."""
    if event is None:
        return True
    stmt = _insert(session)(StripeEvent).values(
        id=event.id, endpoint=event.endpoint, type=event.type[:64], outcome="processing",
        received_at=now()).on_conflict_do_nothing().returning(StripeEvent.id)
    return (await session.execute(stmt)).scalar_one_or_none() is not None


async def _settle(session: AsyncSession, event: Event | None, result: str) -> None:
    if event is not None:
        await session.execute(update(StripeEvent).where(StripeEvent.id == event.id)
                              .values(outcome=result[:32]))


async def event_recorded(sessions: Sessions, event_id: str) -> str | None:
    """The outcome recorded for an event id, or None (tests, operators)."""
    async with sessions() as session:
        return (await session.execute(select(StripeEvent.outcome)
                                      .where(StripeEvent.id == event_id))).scalar_one_or_none()


# --- Checkout (§6) ------------------------------------------------------------------------------

_CHECKOUT_COLUMNS = (BillingSession.id, BillingSession.account_id, BillingSession.stripe_session_id,
                     BillingSession.amount_micro_usd, BillingSession.credited_micro_usd,
                     BillingSession.reversed_micro_usd, BillingSession.referral_code,
                     BillingSession.status, BillingSession.created_at, BillingSession.completed_at)


def _checkout(row: Any) -> Checkout:
    """From a BillingSession or a row of ``_CHECKOUT_COLUMNS``."""
    return Checkout(row.id, row.account_id, row.stripe_session_id, row.amount_micro_usd,
                    row.credited_micro_usd, row.reversed_micro_usd, row.referral_code, row.status,
                    _aware(row.created_at) or now(), _aware(row.completed_at))


async def create_checkout(sessions: Sessions, account_id: str, amount_micro_usd: int,
                          referral_code: str | None) -> Checkout:
    """A ``pending`` billing session, written before Stripe is asked, so the Stripe session can
    always be matched to its account (by its metadata if the id never got stored)."""
    stamp = now()
    row = BillingSession(id="bs_" + secrets.token_hex(16), account_id=account_id,
                         amount_micro_usd=amount_micro_usd, credited_micro_usd=0, reversed_micro_usd=0,
                         referral_code=referral_code, status="pending", created_at=stamp,
                         updated_at=stamp)
    async with sessions.begin() as session:
        session.add(row)
    return _checkout(row)


async def attach_stripe_session(sessions: Sessions, billing_session_id: str, stripe_session_id: str) -> None:
    async with sessions.begin() as session:
        await session.execute(update(BillingSession).where(
            BillingSession.id == billing_session_id, BillingSession.stripe_session_id.is_(None))
            .values(stripe_session_id=stripe_session_id, updated_at=now()))


async def abandon_checkout(sessions: Sessions, billing_session_id: str) -> None:
    """Stripe refused to open the session: nobody can pay it, so it is expired at once."""
    async with sessions.begin() as session:
        await session.execute(update(BillingSession).where(
            BillingSession.id == billing_session_id, BillingSession.status == "pending")
            .values(status="expired", updated_at=now()))


async def find_checkout(sessions: Sessions, account_id: str, ref: str) -> Checkout | None:
    """The caller's billing session, by our id or by Stripe's ``cs_…`` id."""
    async with sessions() as session:
        row = (await session.execute(select(*_CHECKOUT_COLUMNS).where(
            BillingSession.account_id == account_id,
            or_(BillingSession.id == ref, BillingSession.stripe_session_id == ref)))).first()
    return _checkout(row) if row else None


async def _lock_checkout(session: AsyncSession, *conditions: Any, **values: Any) -> Checkout | None:
    row = (await session.execute(update(BillingSession).where(*conditions)
                                 .values(updated_at=now(), **values)
                                 .returning(*_CHECKOUT_COLUMNS)
                                 .execution_options(synchronize_session=False))).first()
    return _checkout(row) if row else None


async def complete_checkout(sessions: Sessions, *, stripe_session_id: str, amount_total_cents: int,
                            payment_intent_id: str | None = None, billing_session_id: str | None = None,
                            event: Event | None = None) -> Outcome:
    """Stripe collected ``amount_total_cents`` for this session: credit it (``stripe_deposit``,
    non-withdrawable) and complete the session, once. ``billing_session_id`` (from the session's
    metadata) binds a session whose Stripe id was never stored. Sessions we did not open are
    ignored."""
    async with ledger.transaction(sessions) as session:
        if not await _claim(session, event):
            return Outcome("duplicate")
        row = await _lock_checkout(session, BillingSession.stripe_session_id == stripe_session_id)
        if row is None and billing_session_id:
            row = await _lock_checkout(session, BillingSession.id == billing_session_id,
                                       BillingSession.stripe_session_id.is_(None),
                                       stripe_session_id=stripe_session_id)
        if row is None:
            log.warning("stripe: a paid checkout session that no billing session matches; ignored")
            await _settle(session, event, "unknown_session")
            return Outcome("unknown_session")
        if row.status == "completed":
            await _settle(session, event, "already_completed")
            return Outcome("already_completed", row.account_id)
        credit = amount_total_cents * CENT
        replayed = False
        if credit > 0:
            await ledger.lock(session, row.account_id)
            entry = await ledger.post(session, row.account_id, credit, "stripe_deposit",
                                      f"stripe:{stripe_session_id}", actor=STRIPE_ACTOR)
            replayed = entry.replayed
        await session.execute(update(BillingSession).where(BillingSession.id == row.id).values(
            status="completed", credited_micro_usd=credit, completed_at=now(),
            payment_intent_id=payment_intent_id))
        result = "already_credited" if replayed else "credited"
        await _settle(session, event, result)
    return Outcome(result, row.account_id, credit, row.referral_code)


async def expire_checkout(sessions: Sessions, *, stripe_session_id: str,
                          event: Event | None = None) -> Outcome:
    """Stripe closed the session unpaid: a pending billing session becomes ``expired``."""
    async with ledger.transaction(sessions) as session:
        if not await _claim(session, event):
            return Outcome("duplicate")
        row = await _lock_checkout(session, BillingSession.stripe_session_id == stripe_session_id,
                                   BillingSession.status == "pending", status="expired")
        result = "expired" if row else "ignored"
        await _settle(session, event, result)
    return Outcome(result, row.account_id if row else None)


async def reverse_payment(sessions: Sessions, *, payment_intent_id: str, cents: int, reference: str,
                          cumulative: bool, billing_session_id: str | None = None,
                          event: Event | None = None) -> Outcome:
    """A refund or dispute took money back from a top-up: debit it from the account if the
    balance still holds it, else put the account on ``billing_hold`` (billing.md §6). A refund's
    ``cents`` is Stripe's running total refunded on the charge (``cumulative``), a dispute's its own
    amount; either way no more than was credited is ever taken back.

    ``billing_session_id`` is the charge's metadata (Stripe copies our PaymentIntent's onto it): it
    finds a session credited without a PaymentIntent id, and a session not credited yet raises
    PaymentNotCredited with nothing recorded, so the refund is not lost to a delivery that
    overtook the payment's own."""
    async with ledger.transaction(sessions) as session:
        if not await _claim(session, event):
            return Outcome("duplicate")
        row = await _lock_checkout(session, BillingSession.payment_intent_id == payment_intent_id,
                                   BillingSession.status == "completed")
        if row is None and billing_session_id:
            row = await _lock_checkout(session, BillingSession.id == billing_session_id,
                                       BillingSession.status == "completed",
                                       BillingSession.payment_intent_id.is_(None),
                                       payment_intent_id=payment_intent_id)
            named = None if row else (await session.execute(select(BillingSession.status).where(
                BillingSession.id == billing_session_id))).scalar_one_or_none()
            if named == "pending":
                raise PaymentNotCredited(f"billing session {billing_session_id} is not credited yet")
        if row is None:
            await _settle(session, event, "unknown_payment")
            return Outcome("unknown_payment")
        wanted = min(cents * CENT, row.credited_micro_usd)
        take = wanted - row.reversed_micro_usd if cumulative else min(
            wanted, row.credited_micro_usd - row.reversed_micro_usd)
        if take <= 0:
            await _settle(session, event, "nothing_to_reverse")
            return Outcome("nothing_to_reverse", row.account_id)
        await ledger.lock(session, row.account_id)
        try:
            await ledger.post(session, row.account_id, -take, REVERSAL_KIND, reference, actor=STRIPE_ACTOR)
            result = "debited"
        except ledger.ReferenceConflict:  # this refund or dispute was already taken, at another amount
            await _settle(session, event, "conflicting_reference")
            return Outcome("conflicting_reference", row.account_id)
        except ledger.InsufficientFunds:
            await session.execute(update(Account).where(Account.id == row.account_id)
                                  .values(billing_hold=True))
            log.warning("stripe: a refund or dispute exceeds the account's balance; billing hold set")
            result = "held"
        await session.execute(update(BillingSession).where(BillingSession.id == row.id).values(
            reversed_micro_usd=BillingSession.reversed_micro_usd + take))
        await _settle(session, event, result)
    return Outcome(result, row.account_id, take)


async def referral_owner(sessions: Sessions, code: str) -> str | None:
    """The account holding a (normalised) referral code, to refuse an unknown one up front."""
    async with sessions() as session:
        return (await session.execute(select(ReferralCode.account_id)
                                      .where(ReferralCode.code == code))).scalar_one_or_none()


async def on_hold(sessions: Sessions, account_id: str) -> bool:
    """billing.md §6: an account owing a refund or dispute it could not cover."""
    async with sessions() as session:
        return bool((await session.execute(select(Account.billing_hold)
                                           .where(Account.id == account_id))).scalar_one_or_none())


# --- Connect accounts (§9) ----------------------------------------------------------------------

def _connect(row: StripeConnectAccount) -> ConnectAccount:
    try:
        due = json.loads(row.currently_due or "[]")
    except ValueError:
        due = []
    return ConnectAccount(row.account_id, row.stripe_account_id, row.country, row.status,
                          row.destination_type, row.destination_last4, row.instant_eligible,
                          [str(item) for item in due] if isinstance(due, list) else [])


async def get_connect(sessions: Sessions, account_id: str) -> ConnectAccount | None:
    async with sessions() as session:
        row = await session.get(StripeConnectAccount, account_id)
    return _connect(row) if row else None


async def save_connect(sessions: Sessions, account_id: str, stripe_account_id: str,
                       country: str) -> ConnectAccount:
    """Remember the Express account made for ``account_id``; a new one starts ``pending``."""
    stamp = now()
    async with sessions.begin() as session:
        # Insert-or-keep first (a write, and no race between two first onboardings), then lock.
        await ledger.insert_ignore(session, StripeConnectAccount, {
            "account_id": account_id, "stripe_account_id": stripe_account_id, "country": country,
            "status": "pending", "destination_type": "", "destination_last4": "",
            "instant_eligible": False, "currently_due": "[]", "synced_event_at": 0,
            "created_at": stamp, "updated_at": stamp})
        row = await session.get(StripeConnectAccount, account_id, with_for_update=True,
                                populate_existing=True)
        if row is None:
            raise ValueError(f"Stripe account {stripe_account_id} is already linked to another account")
        if row.stripe_account_id != stripe_account_id:
            row.stripe_account_id, row.status, row.destination_type = stripe_account_id, "pending", ""
            row.destination_last4, row.instant_eligible, row.currently_due = "", False, "[]"
            row.synced_event_at = 0
        row.country, row.updated_at = country, stamp
    return _connect(row)


async def apply_snapshot(sessions: Sessions, snapshot: AccountSnapshot, as_of: int,
                         event: Event | None = None) -> Outcome:
    """Mirror Stripe's view of a Connect account (``account.updated`` or a refresh). ``as_of`` is
    when Stripe produced it (the event's ``created``): an older view arriving late is skipped."""
    async with ledger.transaction(sessions) as session:
        if not await _claim(session, event):
            return Outcome("duplicate")
        found = (await session.execute(update(StripeConnectAccount).where(
            StripeConnectAccount.stripe_account_id == snapshot.stripe_account_id,
            StripeConnectAccount.synced_event_at <= as_of).values(
            status=snapshot.status, destination_type=snapshot.destination_type,
            destination_last4=snapshot.destination_last4, instant_eligible=snapshot.instant_eligible,
            currently_due=json.dumps(snapshot.currently_due), synced_event_at=as_of, updated_at=now())
            .returning(StripeConnectAccount.account_id)
            .execution_options(synchronize_session=False))).scalar_one_or_none()
        result = "updated" if found else "ignored"
        await _settle(session, event, result)
    return Outcome(result, found)


# --- Withdrawals (§9) ---------------------------------------------------------------------------

_WITHDRAWAL_COLUMNS = (
    StripeWithdrawal.id, StripeWithdrawal.account_id, StripeWithdrawal.stripe_account_id,
    StripeWithdrawal.transfer_id, StripeWithdrawal.payout_id, StripeWithdrawal.amount_micro_usd,
    StripeWithdrawal.fee_micro_usd, StripeWithdrawal.net_micro_usd, StripeWithdrawal.method,
    StripeWithdrawal.status, StripeWithdrawal.failure_reason, StripeWithdrawal.refunded,
    StripeWithdrawal.arrival_unix, StripeWithdrawal.created_at, StripeWithdrawal.updated_at)


def _withdrawal(row: Any) -> Withdrawal:
    """From a StripeWithdrawal or a row of ``_WITHDRAWAL_COLUMNS``."""
    return Withdrawal(row.id, row.account_id, row.stripe_account_id, row.transfer_id, row.payout_id,
                      row.amount_micro_usd, row.fee_micro_usd, row.net_micro_usd, row.method,
                      row.status, row.failure_reason, row.refunded, row.arrival_unix,
                      _aware(row.created_at) or now(), _aware(row.updated_at) or now())


def withdraw_reference(withdrawal_id: str) -> str:
    return f"stripe_withdraw:{withdrawal_id}"


async def begin_withdrawal(sessions: Sessions, account_id: str, stripe_account_id: str, *, gross: int,
                           fee: int, net: int, method: str) -> Withdrawal:
    """Debit ``gross`` from withdrawable money (``stripe_payout``), book ``fee`` to the platform
    (``withdrawal_fee``) and write the ``pending`` row, in one transaction, before Stripe is
    called. Raises ledger.InsufficientFunds with nothing written."""
    if gross != fee + net or net <= 0 or fee < 0:
        raise ValueError("a withdrawal needs gross = fee + net and something to pay out")
    stamp = now()
    row = StripeWithdrawal(id=str(uuid.uuid4()), account_id=account_id,
                           stripe_account_id=stripe_account_id, amount_micro_usd=gross,
                           fee_micro_usd=fee, net_micro_usd=net, method=method, status="pending",
                           refunded=False, created_at=stamp, updated_at=stamp)
    reference = withdraw_reference(row.id)
    async with ledger.transaction(sessions) as session:
        await ledger.lock(session, account_id, *([ledger.PLATFORM_ACCOUNT_ID] if fee else []))
        await ledger.post(session, account_id, -gross, "stripe_payout", reference)
        if fee:
            await ledger.post(session, ledger.PLATFORM_ACCOUNT_ID, fee, "withdrawal_fee", reference,
                              withdrawable=False)
        session.add(row)
    return _withdrawal(row)


async def mark_transferred(sessions: Sessions, withdrawal_id: str, transfer_id: str) -> None:
    async with sessions.begin() as session:
        await session.execute(update(StripeWithdrawal).where(
            StripeWithdrawal.id == withdrawal_id, StripeWithdrawal.status == "pending")
            .values(status="transferred", transfer_id=transfer_id, updated_at=now()))


async def record_payout(sessions: Sessions, withdrawal_id: str, *, payout_id: str | None,
                        arrival_unix: int | None = None, failure: str | None = None) -> None:
    """The payout Stripe created (its id and expected arrival), or why creating it failed."""
    values: dict[str, Any] = {"updated_at": now()}
    if payout_id is not None:
        values.update(payout_id=payout_id, arrival_unix=arrival_unix)
    if failure is not None:
        values["failure_reason"] = _reason(failure)
    async with sessions.begin() as session:
        await session.execute(update(StripeWithdrawal).where(StripeWithdrawal.id == withdrawal_id)
                              .values(**values))


def _match(withdrawal_id: str | None, payout_id: str | None, transfer_id: str | None,
           stripe_account_id: str | None) -> list[Any]:
    keys = [column == value for column, value in ((StripeWithdrawal.id, withdrawal_id),
                                                  (StripeWithdrawal.payout_id, payout_id),
                                                  (StripeWithdrawal.transfer_id, transfer_id)) if value]
    if not keys:
        raise ValueError("name the withdrawal by id, payout id or transfer id")
    conditions = [or_(*keys)]
    if stripe_account_id:
        conditions.append(StripeWithdrawal.stripe_account_id == stripe_account_id)
    return conditions


async def _lock_withdrawal(session: AsyncSession, conditions: list[Any]) -> Withdrawal | None:
    row = (await session.execute(update(StripeWithdrawal).where(*conditions)
                                 .values(updated_at=now()).returning(*_WITHDRAWAL_COLUMNS)
                                 .execution_options(synchronize_session=False))).first()
    return _withdrawal(row) if row else None


async def fail_withdrawal(sessions: Sessions, reason: str, *, withdrawal_id: str | None = None,
                          payout_id: str | None = None, transfer_id: str | None = None,
                          stripe_account_id: str | None = None, event: Event | None = None) -> Outcome:
    """The money did not reach the user (transfer refused, payout failed or canceled, transfer
    reversed): refund the gross amount (``withdrawal_refund``, withdrawable) and return the fee
    from the platform, once (the ``refunded`` flag and the ledger's unique reference)."""
    async with ledger.transaction(sessions) as session:
        if not await _claim(session, event):
            return Outcome("duplicate")
        row = await _lock_withdrawal(session, _match(withdrawal_id, payout_id, transfer_id,
                                                     stripe_account_id))
        if row is None:
            await _settle(session, event, "unknown_withdrawal")
            return Outcome("unknown_withdrawal")
        if row.refunded:
            await session.execute(update(StripeWithdrawal).where(StripeWithdrawal.id == row.id)
                                  .values(status="failed"))
            await _settle(session, event, "already_refunded")
            return Outcome("already_refunded", row.account_id)
        reference = withdraw_reference(row.id)
        await ledger.lock(session, row.account_id,
                          *([ledger.PLATFORM_ACCOUNT_ID] if row.fee_micro_usd else []))
        await ledger.post(session, row.account_id, row.amount_micro_usd, "withdrawal_refund", reference)
        if row.fee_micro_usd:
            try:
                await ledger.post(session, ledger.PLATFORM_ACCOUNT_ID, -row.fee_micro_usd,
                                  FEE_RETURN_KIND, reference, actor=STRIPE_ACTOR)
            except ledger.InsufficientFunds:
                log.error("stripe: the platform cannot return a failed withdrawal's fee; "
                          "withdrawal %s needs a manual adjustment", row.id)
        await session.execute(update(StripeWithdrawal).where(StripeWithdrawal.id == row.id).values(
            status="failed", refunded=True, failure_reason=_reason(reason)))
        await _settle(session, event, "refunded")
    return Outcome("refunded", row.account_id, row.amount_micro_usd)


async def find_withdrawal(sessions: Sessions, *, withdrawal_id: str | None = None,
                          payout_id: str | None = None, transfer_id: str | None = None,
                          stripe_account_id: str | None = None) -> Withdrawal | None:
    """The withdrawal an event names (read only), as ``fail_withdrawal`` would match it."""
    async with sessions() as session:
        row = (await session.execute(select(*_WITHDRAWAL_COLUMNS).where(
            *_match(withdrawal_id, payout_id, transfer_id, stripe_account_id))
            .order_by(StripeWithdrawal.created_at).limit(1))).first()
    return _withdrawal(row) if row else None


async def flag_withdrawal(sessions: Sessions, reason: str, result: str, *, status: str | None = None,
                          withdrawal_id: str | None = None, payout_id: str | None = None,
                          transfer_id: str | None = None, stripe_account_id: str | None = None,
                          event: Event | None = None) -> Outcome:
    """An event about a withdrawal that moves no money but needs an operator (its transfer could
    not be reversed, or was reversed only in part): the reason goes on the row (and ``status``,
    if given), the event is recorded once as ``result``."""
    async with ledger.transaction(sessions) as session:
        if not await _claim(session, event):
            return Outcome("duplicate")
        row = await _lock_withdrawal(session, _match(withdrawal_id, payout_id, transfer_id,
                                                     stripe_account_id))
        if row is None or row.refunded:
            result = "unknown_withdrawal" if row is None else "already_refunded"
        else:
            values: dict[str, Any] = {"failure_reason": _reason(reason)}
            if status is not None:
                values["status"] = status
            await session.execute(update(StripeWithdrawal).where(StripeWithdrawal.id == row.id)
                                  .values(**values))
        await _settle(session, event, result)
    return Outcome(result, row.account_id if row else None)


async def mark_paid(sessions: Sessions, *, payout_id: str, withdrawal_id: str | None = None,
                    stripe_account_id: str | None = None, event: Event | None = None) -> Outcome:
    """``payout.paid``: the withdrawal is done (unless it was already refunded)."""
    async with ledger.transaction(sessions) as session:
        if not await _claim(session, event):
            return Outcome("duplicate")
        row = await _lock_withdrawal(session, _match(withdrawal_id, payout_id, None, stripe_account_id))
        if row is None or row.refunded:
            result = "unknown_withdrawal" if row is None else "already_refunded"
        else:
            await session.execute(update(StripeWithdrawal).where(StripeWithdrawal.id == row.id).values(
                status="paid", payout_id=row.payout_id or payout_id))
            result = "paid"
        await _settle(session, event, result)
    return Outcome(result, row.account_id if row else None)


async def list_withdrawals(sessions: Sessions, account_id: str, limit: int = 50) -> list[Withdrawal]:
    async with sessions() as session:
        rows = (await session.execute(
            select(*_WITHDRAWAL_COLUMNS).where(StripeWithdrawal.account_id == account_id)
            .order_by(StripeWithdrawal.created_at.desc(), StripeWithdrawal.id)
            .limit(max(1, min(limit, 200))))).all()
    return [_withdrawal(row) for row in rows]


async def get_withdrawal(sessions: Sessions, withdrawal_id: str) -> Withdrawal | None:
    async with sessions() as session:
        row = (await session.execute(select(*_WITHDRAWAL_COLUMNS)
                                     .where(StripeWithdrawal.id == withdrawal_id))).first()
    return _withdrawal(row) if row else None
