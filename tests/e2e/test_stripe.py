"""Stripe Checkout, its webhook, Connect onboarding and withdrawals (api.md §8, billing.md §6, §9)
against a real coordinator process on SQLite and on PostgreSQL, talking to a fake Stripe HTTP
server (``fake_stripe.py``) through the official library. Webhook bodies are signed here, as
Stripe signs them. Balances are read from the coordinator's database, and the ledger audit must
come out clean at the end of each run."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from darkbloom.coordinator.payments.webhooks import sign
from darkbloom.coordinator.store import ledger, referrals
from darkbloom.coordinator.store.db import make_engine, make_sessionmaker
from darkbloom.coordinator.store.tables import LedgerEntry, StripeWithdrawal
from tests.conftest import drop_postgres_database, fresh_postgres_database
from tests.e2e.fake_stripe import FakeStripe
from tests.e2e.harness import Coordinator

T = TypeVar("T")
SECRET_KEY = "sk_test_" + uuid.uuid4().hex
WEBHOOK_SECRET = "whsec_checkout_" + uuid.uuid4().hex
CONNECT_SECRET = "whsec_connect_" + uuid.uuid4().hex
PUBLIC_URL = "https://console.example.com"
PASSWORD = "correct horse battery staple"


@dataclass
class Stack:
    coordinator: Coordinator
    fake: FakeStripe
    database_url: str

    def http(self, token: str | None = None) -> httpx.Client:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.coordinator.base_url, headers=headers, timeout=60)

    def db(self, work: Any) -> Any:
        """Run ``work(sessions)`` against the coordinator's database from this process."""
        async def run() -> Any:
            engine = make_engine(self.database_url)
            try:
                return await work(make_sessionmaker(engine))
            finally:
                await engine.dispose()
        return asyncio.run(run())

    def balance(self, account_id: str) -> ledger.Balances:
        result: ledger.Balances = self.db(lambda sessions: ledger.balance(sessions, account_id))
        return result

    def fund(self, account_id: str, micro_usd: int) -> None:
        """Withdrawable money, as provider earnings would be."""
        self.db(lambda sessions: ledger.credit(sessions, account_id, micro_usd, "admin_reward",
                                               f"e2e-{uuid.uuid4().hex}", withdrawable=True, actor="e2e"))

    def webhook(self, body: bytes, *, connect: bool = False, secret: str | None = None,
                at: float | None = None, header: str | None = None) -> httpx.Response:
        """Deliver ``body`` signed as Stripe would (or with the given Stripe-Signature ``header``)."""
        path = "/v1/billing/stripe/connect/webhook" if connect else "/v1/billing/stripe/webhook"
        header = header or sign(body, secret or (CONNECT_SECRET if connect else WEBHOOK_SECRET),
                                int(time.time() if at is None else at))
        return httpx.post(f"{self.coordinator.base_url}{path}", content=body, timeout=60,
                          headers={"stripe-signature": header, "content-type": "application/json"})


def start_stack(workdir: Path, url: str | None, **settings: Any) -> Stack:
    """A coordinator on ``url`` (None: SQLite in ``workdir``) talking to a fresh fake Stripe."""
    fake = FakeStripe(SECRET_KEY).start()
    coordinator = Coordinator(workdir, database_url=url, stripe_secret_key=SECRET_KEY,
                              stripe_webhook_secret=WEBHOOK_SECRET,
                              stripe_connect_webhook_secret=CONNECT_SECRET,
                              stripe_api_base=fake.url, public_url=PUBLIC_URL, **settings).start()
    database_url = url or f"sqlite+aiosqlite:///{(workdir / 'state' / 'coordinator.db').resolve()}"
    return Stack(coordinator, fake, database_url)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    pg_name, url = fresh_postgres_database() if request.param == "postgresql" else (None, None)
    built = start_stack(tmp_path_factory.mktemp(f"stripe-{request.param}"), url)
    try:
        yield built
        assert built.db(ledger.audit) == []
    finally:
        built.coordinator.stop()
        built.fake.stop()
        if pg_name:
            drop_postgres_database(pg_name)


def _signup(stack: Stack) -> dict[str, Any]:
    """A new account: its id, email and session token (a bearer: no CSRF needed)."""
    with stack.http() as http:
        answer = http.post("/v1/auth/signup", json={"email": f"u-{uuid.uuid4().hex[:10]}@example.com",
                                                    "password": PASSWORD})
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return dict(response.json()["error"])


def _checkout(stack: Stack, token: str, amount: Any = "10.00", **extra: Any) -> dict[str, Any]:
    with stack.http(token) as http:
        made = http.post("/v1/billing/stripe/create-session", json={"amount_usd": amount, **extra})
    assert made.status_code == 200, made.text
    return dict(made.json())


def _paid_event(stack: Stack, made: dict[str, Any], kind: str = "checkout.session.completed",
                event_id: str | None = None) -> bytes:
    return stack.fake.event(kind, stack.fake.pay(made["stripe_session"]), event_id=event_id)


def test_methods_list_stripe(stack: Stack) -> None:
    with stack.http() as http:
        body = http.get("/v1/billing/methods").json()
    assert body == {"methods": [{"method": "stripe", "display_name": "Card (Stripe)", "currencies": ["USD"]}],
                    "referral": {"enabled": True, "share_percent": 20}}


def test_checkout_credit_once_and_session_status(stack: Stack) -> None:
    user = _signup(stack)
    with stack.http(user["session_token"]) as http:
        key = http.post("/v1/auth/keys", json={"label": "billing"}).json()["api_key"]
    made = _checkout(stack, key, "10.00")
    assert set(made) == {"session_id", "stripe_session", "url", "amount_usd", "amount_micro_usd"}
    assert made["stripe_session"].startswith("cs_") and made["url"].startswith("https://checkout.stripe.com/")
    assert (made["amount_usd"], made["amount_micro_usd"]) == ("10.00", 10_000_000)
    [call] = [c for c in stack.fake.calls("POST /v1/checkout/sessions")
              if c.form["metadata[billing_session_id]"] == made["session_id"]]
    assert call.form["metadata[consumer_key]"] == user["account_id"]
    assert call.form["line_items[0][price_data][unit_amount]"] == "1000"
    assert call.form["line_items[0][price_data][currency]"] == "usd"
    assert call.form["success_url"] == f"{PUBLIC_URL}/billing?session_id={{CHECKOUT_SESSION_ID}}"
    assert call.form["customer_email"] == user["email"]
    assert call.headers["idempotency-key"] == f"bs-{made['session_id']}"

    with stack.http(key) as http:
        pending = http.get("/v1/billing/stripe/session", params={"id": made["session_id"]}).json()
    assert pending["status"] == "pending" and pending["completed_at"] is None
    assert pending["payment_method"] == "stripe" and pending["created_at"].endswith("Z")

    body = _paid_event(stack, made)
    first = stack.webhook(body)
    assert first.status_code == 200 and first.json()["outcome"] == "credited", first.text
    assert stack.webhook(body).json()["outcome"] == "duplicate"
    assert stack.balance(user["account_id"]) == ledger.Balances(10_000_000, 0)

    with stack.http(key) as http:
        done = http.get("/v1/billing/stripe/session", params={"id": made["stripe_session"]}).json()
    assert done["session_id"] == made["session_id"] and done["status"] == "completed"
    assert done["amount_micro_usd"] == 10_000_000 and done["completed_at"].endswith("Z")
    # Another account cannot see it.
    other = _signup(stack)
    with stack.http(other["session_token"]) as http:
        _error(http.get("/v1/billing/stripe/session", params={"id": made["session_id"]}), 404)
        _error(http.get("/v1/billing/stripe/session"), 400)


def test_concurrent_webhook_deliveries_credit_once(stack: Stack) -> None:
    user = _signup(stack)
    made = _checkout(stack, user["session_token"], "25.50")
    body = _paid_event(stack, made)
    answers: list[httpx.Response] = []
    threads = [threading.Thread(target=lambda: answers.append(stack.webhook(body))) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [a.status_code for a in answers] == [200] * 20
    assert sorted(a.json()["outcome"] for a in answers) == ["credited"] + ["duplicate"] * 19
    assert stack.balance(user["account_id"]) == ledger.Balances(25_500_000, 0)


def test_session_refresh_credits_before_the_webhook(stack: Stack) -> None:
    user = _signup(stack)
    made = _checkout(stack, user["session_token"], 12.5)  # a JSON number, read from its text
    assert made["amount_micro_usd"] == 12_500_000
    body = _paid_event(stack, made, kind="checkout.session.async_payment_succeeded")
    with stack.http(user["session_token"]) as http:
        seen = http.get("/v1/billing/stripe/session", params={"id": made["session_id"]}).json()
    assert seen["status"] == "completed" and seen["amount_micro_usd"] == 12_500_000
    assert stack.webhook(body).json()["outcome"] == "already_completed"
    assert stack.balance(user["account_id"]) == ledger.Balances(12_500_000, 0)
    # An abandoned session shows as expired.
    lapsed = _checkout(stack, user["session_token"], "1.00")
    stack.fake.expire(lapsed["stripe_session"])
    with stack.http(user["session_token"]) as http:
        assert http.get("/v1/billing/stripe/session",
                        params={"id": lapsed["session_id"]}).json()["status"] == "expired"


@pytest.mark.parametrize(("amount", "fragment"), [
    ("0.49", "at least 0.50"), ("10000.01", "at most 10000.00"), ("1.001", "decimal places"),
    ("-1", "negative"), ("1e2", "plain decimal"), ("", "plain decimal"), (" 5", "plain decimal"),
    (True, "string"), (None, "required"), ([5], "string"), ("NaN", "plain decimal"),
    ("9" * 40, "too large"), ("9" * 80, "too long"),
])
def test_checkout_amount_is_validated(stack: Stack, amount: Any, fragment: str) -> None:
    user = _signup(stack)
    with stack.http(user["session_token"]) as http:
        refused = _error(http.post("/v1/billing/stripe/create-session", json={"amount_usd": amount}), 400)
    assert fragment in refused["message"] and refused["param"] == "amount_usd"


def test_checkout_odd_bodies_are_4xx(stack: Stack) -> None:
    user = _signup(stack)
    with stack.http(user["session_token"]) as http:
        route = "/v1/billing/stripe/create-session"
        for raw in (b"{", b"[]", b'{"amount_usd": 1e999}', b'{"amount_usd": NaN}', b"\xff",
                    b'{"amount_usd": ' + b"1" * 5000 + b"}", b"[" * 50_000):
            answer = http.post(route, content=raw, headers={"content-type": "application/json"})
            assert answer.status_code == 400, (raw[:40], answer.text)
        assert http.post(route, content=b'{"amount_usd": "1.00"}',
                         headers={"content-type": "text/plain"}).status_code == 415
        big = http.post(route, content=b" " * (65 * 1024), headers={"content-type": "application/json"})
        assert big.status_code == 413
        _error(http.post(route, json={"amount_usd": "5.00", "email": "not-an-email"}), 400)
    with stack.http() as http:
        _error(http.post("/v1/billing/stripe/create-session", json={"amount_usd": "5.00"}), 401)


def test_referral_code_checked_then_applied_after_credit(stack: Stack) -> None:
    referrer, buyer = _signup(stack), _signup(stack)
    code = "REF-" + uuid.uuid4().hex[:6].upper()
    with stack.http(referrer["session_token"]) as http:
        assert http.post("/v1/referral/register", json={"code": code}).status_code == 200
        own = _error(http.post("/v1/billing/stripe/create-session",
                               json={"amount_usd": "5.00", "referral_code": code}), 400)
    assert "own" in own["message"]
    with stack.http(buyer["session_token"]) as http:
        for bad in ("x", "-AB-", "NOSUCHCODE1", 42):
            refused = _error(http.post("/v1/billing/stripe/create-session",
                                       json={"amount_usd": "5.00", "referral_code": bad}), 400)
            assert refused["param"] == "referral_code"
    made = _checkout(stack, buyer["session_token"], "5.00", referral_code=f"  {code.lower()} ")
    assert stack.db(lambda s: referrals.referrer_of(s, buyer["account_id"])) is None
    assert stack.webhook(_paid_event(stack, made)).json()["outcome"] == "credited"
    assert stack.db(lambda s: referrals.referrer_of(s, buyer["account_id"])) == referrer["account_id"]


def test_webhook_refusals(stack: Stack) -> None:
    user = _signup(stack)
    made = _checkout(stack, user["session_token"], "3.00")
    body = _paid_event(stack, made)
    for attempt in ({"secret": "whsec_wrong"}, {"at": time.time() - 400}, {"at": time.time() + 400},
                    {"secret": CONNECT_SECRET}):
        refused = stack.webhook(body, **attempt)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_signature"
    url = f"{stack.coordinator.base_url}/v1/billing/stripe/webhook"
    assert httpx.post(url, content=body).status_code == 400  # no signature at all
    huge = b"{" + b" " * (1024 * 1024) + b"}"
    signed = {"stripe-signature": sign(huge, WEBHOOK_SECRET, int(time.time()))}
    assert httpx.post(url, content=huge, headers=signed).status_code == 413
    assert stack.webhook(b'{"not": "an event"}').status_code == 400
    ignored = stack.webhook(stack.fake.event("customer.created", {"id": "cus_1"}))
    assert ignored.status_code == 200 and ignored.json()["outcome"] == "ignored"
    assert stack.balance(user["account_id"]) == ledger.Balances(0, 0)
    assert stack.webhook(body).json()["outcome"] == "credited"


def test_refund_and_dispute(stack: Stack) -> None:
    user = _signup(stack)
    made = _checkout(stack, user["session_token"], "8.00")
    paid = stack.fake.pay(made["stripe_session"])
    assert stack.webhook(stack.fake.event("checkout.session.completed", paid)).json()["outcome"] == "credited"
    charge = {"id": "ch_" + uuid.uuid4().hex[:12], "object": "charge", "amount": 800,
              "amount_refunded": 300, "payment_intent": paid["payment_intent"]}
    assert stack.webhook(stack.fake.event("charge.refunded", charge)).json()["outcome"] == "debited"
    assert stack.balance(user["account_id"]).balance_micro_usd == 5_000_000
    dispute = {"id": "dp_" + uuid.uuid4().hex[:12], "object": "dispute", "amount": 800,
               "charge": charge["id"], "payment_intent": paid["payment_intent"]}
    assert stack.webhook(stack.fake.event("charge.dispute.created", dispute)).json()["outcome"] == "debited"
    assert stack.balance(user["account_id"]) == ledger.Balances(0, 0)


def _onboard_ready(stack: Stack, user: dict[str, Any], *, card: bool = False,
                   via_refresh: bool = False) -> str:
    with stack.http(user["session_token"]) as http:
        made = http.post("/v1/billing/stripe/onboard", json={"country": "us",
                                                             "return_url": f"{PUBLIC_URL}/done"})
        assert made.status_code == 200, made.text
        body = made.json()
        assert set(body) == {"url", "stripe_account_id", "status"} and body["status"] == "pending"
        assert body["url"].startswith("https://connect.stripe.com/")
        again = http.post("/v1/billing/stripe/onboard", json={}).json()
        assert again["stripe_account_id"] == body["stripe_account_id"]  # reused, not a second account
        account = stack.fake.make_ready(body["stripe_account_id"], card=card)
        if via_refresh:
            status = http.get("/v1/billing/stripe/status", params={"refresh": "1"}).json()
        else:
            event = stack.fake.event("account.updated", account, account=body["stripe_account_id"])
            assert stack.webhook(event, connect=True).json()["outcome"] == "updated"
            status = http.get("/v1/billing/stripe/status").json()
    assert status["status"] == "ready" and status["has_account"] and status["configured"]
    assert status["instant_eligible"] is card
    assert status["destination_type"] == ("card" if card else "bank")
    assert (status["min_withdraw_micro_usd"], status["instant_fee_bps"], status["instant_fee_min_usd"]) \
        == (1_000_000, 150, 0.5)
    return str(body["stripe_account_id"])


def _withdrawals(stack: Stack, token: str) -> list[dict[str, Any]]:
    with stack.http(token) as http:
        listed = http.get("/v1/billing/stripe/withdrawals", params={"limit": 200})
    assert listed.status_code == 200, listed.text
    return list(listed.json()["withdrawals"])


def test_onboarding_redirects_and_status_before_onboarding(stack: Stack) -> None:
    user = _signup(stack)
    with stack.http(user["session_token"]) as http:
        assert http.get("/v1/billing/stripe/status").json()["has_account"] is False
        for name, url in (("return_url", "https://evil.example.net/x"),
                          ("refresh_url", "javascript:alert(1)"), ("return_url", "http://[::1")):
            _error(http.post("/v1/billing/stripe/onboard", json={name: url}), 400)
        _error(http.post("/v1/billing/stripe/onboard", json={"country": "USA"}), 400)
        ok = http.post("/v1/billing/stripe/onboard", json={"return_url": "http://localhost:3000/b"})
        assert ok.status_code == 200, ok.text
        refused = _error(http.post("/v1/billing/withdraw/stripe", json={"amount_usd": "5.00"}), 403)
        assert refused["code"] == "not_onboarded"
        key = http.post("/v1/auth/keys", json={}).json()["api_key"]
    with stack.http(key) as http:  # Connect routes are session-only
        assert http.get("/v1/billing/stripe/status").status_code == 403


def test_withdraw_standard_then_paid(stack: Stack) -> None:
    user = _signup(stack)
    acct = _onboard_ready(stack, user)
    stack.fund(user["account_id"], 20_000_000)
    with stack.http(user["session_token"]) as http:
        answer = http.post("/v1/billing/withdraw/stripe", json={"amount_usd": "5.00", "method": "standard"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"status", "withdrawal_id", "transfer_id", "payout_id", "amount_usd", "fee_usd",
                         "net_usd", "method", "eta", "arrival_unix", "balance_micro_usd"}
    assert (body["status"], body["amount_usd"], body["fee_usd"], body["net_usd"], body["eta"]) == \
        ("submitted", "5.00", "0.00", "5.00", "1-2 business days")
    assert body["balance_micro_usd"] == 15_000_000 and isinstance(body["arrival_unix"], int)
    wid = body["withdrawal_id"]
    [transfer] = [c for c in stack.fake.calls("POST /v1/transfers") if c.form.get("destination") == acct]
    assert (transfer.headers["idempotency-key"], transfer.form["amount"]) == (f"wd-tr-{wid}", "500")
    [payout] = [c for c in stack.fake.calls("POST /v1/payouts") if c.headers.get("stripe-account") == acct]
    assert (payout.headers["idempotency-key"], payout.form["method"]) == (f"wd-po-{wid}", "standard")
    [row] = _withdrawals(stack, user["session_token"])
    assert (row["status"], row["amount_micro_usd"], row["net_micro_usd"], row["refunded"]) == \
        ("transferred", 5_000_000, 5_000_000, False)
    paid = stack.fake.event("payout.paid", stack.fake.payout(body["payout_id"], status="paid"), account=acct)
    assert stack.webhook(paid, connect=True).json()["outcome"] == "paid"
    assert _withdrawals(stack, user["session_token"])[0]["status"] == "paid"
    assert stack.balance(user["account_id"]) == ledger.Balances(15_000_000, 15_000_000)


def test_withdraw_instant_fee_and_refusals(stack: Stack) -> None:
    user = _signup(stack)
    _onboard_ready(stack, user, card=True, via_refresh=True)
    stack.fund(user["account_id"], 30_000_000)
    platform_before = stack.balance(ledger.PLATFORM_ACCOUNT_ID).balance_micro_usd
    with stack.http(user["session_token"]) as http:
        answer = http.post("/v1/billing/withdraw/stripe", json={"amount_usd": "10.00", "method": "instant"})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["fee_usd"], body["net_usd"], body["eta"]) == ("0.50", "9.50", "~30 minutes")
        assert stack.fake.payout(body["payout_id"])["amount"] == 950
        for payload, code in (({"amount_usd": "0.99"}, "below_minimum"),
                              ({"amount_usd": "1000.00"}, "insufficient_withdrawable"),
                              ({"amount_usd": "5.00", "method": "express"}, "invalid_request_error"),
                              ({"amount_usd": "5.001"}, "invalid_request_error")):
            assert _error(http.post("/v1/billing/withdraw/stripe", json=payload), 400)["code"] == code
    assert stack.balance(ledger.PLATFORM_ACCOUNT_ID).balance_micro_usd == platform_before + 500_000
    assert stack.balance(user["account_id"]) == ledger.Balances(20_000_000, 20_000_000)
    # A bank destination cannot take instant payouts.
    banked = _signup(stack)
    _onboard_ready(stack, banked)
    stack.fund(banked["account_id"], 5_000_000)
    with stack.http(banked["session_token"]) as http:
        refused = _error(http.post("/v1/billing/withdraw/stripe",
                                   json={"amount_usd": "2.00", "method": "instant"}), 400)
    assert refused["code"] == "instant_unavailable"


def test_withdraw_failures(stack: Stack) -> None:
    user = _signup(stack)
    acct = _onboard_ready(stack, user, card=True)
    stack.fund(user["account_id"], 50_000_000)
    token = user["session_token"]
    with stack.http(token) as http:
        # Stripe refuses the transfer: refunded at once, 502.
        stack.fake.fail("POST /v1/transfers", status=400, code="balance_insufficient")
        failed = _error(http.post("/v1/billing/withdraw/stripe", json={"amount_usd": "4.00"}), 502)
        assert failed["type"] == "stripe_error" and "returned to your balance" in failed["message"]
        assert stack.balance(user["account_id"]) == ledger.Balances(50_000_000, 50_000_000)
        # The network fails before Stripe acted (every retry): it finds no transfer, so refunds.
        stack.fake.drop("POST /v1/transfers", times=3)
        _error(http.post("/v1/billing/withdraw/stripe", json={"amount_usd": "4.00"}), 502)
        assert stack.balance(user["account_id"]) == ledger.Balances(50_000_000, 50_000_000)
        # The payout call fails after a good transfer: 202, no refund.
        stack.fake.fail("POST /v1/payouts", status=400, code="payouts_not_allowed")
        accepted = http.post("/v1/billing/withdraw/stripe", json={"amount_usd": "6.00", "method": "instant"})
        assert accepted.status_code == 202, accepted.text
        held = accepted.json()
        assert held["status"] == "transferred" and held["transfer_id"].startswith("tr_") and held["message"]
        assert stack.balance(user["account_id"]).balance_micro_usd == 44_000_000
        # A payout that later fails is refunded once, however often Stripe says so.
        done = http.post("/v1/billing/withdraw/stripe",
                         json={"amount_usd": "7.00", "method": "instant"}).json()
    failed_payout = stack.fake.payout(done["payout_id"], status="failed", failure_code="could_not_process",
                                      failure_message="The bank could not process this payout")
    event = stack.fake.event("payout.failed", failed_payout, account=acct)
    assert stack.webhook(event, connect=True).json()["outcome"] == "refunded"
    assert stack.webhook(event, connect=True).json()["outcome"] == "duplicate"
    again = stack.fake.event("payout.canceled", failed_payout, account=acct)
    assert stack.webhook(again, connect=True).json()["outcome"] == "already_refunded"
    # The 202 withdrawal's transfer is reversed later: refunded too. Stripe sends this platform
    # event to the account-level endpoint; the same event at the Connect endpoint counts once.
    reversed_ = stack.fake.event("transfer.reversed", stack.fake.transfer(held["transfer_id"], reversed=True))
    assert stack.webhook(reversed_).json()["outcome"] == "refunded"
    assert stack.webhook(reversed_, connect=True).json()["outcome"] == "duplicate"
    assert stack.balance(user["account_id"]) == ledger.Balances(50_000_000, 50_000_000)
    rows = {row["id"]: row for row in _withdrawals(stack, token)}
    assert len(rows) == 4
    assert all(row["status"] == "failed" and row["refunded"] for row in rows.values())
    assert rows[held["withdrawal_id"]]["failure_reason"] == "transfer_reversed"
    assert rows[done["withdrawal_id"]]["failure_reason"].startswith("payout_failed: could_not_process")

    async def fee_rows(sessions: Any) -> list[tuple[str, int]]:
        async with sessions() as session:
            found = await session.execute(select(LedgerEntry.kind, LedgerEntry.amount_micro_usd).where(
                LedgerEntry.reference.in_([f"stripe_withdraw:{w}" for w in rows]),
                LedgerEntry.account_id == ledger.PLATFORM_ACCOUNT_ID).order_by(LedgerEntry.id))
            return [(kind, amount) for kind, amount in found.all()]
    fees = stack.db(fee_rows)  # every fee the platform booked went back with its refund
    assert sum(amount for _, amount in fees) == 0 and len(fees) == 4  # two instant withdrawals

    async def statuses(sessions: Any) -> set[str]:
        async with sessions() as session:
            found = await session.execute(select(StripeWithdrawal.status)
                                          .where(StripeWithdrawal.account_id == user["account_id"]))
            return set(found.scalars())
    assert stack.db(statuses) == {"failed"}


def test_withdrawals_listing_bounds(stack: Stack) -> None:
    user = _signup(stack)
    with stack.http(user["session_token"]) as http:
        assert http.get("/v1/billing/stripe/withdrawals").json() == {"withdrawals": []}
        for limit in ("0", "201", "x", "-1"):
            _error(http.get("/v1/billing/stripe/withdrawals", params={"limit": limit}), 400)


def _run(work: Awaitable[T]) -> T:
    return asyncio.run(work)  # type: ignore[arg-type]


def test_without_a_secret_key_stripe_routes_are_503(tmp_path: Path) -> None:
    coordinator = Coordinator(tmp_path).start()
    try:
        base = coordinator.base_url
        with httpx.Client(base_url=base, timeout=30) as http:
            assert http.get("/v1/billing/methods").json()["methods"] == []
            token = http.post("/v1/auth/signup", json={"email": f"n-{uuid.uuid4().hex[:8]}@example.com",
                                                       "password": PASSWORD}).json()["session_token"]
            http.headers["authorization"] = f"Bearer {token}"
            for method, path in (("POST", "/v1/billing/stripe/create-session"),
                                 ("GET", "/v1/billing/stripe/session?id=bs_x"),
                                 ("POST", "/v1/billing/stripe/webhook"),
                                 ("POST", "/v1/billing/stripe/onboard"),
                                 ("POST", "/v1/billing/withdraw/stripe"),
                                 ("GET", "/v1/billing/stripe/withdrawals"),
                                 ("POST", "/v1/billing/stripe/connect/webhook")):
                answer = http.request(method, path, json={"amount_usd": "5.00"})
                assert answer.status_code == 503, (path, answer.text)
                assert answer.json()["error"]["type"] == "billing_error"
            assert http.get("/v1/billing/stripe/status").json() == {"has_account": False, "configured": False}
            assert http.get("/v1/me").status_code == 200  # everything else works
            assert json.loads(http.get("/v1/models").text)["object"] == "list"
    finally:
        coordinator.stop()


def test_billing_hold_blocks_withdrawals(stack: Stack) -> None:
    """A dispute the balance cannot cover puts the account on hold; it cannot withdraw."""
    user = _signup(stack)
    _onboard_ready(stack, user)
    made = _checkout(stack, user["session_token"], "2.00")
    paid = stack.fake.pay(made["stripe_session"])
    assert stack.webhook(stack.fake.event("checkout.session.completed", paid)).json()["outcome"] == "credited"
    stack.db(lambda s: ledger.debit(s, user["account_id"], 1_500_000, "reserve", f"e2e-{uuid.uuid4().hex}"))
    dispute = {"id": "dp_" + uuid.uuid4().hex[:12], "object": "dispute", "amount": 200,
               "payment_intent": paid["payment_intent"]}
    assert stack.webhook(stack.fake.event("charge.dispute.created", dispute)).json()["outcome"] == "held"
    assert stack.balance(user["account_id"]).balance_micro_usd == 500_000  # nothing taken: held instead
    stack.fund(user["account_id"], 3_000_000)
    with stack.http(user["session_token"]) as http:
        refused = _error(http.post("/v1/billing/withdraw/stripe", json={"amount_usd": "1.00"}), 403)
    assert refused["code"] == "billing_hold"


_ROUTES = (("POST", "/v1/billing/stripe/create-session"), ("GET", "/v1/billing/stripe/session"),
           ("POST", "/v1/billing/stripe/webhook"), ("POST", "/v1/billing/stripe/onboard"),
           ("GET", "/v1/billing/stripe/status"), ("POST", "/v1/billing/withdraw/stripe"),
           ("GET", "/v1/billing/stripe/withdrawals"), ("POST", "/v1/billing/stripe/connect/webhook"),
           ("GET", "/v1/billing/methods"))
_LEAF = (st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats(allow_nan=False)
         | st.text(max_size=24) | st.sampled_from(["1.00", "0.50", "99999999.99", "1e3", "-0", "\x00",
                                                  "\ud800", "instant", "standard", "US",
                                                  "http://localhost/x"]))
_JSON = st.recursive(_LEAF, lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
_FIELDS = ("amount_usd", "method", "email", "referral_code", "return_url", "refresh_url", "country")
_BODY = st.one_of(st.dictionaries(st.sampled_from(_FIELDS), _JSON, max_size=4), _JSON)
_EVENT_TYPES = ("checkout.session.completed", "checkout.session.async_payment_succeeded",
                "checkout.session.expired", "charge.refunded", "charge.dispute.created", "account.updated",
                "payout.paid", "payout.failed", "payout.canceled", "transfer.reversed", "x")
_OBJECT_FIELDS = ("id", "payment_status", "amount_total", "currency", "payment_intent", "metadata",
                  "amount_refunded", "amount", "payouts_enabled", "requirements", "external_accounts",
                  "failure_code", "failure_message", "destination", "status")
_EVENT = st.builds(lambda kind, obj, created, account: {
    "id": f"evt_{uuid.uuid4().hex}", "type": kind, "created": created, "account": account,
    "data": {"object": obj}}, st.sampled_from(_EVENT_TYPES),
    st.dictionaries(st.sampled_from(_OBJECT_FIELDS), _JSON | st.sampled_from(["cs_x", "pi_x", "paid", "usd"]),
                    max_size=6),
    _JSON, _JSON)


@pytest.fixture(scope="module")
def fuzz_user(stack: Stack) -> dict[str, Any]:
    user = _signup(stack)
    _onboard_ready(stack, user, card=True)
    stack.fund(user["account_id"], 50_000_000)
    return user


@settings(max_examples=150, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(route=st.sampled_from(_ROUTES), body=_BODY,
       query=st.dictionaries(st.sampled_from(["id", "limit", "refresh"]), st.text(max_size=20), max_size=2))
def test_no_input_gives_a_5xx(stack: Stack, fuzz_user: dict[str, Any], route: tuple[str, str], body: Any,
                              query: dict[str, str]) -> None:
    method, path = route
    with stack.http(fuzz_user["session_token"]) as http:
        answer = http.request(method, path, params=query, content=json.dumps(body).encode(),
                              headers={"content-type": "application/json"})
    assert answer.status_code < 500, (route, body, answer.text)
    assert "error" in answer.json() if answer.status_code >= 400 else True


@settings(max_examples=150, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(event=_EVENT, connect=st.booleans())
def test_signed_odd_events_give_200_or_400(stack: Stack, event: dict[str, Any], connect: bool) -> None:
    answer = stack.webhook(json.dumps(event).encode(), connect=connect)
    assert answer.status_code in (200, 400), answer.text


def test_checkout_and_withdraw_are_financial_tier(tmp_path: Path) -> None:
    """api.md §1: 0.2/s, burst 3 per account, shared by checkout and withdrawals."""
    fake = FakeStripe(SECRET_KEY).start()
    coordinator = Coordinator(tmp_path, stripe_secret_key=SECRET_KEY, stripe_api_base=fake.url,
                              financial_rate_per_s="0.2", financial_burst="3").start()
    try:
        with httpx.Client(base_url=coordinator.base_url, timeout=30) as http:
            token = http.post("/v1/auth/signup", json={"email": f"r-{uuid.uuid4().hex[:8]}@example.com",
                                                       "password": PASSWORD}).json()["session_token"]
            http.headers["authorization"] = f"Bearer {token}"
            for _ in range(3):
                assert http.post("/v1/billing/stripe/create-session",
                                 json={"amount_usd": "1.00"}).status_code == 200
            limited = http.post("/v1/billing/withdraw/stripe", json={"amount_usd": "1.00"})
            assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
            assert http.post("/v1/billing/stripe/create-session",
                             json={"amount_usd": "1.00"}).status_code == 429
            assert http.get("/v1/billing/stripe/status").status_code == 200  # not a financial route
    finally:
        coordinator.stop()
        fake.stop()
