"""The API keys and Billing pages in Chromium: keys listed by prefix only, a new key shown once and
gone on reload, revoke (a named "Revoke", then "Confirm revoke") that stops the key working; an
invite code and a Stripe Checkout (the fake Stripe server, Checkout's page stubbed) that raise the
balance shown; usage rows of a real request, the spend chart, and "Load more"."""

from __future__ import annotations

import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import openai
from playwright.sync_api import Route, expect

from darkbloom.coordinator.store import invites, ledger
from darkbloom.coordinator.store.tables import UsageRecord
from tests.browser.conftest import ConsoleStack, Ui
from tests.e2e.harness import MODEL

NO_STORAGE = "() => Object.keys(localStorage).length + Object.keys(sessionStorage).length"


def _db(stack: ConsoleStack, work: Any) -> Any:
    """``stack.db`` from a thread of its own: Playwright's sync API keeps an event loop running in
    this one, where ``asyncio.run`` refuses to start."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(stack.db, work).result()


def _works(stack: ConsoleStack, key: str) -> int:
    return httpx.get(f"{stack.url}/v1/payments/balance", headers={"authorization": f"Bearer {key}"},
                     timeout=30).status_code


def test_keys_are_listed_created_once_and_revoked(ui: Ui) -> None:
    page, stack = ui.page, ui.stack
    _, first = ui.sign_up()
    ui.goto("/keys")
    expect(page.get_by_role("heading", name="API keys", exact=True)).to_be_visible()
    expect(page.locator("tr", has=page.get_by_text(f"{first[:12]}…"))).to_have_count(1)
    assert first not in page.content()  # the first key was shown once, at sign-up

    label = f"ci-{uuid.uuid4().hex[:6]}"
    page.get_by_label("Label").fill(label)
    page.get_by_role("button", name="Create key").click()
    shown = page.locator("#new-key-value")
    expect(shown).to_have_text(re.compile(r"^sk-db-[0-9a-f]{64}$"))
    second = shown.inner_text()
    assert second != first
    expect(page.get_by_role("heading", name="Your new API key")).to_be_focused()
    row = page.locator("tr", has=page.get_by_text(f"{second[:12]}…"))
    expect(row).to_contain_text(label)
    assert page.evaluate(NO_STORAGE) == 0
    assert _works(stack, second) == 200

    page.reload()  # shown once: after a reload only its prefix is left
    assert second not in page.content()
    expect(page.locator("#new-key")).to_be_hidden()
    row = page.locator("tr", has=page.get_by_text(f"{second[:12]}…"))
    expect(row).to_contain_text(label)
    curl = page.locator("#snippet-curl")
    expect(curl).to_contain_text(f"{stack.url}/v1/chat/completions")
    page.get_by_text("Python (anthropic)").click()
    expect(page.locator("#snippet-python-anthropic")).to_contain_text(f'base_url="{stack.url}"')
    ui.shot("keys")

    revoke = row.get_by_role("button", name="Revoke", exact=True)
    expect(revoke).to_have_accessible_description(re.compile(re.escape(label)))
    expect(page.get_by_role("button", name="Revoke", exact=True)).to_have_count(2)
    revoke.click()
    confirm = row.get_by_role("button", name="Confirm revoke")
    expect(confirm).to_be_focused()
    row.get_by_role("button", name="Cancel").click()  # a step back keeps the key
    expect(revoke).to_be_focused()
    revoke.press("Enter")  # keyboard alone does it too
    confirm.press("Enter")
    expect(row).to_have_count(0)
    expect(page.get_by_role("status")).to_contain_text(f"{second[:12]}… revoked")
    assert _works(stack, second) == 401
    assert _works(stack, first) == 200
    page.reload()
    assert page.get_by_role("button", name="Revoke", exact=True).count() == 1


def _usage(account_id: str, at: datetime, n: int) -> UsageRecord:
    return UsageRecord(request_id=f"older-{uuid.uuid4().hex[:20]}-{n}", account_id=account_id,
                       endpoint="/v1/chat/completions", model="older-model", prompt_tokens=n,
                       completion_tokens=1, cost_micro_usd=n, provider_payout_micro_usd=n,
                       platform_fee_micro_usd=0, referral_reward_micro_usd=0, status="completed",
                       self_routed=False, duration_ms=1.0, created_at=at)


def _fulfil_checkout(route: Route) -> None:
    route.fulfill(status=200, content_type="text/html",
                  body="<!doctype html><title>Checkout</title><p>Stripe Checkout (stub)</p>")


def test_invite_checkout_usage_and_chart(ui: Ui, console: ConsoleStack) -> None:
    page = ui.page
    _, key = ui.sign_up()
    account_id = ui.account_id()
    ui.goto("/billing")
    credits = page.locator("#balance-credits")
    expect(credits).to_have_text("$0.00")
    expect(page.locator("#usage-empty")).to_be_visible()

    # An invite code, made as an admin would: redeemed through the page.
    made: Any = _db(console, lambda s: invites.create_invite(s, amount_micro_usd=2_500_000,
                                                           actor="browser-test"))
    page.get_by_label("Invite code").fill(made.code.lower())
    page.get_by_role("button", name="Redeem").click()
    expect(credits).to_have_text("$2.50")
    expect(page.locator("#balance-status")).to_contain_text("Invite code redeemed: $2.50")
    assert _db(console, lambda s: ledger.balance(s, account_id)).balance_micro_usd == 2_500_000
    ui.expect_status(400)
    page.get_by_label("Invite code").fill(made.code)
    page.get_by_role("button", name="Redeem").click()  # once per account
    expect(page.locator("#invite-error")).to_have_text("you have already redeemed this invite code")

    # Buy credits: to Checkout (stubbed), paid at the fake Stripe, back to the success URL.
    page.route("https://checkout.stripe.com/**", _fulfil_checkout)
    page.get_by_label("Amount (USD)").fill("12.34")
    page.get_by_role("button", name="Buy credits").click()
    page.wait_for_url(re.compile(r"^https://checkout\.stripe\.com/c/pay/cs_"))
    stripe_session = page.url.rsplit("/", 1)[-1]
    console.fake.pay(stripe_session)
    ui.goto(f"/billing?session_id={stripe_session}")
    expect(page.locator("#balance-status")).to_have_text("Payment received: $12.34 added to your credits.")
    expect(credits).to_have_text("$14.84")
    expect(page).to_have_url(f"{console.url}/billing")  # a reload asks nothing again
    assert _db(console, lambda s: ledger.balance(s, account_id)).balance_micro_usd == 14_840_000

    # A real request with the account's key: its usage row and cost show after a reload.
    client = openai.OpenAI(base_url=f"{console.url}/v1", api_key=key, max_retries=0, timeout=120)
    client.chat.completions.create(model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    for _ in range(50):  # settling writes the row just after the answer's last byte
        if httpx.get(f"{console.url}/v1/payments/usage", headers={"authorization": f"Bearer {key}"},
                     timeout=30).json()["usage"]:
            break
        page.wait_for_timeout(100)
    # Sixty older rows, so the table has a second page.
    start = datetime.now(UTC) - timedelta(days=3)

    async def older(sessions: Any) -> None:
        async with sessions.begin() as session:
            session.add_all([_usage(account_id, start - timedelta(minutes=n), n) for n in range(60)])
    _db(console, older)
    page.reload()
    rows = page.locator("#usage-body tr")
    expect(rows).to_have_count(50)
    expect(rows.first).to_contain_text(MODEL)
    expect(page.locator("#usage-empty")).to_be_hidden()
    chart = page.get_by_role("img", name=re.compile("Spend per day"))
    expect(chart).to_be_visible()
    expect(chart.locator("rect")).to_have_count(14)
    summary = re.compile(r"^\$[0-9.]+ on 61 requests in the last 14 days")
    expect(page.locator("#spend-summary")).to_contain_text(summary)
    ui.shot("billing")

    more = page.get_by_role("button", name="Load more")
    more.click()
    expect(rows).to_have_count(61)
    expect(more).to_be_hidden()
    expect(page.locator("#usage-status")).to_have_text("11 more requests shown; that is all of them.")
    expect(rows.last).to_contain_text("older-model")
    expect(rows.last.locator("td").nth(4)).to_have_text("$0.000059")


def test_the_pages_are_for_signed_in_people(console: ConsoleStack) -> None:
    for path in ("/keys", "/billing"):
        answer = httpx.get(console.url + path, follow_redirects=False, timeout=30)
        assert answer.status_code == 303
        assert answer.headers["location"] == f"/signin?next={path}"
