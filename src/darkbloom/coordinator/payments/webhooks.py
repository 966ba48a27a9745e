"""Stripe webhooks (billing.md §6, §9): the signature check, then each event type to one store call.

Signature (``Stripe-Signature: t=<unix>,v1=<hex>[,v1=…]``): the expected value is hex
HMAC-SHA256(secret, ``t + "." + raw body``), compared in constant time with every ``v1``; a
timestamp more than five minutes from now, in either direction, fails, and so does everything
when the secret is unset. Only then is the body parsed. Idempotency is the store's: the event id
is recorded in the same transaction as its effect, so a replay or a concurrent duplicate changes
nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.coordinator.payments.stripe_gateway import (
    GatewayError,
    checkout_state,
    snapshot,
    stripe_id,
    whole,
)
from darkbloom.coordinator.store import stripe as store

log = logging.getLogger(__name__)
MAX_WEBHOOK_BYTES = 1024 * 1024  # api.md §1: 1 MiB on Stripe webhooks
TOLERANCE_S = 300
MAX_HEADER_CHARS = 8192
MAX_SIGNATURES = 16
_EVENT_ID = re.compile(r"evt_[A-Za-z0-9_]{1,100}", re.ASCII)
_TYPE = re.compile(r"[a-z0-9_.]{1,64}", re.ASCII)

CHECKOUT_TYPES = frozenset({"checkout.session.completed", "checkout.session.async_payment_succeeded",
                            "checkout.session.expired", "charge.refunded", "charge.dispute.created",
                            "transfer.reversed"})
CONNECT_TYPES = frozenset({"account.updated", "payout.paid", "payout.failed", "payout.canceled",
                           "transfer.reversed"})


class SignatureError(ValueError):
    """The delivery is not provably Stripe's, or is too old or too new to accept."""


class PayloadError(ValueError):
    """A correctly signed body that is not a Stripe event."""


def sign(body: bytes, secret: str, timestamp: int) -> str:
    """The ``Stripe-Signature`` header Stripe would send (tests, the docs' example)."""
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(body: bytes, header: str | None, secret: str | None, now: float | None = None) -> None:
    """Raise SignatureError unless ``header`` signs ``body`` with ``secret`` within ±5 minutes."""
    if not secret:
        raise SignatureError("webhook signing secret is not configured")
    if not header or len(header) > MAX_HEADER_CHARS:
        raise SignatureError("missing or oversized Stripe-Signature header")
    timestamp: int | None = None
    signatures: list[bytes] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            if timestamp is not None or not (value.isascii() and value.isdigit() and len(value) <= 12):
                raise SignatureError("malformed timestamp in Stripe-Signature")
            timestamp = int(value)
        elif key == "v1" and len(signatures) < MAX_SIGNATURES:
            signatures.append(value.encode("utf-8", "surrogatepass"))
    if timestamp is None or not signatures:
        raise SignatureError("Stripe-Signature needs t= and at least one v1=")
    if abs((time.time() if now is None else now) - timestamp) > TOLERANCE_S:
        raise SignatureError("Stripe-Signature timestamp is outside the 5-minute tolerance")
    expected = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body,
                        hashlib.sha256).hexdigest().encode()
    matched = False
    for candidate in signatures:  # every one compared: the time taken does not say which matched
        matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise SignatureError("no v1 signature matches")


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    type: str
    created: int
    account: str | None  # the Connect account an event of a connected account is about
    object: Mapping[str, Any]


def parse(body: bytes) -> Event:
    """The envelope of a Stripe event; PayloadError if the body is not one."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise PayloadError("the body is not JSON") from None
    if not isinstance(data, dict):
        raise PayloadError("the body is not a JSON object")
    event_id, kind, inner = data.get("id"), data.get("type"), data.get("data")
    if not isinstance(event_id, str) or not _EVENT_ID.fullmatch(event_id):
        raise PayloadError("the event has no valid id")
    if not isinstance(kind, str) or not _TYPE.fullmatch(kind):
        raise PayloadError("the event has no valid type")
    obj = inner.get("object") if isinstance(inner, dict) else None
    if not isinstance(obj, dict):
        raise PayloadError("the event has no data.object")
    return Event(event_id, kind, whole(data.get("created")) or 0, stripe_id(data.get("account")), obj)


def _metadata(obj: Mapping[str, Any], name: str) -> str | None:
    metadata = obj.get("metadata")
    value = metadata.get(name) if isinstance(metadata, Mapping) else None
    return value if isinstance(value, str) and 0 < len(value) <= 100 else None


def _text(value: Any, limit: int = 120) -> str:
    return value[:limit] if isinstance(value, str) else ""


Sessions = async_sessionmaker[AsyncSession]


async def handle_checkout(sessions: Sessions, event: Event) -> store.Outcome:
    """Checkout, refund, dispute and reversed-transfer events (the platform's own account's
    endpoint). Other types are ignored."""
    if event.type not in CHECKOUT_TYPES:
        return store.Outcome("ignored")
    ref = store.Event(event.id, "checkout", event.type)
    obj = event.object
    if event.type in ("checkout.session.completed", "checkout.session.async_payment_succeeded"):
        try:
            state = checkout_state(obj)
        except GatewayError:
            return store.Outcome("ignored")
        if state.payment_status != "paid":
            return store.Outcome("not_paid")  # an async payment: its own event comes when it clears
        if state.currency != "usd" or state.amount_total is None or state.amount_total < 0:
            log.warning("stripe: a paid checkout session in %r or without an amount; ignored",
                        state.currency[:8])
            return store.Outcome("ignored")
        return await store.complete_checkout(
            sessions, stripe_session_id=state.id, amount_total_cents=state.amount_total,
            payment_intent_id=state.payment_intent,
            billing_session_id=_metadata(obj, "billing_session_id"), event=ref)
    if event.type == "checkout.session.expired":
        if (session_id := stripe_id(obj.get("id"))) is None:
            return store.Outcome("ignored")
        return await store.expire_checkout(sessions, stripe_session_id=session_id, event=ref)
    if event.type in ("charge.refunded", "charge.dispute.created"):
        object_id, intent = stripe_id(obj.get("id")), stripe_id(obj.get("payment_intent"))
        refund = event.type == "charge.refunded"
        cents = whole(obj.get("amount_refunded" if refund else "amount"))
        if object_id is None or intent is None or cents is None or cents <= 0:
            return store.Outcome("ignored")
        reference = f"stripe_refund:{object_id}:{cents}" if refund else f"stripe_dispute:{object_id}"
        return await store.reverse_payment(sessions, payment_intent_id=intent, cents=cents,
                                           reference=reference, cumulative=refund,
                                           billing_session_id=_metadata(obj, "billing_session_id"),
                                           event=ref)
    if event.type == "transfer.reversed":
        return await _transfer_reversed(sessions, event, ref)
    return store.Outcome("ignored")


Reverse = Callable[[store.Withdrawal], Awaitable[object]]


async def handle_connect(sessions: Sessions, event: Event, reverse_transfer: Reverse | None = None,
                         ) -> store.Outcome:
    """Connect events (the Connect endpoint): account state, payouts, reversed transfers.

    A failed or canceled payout leaves the money in the connected account's Stripe balance, where
    Stripe's payout schedule (or the user's dashboard) can still pay it out; so the transfer is
    reversed (``reverse_transfer``, the gateway) before the user's balance is refunded. Stripe
    refusing the reversal leaves the withdrawal unrefunded for an operator (``reversal_refused``);
    Stripe unreachable raises GatewayError with nothing recorded, so Stripe redelivers the event.
    Without ``reverse_transfer`` (store tests) the refund follows the payout failure at once."""
    if event.type not in CONNECT_TYPES:
        return store.Outcome("ignored")
    ref = store.Event(event.id, "connect", event.type)
    obj = event.object
    if event.type == "account.updated":
        try:
            view = snapshot(obj)
        except GatewayError:
            return store.Outcome("ignored")
        return await store.apply_snapshot(sessions, view, event.created, event=ref)
    if event.type in ("payout.paid", "payout.failed", "payout.canceled"):
        if (payout_id := stripe_id(obj.get("id"))) is None:
            return store.Outcome("ignored")
        withdrawal_id = _metadata(obj, "withdrawal_id")
        if event.type == "payout.paid":
            return await store.mark_paid(sessions, payout_id=payout_id, withdrawal_id=withdrawal_id,
                                         stripe_account_id=event.account, event=ref)
        reason = f"{event.type.replace('.', '_')}: {_text(obj.get('failure_code'), 60)} " \
                 f"{_text(obj.get('failure_message'))}".strip()
        if reverse_transfer is not None:
            refused = await _take_back(sessions, event, payout_id, withdrawal_id, reverse_transfer)
            if refused is not None:
                withdrawal, why = refused
                log.error("stripe: withdrawal %s: payout failed but %s; not refunded, needs an operator",
                          withdrawal, why)
                return await store.flag_withdrawal(sessions, f"{reason}; {why}", "reversal_refused",
                                                   status="failed", withdrawal_id=withdrawal, event=ref)
        return await store.fail_withdrawal(sessions, reason, payout_id=payout_id,
                                           withdrawal_id=withdrawal_id,
                                           stripe_account_id=event.account, event=ref)
    if event.type == "transfer.reversed":
        return await _transfer_reversed(sessions, event, ref)
    return store.Outcome("ignored")


async def _take_back(sessions: Sessions, event: Event, payout_id: str, withdrawal_id: str | None,
                     reverse_transfer: Reverse) -> tuple[str, str] | None:
    """Reverse the transfer of the withdrawal a failed payout belongs to, unless it is unknown or
    already refunded. Returns (withdrawal id, why) when Stripe refused, so no refund may follow;
    raises GatewayError when Stripe could not be reached (the event is then not recorded)."""
    found = await store.find_withdrawal(sessions, payout_id=payout_id, withdrawal_id=withdrawal_id,
                                        stripe_account_id=event.account)
    if found is None or found.refunded:
        return None
    if found.transfer_id is None:
        return found.id, "it has no transfer to reverse"
    try:
        await reverse_transfer(found)
    except GatewayError as exc:
        if exc.ambiguous:
            raise
        return found.id, f"the transfer reversal was refused ({exc.message})"
    return None


async def _transfer_reversed(sessions: Sessions, event: Event, ref: store.Event) -> store.Outcome:
    """A withdrawal's transfer taken back: refunded like a failed payout. Transfers belong to the
    platform's account, so Stripe sends this to an account-level endpoint (the Checkout one); the
    Connect endpoint takes it too (api.md §8). Event ids are shared, so it counts once."""
    obj = event.object
    if (transfer_id := stripe_id(obj.get("id"))) is None:
        return store.Outcome("ignored")
    match = {"transfer_id": transfer_id, "withdrawal_id": _metadata(obj, "withdrawal_id"),
             "stripe_account_id": stripe_id(obj.get("destination"))}
    if not _fully_reversed(obj):
        # Stripe sends this for partial reversals too: the user kept the rest, so no refund.
        log.warning("stripe: transfer %s reversed in part; the withdrawal needs an operator", transfer_id)
        back = whole(obj.get("amount_reversed"))
        return await store.flag_withdrawal(sessions, f"transfer reversed in part ({back} cents)",
                                           "partial_reversal", event=ref, **match)
    return await store.fail_withdrawal(sessions, "transfer_reversed", event=ref, **match)


def _fully_reversed(transfer: Mapping[str, Any]) -> bool:
    """Stripe's ``reversed`` flag when it is there; else whether ``amount_reversed`` reaches
    ``amount`` (an object without either counts as reversed, as the event type says)."""
    flag = transfer.get("reversed")
    if isinstance(flag, bool):
        return flag
    amount, back = whole(transfer.get("amount")), whole(transfer.get("amount_reversed"))
    return amount is None or back is None or back >= amount


async def receive(sessions: Sessions, endpoint: str, body: bytes, header: str | None,
                  secret: str | None, now: float | None = None, *,
                  reverse_transfer: Reverse | None = None) -> store.Outcome:
    """One delivery, end to end: verify (SignatureError), parse (PayloadError), act. Raises
    store.PaymentNotCredited or GatewayError (nothing recorded) when Stripe should redeliver."""
    verify(body, header, secret, now)
    event = parse(body)
    if endpoint == "checkout":
        return await handle_checkout(sessions, event)
    return await handle_connect(sessions, event, reverse_transfer)
