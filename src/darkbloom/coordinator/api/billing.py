"""Billing over HTTP (api.md §8): Stripe Checkout top-ups and their webhook, Connect onboarding,
status and withdrawals and their webhook.

Without ``DARKBLOOM_STRIPE_SECRET_KEY`` every Stripe route answers 503 ``billing_error``
(``/v1/billing/methods`` lists no methods and the Connect status says ``configured: false``), and
nothing else changes. Amounts are USD strings with at most two decimals (a JSON number is read
from its text, never through a float). Once a withdrawal has taken the money, the Stripe calls
run to the end even if the client hangs up, so no withdrawal is left half done by a disconnect.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from darkbloom.coordinator.api.auth import ApiKeyDep, SessionDep
from darkbloom.coordinator.api.bodies import json_object, openapi_body, read_body, rfc3339, string_field
from darkbloom.coordinator.api.ratelimit import (
    FINANCIAL,
    FinancialKeyDep,
    FinancialSessionDep,
    enforce,
    for_app,
)
from darkbloom.coordinator.money import format_usd, parse_usd
from darkbloom.coordinator.payments import (
    ETA,
    INSTANT_FEE_BPS,
    INSTANT_FEE_MIN_MICRO_USD,
    MIN_WITHDRAW_MICRO_USD,
    webhooks,
    withdrawal_amounts,
)
from darkbloom.coordinator.payments.stripe_gateway import GatewayError, StripeGateway
from darkbloom.coordinator.store import ledger, referrals
from darkbloom.coordinator.store import stripe as store
from darkbloom.coordinator.store.accounts import get_account, normalise_email
from darkbloom.errors import (
    BillingUnavailable,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    StripeFailed,
    TooManyRequests,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
MIN_CHECKOUT_MICRO_USD = 500_000  # $0.50
MAX_URL_CHARS = 2048
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    try:
        yield
    finally:
        gateway: StripeGateway | None = getattr(app.state, "stripe_gateway", None)
        if gateway is not None:
            await gateway.close()


router = APIRouter(lifespan=_lifespan)


def configured(request: Request) -> bool:
    key = request.app.state.settings.stripe_secret_key
    return key is not None and bool(key.get_secret_value())


def require_stripe(request: Request) -> None:
    if not configured(request):
        raise BillingUnavailable("Stripe is not configured on this coordinator "
                                 "(DARKBLOOM_STRIPE_SECRET_KEY)")


def stripe_gateway(request: Request, _: Annotated[None, Depends(require_stripe)]) -> StripeGateway:
    """This process's Stripe client, made on first use."""
    state = request.app.state
    gateway: StripeGateway | None = getattr(state, "stripe_gateway", None)
    if gateway is None:
        settings = state.settings
        gateway = state.stripe_gateway = StripeGateway(settings.stripe_secret_key.get_secret_value(),
                                                       settings.stripe_api_base)
    return gateway


# Declared before the caller's identity, so an unconfigured coordinator says 503 first.
StripeConfigured = Annotated[None, Depends(require_stripe)]
GatewayDep = Annotated[StripeGateway, Depends(stripe_gateway)]


def _usd(body: dict[str, Any], name: str = "amount_usd") -> int:
    """A dollar amount with at most two decimals, as a string (``"10.00"``) or a JSON number."""
    value = body.get(name)
    if value is None:
        raise InvalidRequest(f"{name} is required", param=name)
    if not isinstance(value, str):
        raise InvalidRequest(f'{name} must be a string of US dollars like "10.00"', param=name)
    try:
        return parse_usd(value, 2)
    except ValueError as exc:
        raise InvalidRequest(f"{name} {exc}", param=name) from None


def _cents_text(micro: int) -> str:
    return format_usd(micro - micro % 10_000, 2)


async def _shielded(work: Awaitable[T]) -> T:
    """Run ``work`` to the end even if this request is cancelled (the client went away); its
    outcome is then only in the database and the log."""
    task = asyncio.ensure_future(work)
    task.add_done_callback(lambda done: done.cancelled() or done.exception())
    return await asyncio.shield(task)


async def _may_ask_stripe(request: Request, account_id: str) -> bool:
    """Whether a lookup the caller can repeat at will (a pending session's or a Connect account's
    refresh) may call Stripe now: those calls spend the platform's Stripe rate limit, so each
    account gets the financial tier's pace for them, and past it is answered what is stored."""
    try:
        await for_app(request).hit(FINANCIAL, "stripe-lookup", account_id)
    except TooManyRequests:
        return False
    return True


async def _after_credit(request: Request, outcome: store.Outcome) -> None:
    """billing.md §6: a referral code given at checkout is applied once the money is in. A code
    that no longer applies (already referred, own code) is noted and the payment stands."""
    if outcome.result != "credited" or not outcome.referral_code or not outcome.account_id:
        return
    try:
        await referrals.apply_referral(request.app.state.sessions, outcome.account_id,
                                       outcome.referral_code)
    except referrals.ReferralError as exc:
        log.info("stripe: the checkout's referral code was not applied (%s)", exc.reason)
    except SQLAlchemyError as exc:
        log.warning("stripe: could not apply the checkout's referral code (%s)", type(exc).__name__)


# --- Methods and Checkout (billing.md §6) -------------------------------------------------------

@router.get("/v1/billing/methods")
async def methods(request: Request) -> dict[str, Any]:
    stripe_method = {"method": "stripe", "display_name": "Card (Stripe)", "currencies": ["USD"]}
    return {"methods": [stripe_method] if configured(request) else [],
            "referral": {"enabled": True,
                         "share_percent": int(request.app.state.settings.referral_share_pct)}}


async def _referral_code(request: Request, body: dict[str, Any], account_id: str) -> str | None:
    raw = string_field(body, "referral_code", referrals.MAX_CODE_INPUT, required=False)
    if raw is None or not raw.strip():
        return None
    code = referrals.normalise_code(raw)
    owner = await store.referral_owner(request.app.state.sessions, code) if code else None
    if code is None or owner is None:
        raise InvalidRequest("invalid referral code", param="referral_code", code="referral_error")
    if owner == account_id:
        raise InvalidRequest("you cannot use your own referral code", param="referral_code",
                             code="referral_error")
    return code


@router.post("/v1/billing/stripe/create-session",
             openapi_extra=openapi_body(("amount_usd",), amount_usd="string", email="string",
                                 referral_code="string"))
async def create_session(request: Request, gateway: GatewayDep, identity: FinancialKeyDep) -> dict[str, Any]:
    state = request.app.state
    settings = state.settings
    body = await json_object(request, numbers_as_text=True)
    amount = _usd(body)
    if amount < MIN_CHECKOUT_MICRO_USD:
        raise InvalidRequest("amount_usd must be at least 0.50", param="amount_usd")
    if amount > (most := settings.stripe_max_checkout_micro_usd):
        raise InvalidRequest(f"amount_usd must be at most {_cents_text(most)}", param="amount_usd")
    email: str | None = None
    if (given := string_field(body, "email", 1024, required=False)) is not None:
        if (email := normalise_email(given)) is None:
            raise InvalidRequest("email is not a valid email address", param="email")
    elif (account := await get_account(state.sessions, identity.account_id)) is not None:
        email = account.email
    code = await _referral_code(request, body, identity.account_id)
    checkout = await store.create_checkout(state.sessions, identity.account_id, amount, code)
    public = settings.public_url.rstrip("/")
    try:
        made = await _shielded(gateway.create_checkout(
            billing_session_id=checkout.id, account_id=identity.account_id,
            amount_cents=amount // 10_000, email=email, referral_code=code,
            success_url=f"{public}/billing?session_id={{CHECKOUT_SESSION_ID}}",
            cancel_url=f"{public}/billing?checkout=cancelled"))
    except GatewayError as exc:
        if not exc.ambiguous:
            await store.abandon_checkout(state.sessions, checkout.id)
        raise StripeFailed(f"could not open a Stripe Checkout session: {exc.message}") from None
    await store.attach_stripe_session(state.sessions, checkout.id, made.id)
    return {"session_id": checkout.id, "stripe_session": made.id, "url": made.url,
            "amount_usd": format_usd(amount, 2), "amount_micro_usd": amount}


async def _refresh_checkout(request: Request, gateway: StripeGateway, checkout: store.Checkout) -> None:
    """Ask Stripe about a pending session, so a payment shows at once even if the webhook is
    late; the same idempotent store calls as the webhook, so the two never both credit."""
    if checkout.status != "pending" or checkout.stripe_session_id is None:
        return
    sessions = request.app.state.sessions
    try:
        seen = await gateway.retrieve_checkout(checkout.stripe_session_id)
    except GatewayError as exc:
        log.info("stripe: could not refresh a checkout session (%s)", exc.message)
        return
    if seen.id != checkout.stripe_session_id:
        return
    if (seen.status == "complete" and seen.payment_status == "paid" and seen.currency == "usd"
            and seen.amount_total is not None and seen.amount_total >= 0):
        outcome = await _shielded(store.complete_checkout(
            sessions, stripe_session_id=seen.id, amount_total_cents=seen.amount_total,
            payment_intent_id=seen.payment_intent, billing_session_id=checkout.id))
        await _after_credit(request, outcome)
    elif seen.status == "expired":
        await store.expire_checkout(sessions, stripe_session_id=seen.id)


@router.get("/v1/billing/stripe/session")
async def checkout_session(request: Request, gateway: GatewayDep, identity: ApiKeyDep,
                           ref: Annotated[str, Query(alias="id", min_length=1, max_length=128)],
                           ) -> dict[str, Any]:
    sessions = request.app.state.sessions
    found = await store.find_checkout(sessions, identity.account_id, ref)
    if found is None:
        raise NotFound("billing session not found")
    if found.status == "pending" and await _may_ask_stripe(request, identity.account_id):
        await _refresh_checkout(request, gateway, found)
        found = await store.find_checkout(sessions, identity.account_id, ref) or found
    amount = found.credited_micro_usd if found.status == "completed" else found.amount_micro_usd
    return {"session_id": found.id, "payment_method": "stripe", "amount_micro_usd": amount,
            "status": found.status, "created_at": rfc3339(found.created_at),
            "completed_at": rfc3339(found.completed_at)}


async def _webhook(request: Request, endpoint: str, secret: str | None) -> dict[str, Any]:
    body = await read_body(request, webhooks.MAX_WEBHOOK_BYTES)
    gateway = stripe_gateway(request, None)

    async def reverse(withdrawal: store.Withdrawal) -> str:
        assert withdrawal.transfer_id is not None
        return await gateway.reverse_transfer(withdrawal_id=withdrawal.id, transfer_id=withdrawal.transfer_id)

    try:
        outcome = await webhooks.receive(request.app.state.sessions, endpoint, body,
                                         request.headers.get("stripe-signature"), secret,
                                         reverse_transfer=reverse)
    except webhooks.SignatureError as exc:
        log.warning("stripe %s webhook refused: %s", endpoint, exc)
        raise InvalidRequest(f"invalid Stripe signature: {exc}", code="invalid_signature") from None
    except webhooks.PayloadError as exc:
        raise InvalidRequest(f"invalid Stripe event: {exc}") from None
    except store.PaymentNotCredited:
        # Any non-2xx makes Stripe redeliver; by then the payment's own event has been credited.
        raise Conflict("this refund's payment is not credited yet; deliver it again later",
                       code="payment_not_credited") from None
    except GatewayError as exc:  # only the reversal of a failed payout's transfer calls Stripe
        raise StripeFailed(f"could not reverse the withdrawal's transfer ({exc.message}); nothing was "
                           "recorded, deliver the event again") from None
    await _after_credit(request, outcome)
    return {"received": True, "outcome": outcome.result}


def _secret(request: Request, name: str) -> str | None:
    value = getattr(request.app.state.settings, name)
    return value.get_secret_value() if value is not None else None


@router.post("/v1/billing/stripe/webhook")
async def checkout_webhook(request: Request, _: StripeConfigured) -> dict[str, Any]:
    return await _webhook(request, "checkout", _secret(request, "stripe_webhook_secret"))


# --- Connect (billing.md §9) --------------------------------------------------------------------

def _redirect(body: dict[str, Any], name: str, default: str, public_url: str) -> str:
    """A browser redirect target: on the configured public URL's host or localhost (no open
    redirect through Stripe's onboarding)."""
    given = string_field(body, name, MAX_URL_CHARS, required=False)
    if given is None or not given.strip():
        return default
    url = given.strip()
    allowed = set(_LOCAL_HOSTS)
    try:
        if public_host := urlsplit(public_url).hostname:
            allowed.add(public_host.lower())
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
    except ValueError:
        raise InvalidRequest(f"{name} is not a valid URL", param=name) from None
    # A browser reads "\" as "/" (``https://evil\@host/`` goes to evil), urlsplit does not: so no
    # backslash, no user-info (nothing legitimate needs one), nothing outside printable ASCII.
    if (parts.scheme not in ("http", "https") or not host or not url.isascii() or not url.isprintable()
            or " " in url or "\\" in url or "@" in parts.netloc):
        raise InvalidRequest(f"{name} must be a plain http(s) URL", param=name)
    if host not in allowed:
        raise InvalidRequest(f"{name} must point at {public_url} or localhost", param=name)
    return url


@router.post("/v1/billing/stripe/onboard",
             openapi_extra=openapi_body((), return_url="string", refresh_url="string", country="string"))
async def onboard(request: Request, gateway: GatewayDep, identity: SessionDep) -> dict[str, Any]:
    state = request.app.state
    public = state.settings.public_url.rstrip("/")
    body = await json_object(request, numbers_as_text=True)
    return_url = _redirect(body, "return_url", f"{public}/billing?stripe=return", public)
    refresh_url = _redirect(body, "refresh_url", f"{public}/billing?stripe=refresh", public)
    country = (string_field(body, "country", 8, required=False) or "").strip().upper() or None
    if country is not None and not (len(country) == 2 and country.isascii() and country.isalpha()):
        raise InvalidRequest("country must be a two-letter ISO 3166 code like \"US\"", param="country")
    existing = await store.get_connect(state.sessions, identity.account_id)
    if existing is not None and country in (None, existing.country):
        connect = existing
    elif existing is not None and existing.status == "ready":
        raise InvalidRequest("your Stripe account is ready; its country cannot change", param="country")
    else:
        # Each new country is a new Express account at Stripe: financial tier, like a checkout.
        await enforce(request, FINANCIAL, "account", identity.account_id)
        try:
            made = await _shielded(gateway.create_account(account_id=identity.account_id,
                                                          email=identity.email, country=country or "US"))
        except GatewayError as exc:
            raise StripeFailed(f"could not create a Stripe account: {exc.message}") from None
        connect = await store.save_connect(state.sessions, identity.account_id, made, country or "US")
    try:
        url = await gateway.account_link(connect.stripe_account_id, return_url, refresh_url)
    except GatewayError as exc:
        raise StripeFailed(f"could not create a Stripe onboarding link: {exc.message}") from None
    return {"url": url, "stripe_account_id": connect.stripe_account_id, "status": connect.status}


@router.get("/v1/billing/stripe/status")
async def connect_status(request: Request, identity: SessionDep,
                         refresh: Annotated[str | None, Query(max_length=8)] = None) -> dict[str, Any]:
    if not configured(request):
        return {"has_account": False, "configured": False}
    sessions = request.app.state.sessions
    connect = await store.get_connect(sessions, identity.account_id)
    if connect is not None and refresh in ("1", "true") and await _may_ask_stripe(request,
                                                                                 identity.account_id):
        try:
            seen = await stripe_gateway(request, None).retrieve_account(connect.stripe_account_id)
            if seen.stripe_account_id == connect.stripe_account_id:
                await store.apply_snapshot(sessions, seen, int(time.time()))
                connect = await store.get_connect(sessions, identity.account_id) or connect
        except GatewayError as exc:
            log.info("stripe: could not refresh a Connect account (%s)", exc.message)
    answer: dict[str, Any] = {
        "has_account": connect is not None, "configured": True,
        "stripe_account_id": connect.stripe_account_id if connect else "",
        "status": connect.status if connect else "",
        "destination_type": connect.destination_type if connect else "",
        "destination_last4": connect.destination_last4 if connect else "",
        "instant_eligible": connect.instant_eligible if connect else False,
        "min_withdraw_micro_usd": MIN_WITHDRAW_MICRO_USD, "instant_fee_bps": INSTANT_FEE_BPS,
        "instant_fee_min_usd": INSTANT_FEE_MIN_MICRO_USD / 1_000_000,  # api.md's shape: a number
    }
    if connect is not None:
        answer["currently_due"] = connect.currently_due
    return answer


async def _pay_out(request: Request, gateway: StripeGateway, withdrawal: store.Withdrawal) -> JSONResponse:
    """Transfer, then payout (billing.md §9 order and failure handling), after the debit."""
    sessions = request.app.state.sessions
    amounts = {"amount_usd": format_usd(withdrawal.amount_micro_usd, 2),
               "fee_usd": format_usd(withdrawal.fee_micro_usd, 2),
               "net_usd": format_usd(withdrawal.net_micro_usd, 2), "method": withdrawal.method}
    cents = withdrawal.net_micro_usd // 10_000
    try:
        transfer_id: str | None = await gateway.create_transfer(
            withdrawal_id=withdrawal.id, destination=withdrawal.stripe_account_id, cents=cents)
    except GatewayError as exc:
        transfer_id = None
        if exc.ambiguous:  # the transfer may have happened: look before refunding
            try:
                transfer_id = await gateway.find_transfer(withdrawal.id)
            except GatewayError:
                log.error("stripe: withdrawal %s: transfer outcome unknown (Stripe unreachable); "
                          "left pending for reconciliation, not refunded", withdrawal.id)
                raise StripeFailed("Stripe could not be reached; the withdrawal is pending until "
                                   "its transfer is confirmed or refunded") from None
        if transfer_id is None:
            await store.fail_withdrawal(sessions, f"transfer_failed: {exc.message}",
                                        withdrawal_id=withdrawal.id)
            raise StripeFailed("the transfer to your Stripe account failed; the amount was returned "
                               "to your balance") from None
    assert transfer_id is not None
    await store.mark_transferred(sessions, withdrawal.id, transfer_id)
    try:
        payout = await gateway.create_payout(withdrawal_id=withdrawal.id, cents=cents,
                                             stripe_account_id=withdrawal.stripe_account_id,
                                             method=withdrawal.method)
    except GatewayError as exc:
        await store.record_payout(sessions, withdrawal.id, payout_id=None,
                                  failure=f"payout_create_failed: {exc.message}")
        balance = await ledger.balance(sessions, withdrawal.account_id)
        return JSONResponse({
            "status": "transferred", "withdrawal_id": withdrawal.id, "transfer_id": transfer_id,
            **amounts, "balance_micro_usd": balance.balance_micro_usd,
            "message": "the transfer succeeded but the payout could not be started; the money is in "
                       "your Stripe account and arrives on Stripe's automatic payout schedule"},
            status_code=202)
    await store.record_payout(sessions, withdrawal.id, payout_id=payout.id, arrival_unix=payout.arrival_unix)
    balance = await ledger.balance(sessions, withdrawal.account_id)
    return JSONResponse({
        "status": "submitted", "withdrawal_id": withdrawal.id, "transfer_id": transfer_id,
        "payout_id": payout.id, **amounts, "eta": ETA[withdrawal.method],
        "arrival_unix": payout.arrival_unix, "balance_micro_usd": balance.balance_micro_usd})


@router.post("/v1/billing/withdraw/stripe",
             openapi_extra=openapi_body(("amount_usd",), amount_usd="string", method="string"))
async def withdraw(request: Request, gateway: GatewayDep, identity: FinancialSessionDep) -> JSONResponse:
    sessions = request.app.state.sessions
    body = await json_object(request, numbers_as_text=True)
    method = (string_field(body, "method", 16, required=False) or "standard").strip().lower()
    if method not in ETA:
        raise InvalidRequest("method must be 'standard' or 'instant'", param="method")
    gross = _usd(body)
    connect = await store.get_connect(sessions, identity.account_id)
    if connect is None or connect.status != "ready":
        raise Forbidden("link a bank account or debit card through Stripe before withdrawing "
                        "(POST /v1/billing/stripe/onboard)", code="not_onboarded")
    if await store.on_hold(sessions, identity.account_id):
        raise Forbidden("this account is on billing hold after a refund or dispute; contact support",
                        code="billing_hold")
    if method == "instant" and not connect.instant_eligible:
        raise InvalidRequest("instant payouts need a debit card destination; link one in Stripe",
                             param="method", code="instant_unavailable")
    if gross < MIN_WITHDRAW_MICRO_USD:
        raise InvalidRequest(f"the minimum withdrawal is {format_usd(MIN_WITHDRAW_MICRO_USD, 2)} USD",
                             param="amount_usd", code="below_minimum")
    amounts = withdrawal_amounts(gross, method)
    if amounts.net <= 0:
        raise InvalidRequest("nothing would be left to pay out after the fee", param="amount_usd",
                             code="below_minimum")
    try:
        withdrawal = await store.begin_withdrawal(sessions, identity.account_id, connect.stripe_account_id,
                                                  gross=gross, fee=amounts.fee, net=amounts.net,
                                                  method=method)
    except ledger.InsufficientFunds:
        raise InvalidRequest("your withdrawable balance is lower than amount_usd", param="amount_usd",
                             code="insufficient_withdrawable") from None
    return await _shielded(_pay_out(request, gateway, withdrawal))


@router.get("/v1/billing/stripe/withdrawals")
async def withdrawals(request: Request, _: StripeConfigured, identity: SessionDep,
                      limit: Annotated[int, Query(ge=1, le=200)] = 50) -> dict[str, Any]:
    rows = await store.list_withdrawals(request.app.state.sessions, identity.account_id, limit)
    return {"withdrawals": [{
        "id": row.id, "account_id": row.account_id, "stripe_account_id": row.stripe_account_id,
        "transfer_id": row.transfer_id, "payout_id": row.payout_id,
        "amount_micro_usd": row.amount_micro_usd, "fee_micro_usd": row.fee_micro_usd,
        "net_micro_usd": row.net_micro_usd, "method": row.method, "status": row.status,
        "failure_reason": row.failure_reason, "refunded": row.refunded,
        "created_at": rfc3339(row.created_at), "updated_at": rfc3339(row.updated_at)} for row in rows]}


@router.post("/v1/billing/stripe/connect/webhook")
async def connect_webhook(request: Request, _: StripeConfigured) -> dict[str, Any]:
    return await _webhook(request, "connect", _secret(request, "stripe_connect_webhook_secret"))
