"""Every call darkbloom makes to Stripe, through the official library's async methods (an httpx
client, so no call blocks the event loop), pointed at ``DARKBLOOM_STRIPE_API_BASE``.

Calls that move money carry idempotency keys derived from our own ids (``wd-tr-<id>``,
``wd-po-<id>``, ``bs-<id>``), so the library's retries after a network error, and our own, can
never pay twice. Stripe's answers are read defensively: a field that is missing or of the wrong
type is a ``GatewayError``, never a crash. Messages never carry the secret key.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import stripe

from darkbloom.coordinator.store.stripe import AccountSnapshot

STRIPE_ID = re.compile(r"[A-Za-z0-9_]{1,100}", re.ASCII)
_TIMEOUT_S = 30.0
_RETRIES = 2  # the library retries connection errors, 409s and 5xx, reusing the idempotency key
MAX_WHOLE = 10**12  # cents ($10 billion) or unix seconds (year 33658): anything larger is not Stripe's


class GatewayError(Exception):
    """Stripe refused or could not be reached. ``ambiguous``: the request may have been carried
    out anyway (the connection failed after it was sent)."""

    def __init__(self, message: str, *, ambiguous: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.ambiguous = ambiguous


@dataclass(frozen=True, slots=True)
class CheckoutCreated:
    id: str
    url: str


@dataclass(frozen=True, slots=True)
class CheckoutState:
    """A Checkout Session as Stripe reports it (``status``: open | complete | expired)."""

    id: str
    status: str
    payment_status: str
    amount_total: int | None
    currency: str
    payment_intent: str | None


@dataclass(frozen=True, slots=True)
class PayoutCreated:
    id: str
    arrival_unix: int | None


def stripe_id(value: Any) -> str | None:
    """``value`` if it looks like a Stripe object id (``cs_…``, ``acct_…``, ``po_…``), else None;
    an expanded object gives its ``id``."""
    if isinstance(value, Mapping):
        value = value.get("id")
    return value if isinstance(value, str) and STRIPE_ID.fullmatch(value) else None


def whole(value: Any, limit: int = MAX_WHOLE) -> int | None:
    """A JSON integer from 0 to ``limit`` (not a bool, not a float), else None: Stripe's cents and
    unix times, bounded so that no odd value can overflow a column or the ledger's amounts."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= limit:
        return value
    return None


def account_status(account: Mapping[str, Any]) -> str:
    """billing.md §9: rejected (disabled for a ``rejected.*`` reason), ready (payouts enabled),
    restricted (details submitted, items still due), else pending."""
    requirements = account.get("requirements")
    requirements = requirements if isinstance(requirements, Mapping) else {}
    reason = requirements.get("disabled_reason")
    due = requirements.get("currently_due")
    if isinstance(reason, str) and reason.startswith("rejected"):
        return "rejected"
    if account.get("payouts_enabled") is True:
        return "ready"
    if account.get("details_submitted") is True and isinstance(due, list) and due:
        return "restricted"
    return "pending"


def snapshot(account: Mapping[str, Any]) -> AccountSnapshot:
    """What §9 keeps of a Stripe Account object: its status and its payout destination (the
    default external account, else the first): a bank, or a card (instant-eligible if debit)."""
    account_id = stripe_id(account.get("id"))
    if account_id is None:
        raise GatewayError("Stripe returned an account without a valid id")
    requirements = account.get("requirements")
    due = requirements.get("currently_due") if isinstance(requirements, Mapping) else None
    due = due if isinstance(due, list) else []
    currently_due = [item[:100] for item in due if isinstance(item, str)][:50]
    external = account.get("external_accounts")
    listed = external.get("data") if isinstance(external, Mapping) else None
    choices = [item for item in listed if isinstance(item, Mapping)][:100] if isinstance(listed, list) else []
    pick = next((item for item in choices if item.get("default_for_currency") is True),
                choices[0] if choices else None)
    kind, last4, instant = "", "", False
    if pick is not None:
        kind = {"bank_account": "bank", "card": "card"}.get(str(pick.get("object")), "")
        digits = pick.get("last4")
        last4 = digits if isinstance(digits, str) and len(digits) == 4 and digits.isdigit() else ""
        funding = pick.get("funding")
        instant = kind == "card" and isinstance(funding, str) and funding.lower() == "debit"
    return AccountSnapshot(account_id, account_status(account), kind, last4, instant, currently_due)


def _failure(exc: stripe.StripeError) -> GatewayError:
    ambiguous = isinstance(exc, stripe.APIConnectionError)
    if ambiguous:
        return GatewayError("could not reach Stripe", ambiguous=True)
    detail = exc.code or (exc.error.type if exc.error is not None else None) or "error"
    return GatewayError(f"Stripe answered {exc.http_status or 'an error'} ({str(detail)[:80]})")


class StripeGateway:
    """One per coordinator process (it holds the HTTP connection pool); ``close`` on shutdown."""

    def __init__(self, secret_key: str, api_base: str) -> None:
        # The library logs request and response bodies at DEBUG (customer emails, onboarding
        # links that work as bearer URLs): its own logger stays at WARNING whatever ours is.
        logging.getLogger("stripe").setLevel(logging.WARNING)
        base = api_base.rstrip("/")
        self._http = stripe.HTTPXClient(timeout=_TIMEOUT_S)
        self._client = stripe.StripeClient(
            secret_key, base_addresses={"api": base, "connect": base, "files": base},
            http_client=self._http, max_network_retries=_RETRIES)

    async def close(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]

    async def create_checkout(self, *, billing_session_id: str, account_id: str, amount_cents: int,
                              success_url: str, cancel_url: str, email: str | None,
                              referral_code: str | None) -> CheckoutCreated:
        metadata = {"billing_session_id": billing_session_id, "consumer_key": account_id}
        if referral_code:
            metadata["referral_code"] = referral_code
        try:
            made = await self._client.v1.checkout.sessions.create_async(
                {"mode": "payment", "success_url": success_url, "cancel_url": cancel_url,
                 "client_reference_id": billing_session_id, "metadata": metadata,
                 "payment_intent_data": {"metadata": {"billing_session_id": billing_session_id}},
                 "line_items": [{"quantity": 1, "price_data": {
                     "currency": "usd", "unit_amount": amount_cents,
                     "product_data": {"name": "Darkbloom credit"}}}],
                 **({"customer_email": email} if email else {})},
                {"idempotency_key": f"bs-{billing_session_id}"})
        except stripe.StripeError as exc:
            raise _failure(exc) from None
        answer = made.to_dict()
        session_id, url = stripe_id(answer.get("id")), answer.get("url")
        if session_id is None or not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise GatewayError("Stripe returned a checkout session without an id or url")
        return CheckoutCreated(session_id, url)

    async def retrieve_checkout(self, stripe_session_id: str) -> CheckoutState:
        try:
            found = await self._client.v1.checkout.sessions.retrieve_async(stripe_session_id)
        except stripe.StripeError as exc:
            raise _failure(exc) from None
        return checkout_state(found.to_dict())

    async def create_account(self, *, account_id: str, email: str | None, country: str) -> str:
        """An Express account for ``account_id``; the idempotency key makes two concurrent
        onboardings of one account (same country) get the same Stripe account."""
        try:
            made = await self._client.v1.accounts.create_async(
                {"type": "express", "country": country, "business_type": "individual",
                 "capabilities": {"transfers": {"requested": True},
                                  "card_payments": {"requested": True}},
                 "metadata": {"account_id": account_id},
                 **({"email": email} if email else {})},
                {"idempotency_key": f"acct-{account_id}-{country}"})
        except stripe.StripeError as exc:
            raise _failure(exc) from None
        return _made_id(made.to_dict(), "an account")

    async def account_link(self, stripe_account_id: str, return_url: str, refresh_url: str) -> str:
        try:
            link = await self._client.v1.account_links.create_async(
                {"account": stripe_account_id, "type": "account_onboarding",
                 "return_url": return_url, "refresh_url": refresh_url})
        except stripe.StripeError as exc:
            raise _failure(exc) from None
        url = link.to_dict().get("url")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise GatewayError("Stripe returned an account link without a url")
        return url

    async def retrieve_account(self, stripe_account_id: str) -> AccountSnapshot:
        try:
            found = await self._client.v1.accounts.retrieve_async(stripe_account_id)
        except stripe.StripeError as exc:
            raise _failure(exc) from None
        return snapshot(found.to_dict())

    async def create_transfer(self, *, withdrawal_id: str, destination: str, cents: int) -> str:
        """Move ``cents`` from the platform's balance to the Connect account (``wd-tr-<id>``)."""
        try:
            made = await self._client.v1.transfers.create_async(
                {"amount": cents, "currency": "usd", "destination": destination,
                 "transfer_group": f"wd-{withdrawal_id}", "description": "Darkbloom withdrawal",
                 "metadata": {"withdrawal_id": withdrawal_id}},
                {"idempotency_key": f"wd-tr-{withdrawal_id}"})
        except stripe.StripeError as exc:
            raise _failure(exc) from None
        return _made_id(made.to_dict(), "a transfer", ambiguous=True)

    async def find_transfer(self, withdrawal_id: str) -> str | None:
        """The transfer made for a withdrawal, if any: after an ambiguous failure, the way to know
        whether the money moved before refunding it."""
        try:
            listed = await self._client.v1.transfers.list_async(
                {"transfer_group": f"wd-{withdrawal_id}", "limit": 1})
        except stripe.StripeError as exc:
            raise _failure(exc) from None
        data = listed.to_dict().get("data")
        first = data[0] if isinstance(data, list) and data else None
        return stripe_id(first) if isinstance(first, Mapping) else None

    async def reverse_transfer(self, *, withdrawal_id: str, transfer_id: str) -> str:
        """Take a withdrawal's transfer back in full (``wd-rv-<id>``): after a failed payout the
        money is in the connected account's Stripe balance, and only once it is back with the
        platform may the user's darkbloom balance be refunded (else it is paid twice)."""
        try:
            made = await self._client.v1.transfers.reversals.create_async(
                transfer_id, {"metadata": {"withdrawal_id": withdrawal_id}},
                {"idempotency_key": f"wd-rv-{withdrawal_id}"})
        except stripe.StripeError as exc:
            raise _failure(exc) from None
        return _made_id(made.to_dict(), "a transfer reversal", ambiguous=True)

    async def create_payout(self, *, withdrawal_id: str, stripe_account_id: str, cents: int,
                            method: str) -> PayoutCreated:
        """Pay the Connect account's balance out to its bank or card (``wd-po-<id>``)."""
        try:
            made = await self._client.v1.payouts.create_async(
                {"amount": cents, "currency": "usd",
                 "method": "instant" if method == "instant" else "standard",
                 "description": "Darkbloom withdrawal", "metadata": {"withdrawal_id": withdrawal_id}},
                {"idempotency_key": f"wd-po-{withdrawal_id}", "stripe_account": stripe_account_id})
        except stripe.StripeError as exc:
            raise _failure(exc) from None
        answer = made.to_dict()
        return PayoutCreated(_made_id(answer, "a payout"), whole(answer.get("arrival_date")))


def _made_id(answer: Mapping[str, Any], what: str, ambiguous: bool = False) -> str:
    """The id of an object Stripe says it made; without a valid one, the call failed (``ambiguous``:
    the money may have moved all the same)."""
    if (made_id := stripe_id(answer.get("id"))) is None:
        raise GatewayError(f"Stripe returned {what} without a valid id", ambiguous=ambiguous)
    return made_id


def checkout_state(session: Mapping[str, Any]) -> CheckoutState:
    """The fields of a Checkout Session object (from the API or a webhook) that §6 reads."""
    session_id = stripe_id(session.get("id"))
    if session_id is None:
        raise GatewayError("a checkout session without a valid id")
    status, paid, currency = (session.get(name) for name in ("status", "payment_status", "currency"))
    return CheckoutState(session_id, status if isinstance(status, str) else "",
                         paid if isinstance(paid, str) else "", whole(session.get("amount_total")),
                         currency.lower() if isinstance(currency, str) else "",
                         stripe_id(session.get("payment_intent")))
