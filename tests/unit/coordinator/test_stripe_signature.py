"""The pure parts of the Stripe integration: the webhook signature check (billing.md §6), the event
envelope parser, the Connect account reading, and the withdrawal numbers (§9)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest
import stripe

from darkbloom.coordinator.payments import (
    INSTANT_FEE_MIN_MICRO_USD,
    withdrawal_amounts,
)
from darkbloom.coordinator.payments.stripe_gateway import account_status, snapshot, stripe_id
from darkbloom.coordinator.payments.webhooks import PayloadError, SignatureError, parse, sign, verify

SECRET = "whsec_unit"
BODY = b'{"id":"evt_1","type":"checkout.session.completed","data":{"object":{}}}'
NOW = 1_800_000_000


def _v1(body: bytes, t: int, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()


def test_our_signature_is_stripes() -> None:
    """What ``sign`` produces, the official library accepts, and the other way round."""
    t = int(time.time())
    header = sign(BODY, SECRET, t)
    stripe.WebhookSignature.verify_header(BODY.decode(), header, SECRET, tolerance=300)
    theirs = stripe.WebhookSignature._compute_signature(f"{t}.{BODY.decode()}", SECRET)
    verify(BODY, f"t={t},v1={theirs}", SECRET)


@pytest.mark.parametrize("offset", [0, 300, -300, 299, -1])
def test_within_five_minutes_either_way(offset: int) -> None:
    verify(BODY, sign(BODY, SECRET, NOW + offset), SECRET, now=NOW)


@pytest.mark.parametrize("offset", [301, -301, 86_400, -86_400])
def test_stale_and_future_timestamps_are_refused(offset: int) -> None:
    with pytest.raises(SignatureError, match="tolerance"):
        verify(BODY, sign(BODY, SECRET, NOW + offset), SECRET, now=NOW)


def test_any_v1_may_match_and_other_schemes_are_ignored() -> None:
    good = _v1(BODY, NOW)
    verify(BODY, f"t={NOW},v0=abc,v1={'0' * 64},v1={good}", SECRET, now=NOW)  # secret rotation
    verify(BODY, f" t={NOW} , v1={good} ,junk", SECRET, now=NOW)
    with pytest.raises(SignatureError):
        verify(BODY, f"t={NOW},v0={good}", SECRET, now=NOW)


@pytest.mark.parametrize("header", [
    None, "", "garbage", f"v1={'a' * 64}", f"t={NOW}", f"t=,v1={'a' * 64}", f"t=-{NOW},v1={'a' * 64}",
    f"t={NOW}.5,v1={'a' * 64}", f"t=1e9,v1={'a' * 64}", f"t=\u0661\u0662,v1={'a' * 64}",
    f"t={'9' * 40},v1={'a' * 64}", "t=1," * 5000, f"t={NOW},v1=\u00e9\ud800",
])
def test_malformed_headers_are_refused(header: str | None) -> None:
    with pytest.raises(SignatureError):
        verify(BODY, header, SECRET, now=NOW)


def test_two_timestamps_are_ambiguous_and_refused() -> None:
    with pytest.raises(SignatureError):
        verify(BODY, f"t={NOW},t={NOW + 1},v1={_v1(BODY, NOW)}", SECRET, now=NOW)


def test_wrong_secret_tampered_body_and_no_secret() -> None:
    header = sign(BODY, SECRET, NOW)
    for secret in ("whsec_other", None, ""):
        with pytest.raises(SignatureError):
            verify(BODY, header, secret, now=NOW)
    with pytest.raises(SignatureError):
        verify(BODY + b" ", header, SECRET, now=NOW)
    with pytest.raises(SignatureError):  # the signature binds the timestamp too
        verify(BODY, header.replace(f"t={NOW}", f"t={NOW + 1}"), SECRET, now=NOW)


def test_parse_reads_the_envelope_and_refuses_what_is_not_an_event() -> None:
    event = parse(json.dumps({"id": "evt_1", "type": "payout.paid", "created": 5, "account": "acct_1",
                              "data": {"object": {"id": "po_1"}}}).encode())
    assert (event.id, event.type, event.created, event.account, event.object) == \
        ("evt_1", "payout.paid", 5, "acct_1", {"id": "po_1"})
    for body in (b"", b"[]", b"\xff\xfe", b"{" * 100_000, b'{"id": "evt_1"}',
                 b'{"id": 1, "type": "x", "data": {"object": {}}}',
                 b'{"id": "evt_1", "type": "x", "data": {"object": []}}',
                 b'{"id": "evt_1", "type": "X Y", "data": {"object": {}}}',
                 b'{"id": "nope", "type": "x", "data": {"object": {}}}'):
        with pytest.raises(PayloadError):
            parse(body)
    # Odd optional fields are dropped, not trusted.
    odd = parse(b'{"id": "evt_2", "type": "x", "created": true, "account": "../x", "data": {"object": {}}}')
    assert (odd.created, odd.account) == (0, None)


def test_stripe_ids() -> None:
    assert stripe_id("cs_test_a1") == "cs_test_a1"
    assert stripe_id({"id": "pi_1"}) == "pi_1"
    for bad in (None, 1, "", "a" * 101, "cs_1 OR 1=1", "acct/../x", "\u00e9"):
        assert stripe_id(bad) is None


def test_account_status_and_destination() -> None:
    assert account_status({}) == "pending"
    assert account_status({"payouts_enabled": True}) == "ready"
    due = {"details_submitted": True, "requirements": {"currently_due": ["x"]}}
    assert account_status(due) == "restricted"
    assert account_status({"details_submitted": True, "requirements": {"currently_due": []}}) == "pending"
    assert account_status({"payouts_enabled": True,
                           "requirements": {"disabled_reason": "rejected.terms_of_service"}}) == "rejected"
    view = snapshot({"id": "acct_1", "payouts_enabled": True, "external_accounts": {"data": [
        {"object": "bank_account", "last4": "6789"},
        {"object": "card", "last4": "4242", "funding": "debit", "default_for_currency": True}]}})
    assert (view.destination_type, view.destination_last4, view.instant_eligible) == ("card", "4242", True)
    credit = snapshot({"id": "acct_1", "external_accounts": {"data": [
        {"object": "card", "last4": "42x2", "funding": "credit"}]}})
    assert (credit.destination_type, credit.destination_last4, credit.instant_eligible) == ("card", "", False)
    bank = snapshot({"id": "acct_1", "external_accounts": {"data": "nonsense"}, "requirements": []})
    assert (bank.destination_type, bank.status, bank.currently_due) == ("", "pending", [])


@pytest.mark.parametrize(("gross", "method", "fee", "net"), [
    (1_000_000, "standard", 0, 1_000_000),
    (1_000_000, "instant", 500_000, 500_000),  # the $0.50 floor
    (33_330_000, "instant", 500_000, 32_830_000),  # 1.5 % is 0.49995: the floor applies
    (100_000_000, "instant", 1_500_000, 98_500_000),
    (100_010_000, "instant", 1_510_000, 98_500_000),  # fee 1.50015 + sub-cent dust: whole cents
    (500_000, "instant", 500_000, 0),  # nothing left: the route refuses it
])
def test_withdrawal_amounts(gross: int, method: str, fee: int, net: int) -> None:
    amounts = withdrawal_amounts(gross, method)
    assert (amounts.fee, amounts.net) == (fee, net)
    assert amounts.gross == amounts.fee + amounts.net and amounts.net % 10_000 == 0
    if method == "instant":
        assert amounts.fee >= INSTANT_FEE_MIN_MICRO_USD
