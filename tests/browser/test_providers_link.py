"""The provider dashboard and the Link device page in Chromium: a real `darkbloom login` process
linked from the page, its token listed and revoked on the dashboard; the fixture's provider
seen online by its operator, with earnings, Stripe Connect onboarding and a withdrawal."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

from playwright.sync_api import Route, expect

from darkbloom.coordinator.store import ledger
from darkbloom.coordinator.store import stripe as stripe_store
from darkbloom.coordinator.store.accounts import IssuedSession, open_session
from tests.browser.conftest import ConsoleStack, Ui
from tests.e2e.harness import MODEL, OPERATOR
from tests.e2e.test_provider_daemon_cli import cli_env

USER_CODE = re.compile(r"\b([ABCDEFGHJKMNPQRSTUVWXYZ23456789]{4}-[ABCDEFGHJKMNPQRSTUVWXYZ23456789]{4})\b")


class Login:
    """`darkbloom login` as a machine runs it, its output read as it comes."""

    def __init__(self, console: ConsoleStack, home: Path) -> None:
        self.config_dir = home / "cfg"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "darkbloom", "login", "--coordinator", console.coordinator.ws_url],
            env=cli_env(home, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def user_code(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if found := USER_CODE.search(self.output):
                return found[1]
            assert self.proc.poll() is None, self.output
            time.sleep(0.1)
        raise TimeoutError(self.output)

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_link_a_device_that_darkbloom_login_shows(ui: Ui, console: ConsoleStack, tmp_path: Path) -> None:
    page = ui.page
    # Signed out, the code in the URL survives signing in.
    ui.goto("/link?code=abcd-efgh")
    expect(page).to_have_url(console.url + "/signin?next=/link%3Fcode%3Dabcd-efgh")

    login = Login(console, tmp_path)
    try:
        code = login.user_code()
        assert "/link" in login.output
        _, _ = ui.sign_up()
        account_id = ui.account_id()

        ui.expect_status(404, 409)
        ui.goto("/link")
        page.get_by_label("Device code").fill("ZZZZ-ZZZZ")
        page.get_by_role("button", name="Link device").click()
        expect(page.get_by_role("alert")).to_contain_text("No such code")

        ui.goto(f"/link?code={code.lower()}")
        expect(page.get_by_label("Device code")).to_have_value(code)
        page.get_by_role("button", name="Link device").click()
        expect(page.get_by_role("heading", name="Device linked")).to_be_visible()
        ui.shot("link")
        assert login.wait() == 0, login.output
        assert f"linked to account {account_id}" in login.output
        assert (login.config_dir / "token").read_text().startswith("darkbloom-pt-")

        # The same code again: already used, said in words.
        page.get_by_role("button", name="Link another device").click()
        page.get_by_label("Device code").fill(code)
        page.get_by_role("button", name="Link device").click()
        expect(page.get_by_role("alert")).to_contain_text("already used")
    finally:
        login.stop()

    # The dashboard lists the new token (no machine has connected with it yet), then revokes it.
    page.get_by_role("link", name="Providers").click()
    expect(page.locator("#machines")).to_contain_text("never seen")
    tokens = page.locator("#tokens tbody tr")
    expect(tokens).to_have_count(1)
    expect(tokens).to_contain_text("never")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Revoke").click()
    expect(page.locator("#tokens-message")).to_contain_text("Revoked")
    page.reload()
    expect(page.locator("#no-tokens")).to_be_visible()
    expect(page.locator("#no-machines")).to_be_visible()


def _db(console: ConsoleStack, work: Callable[[Any], Any]) -> Any:
    """``console.db`` on a thread of its own: Playwright's sync API keeps an event loop running
    on this one, where ``asyncio.run`` refuses to start."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(console.db, work).result()


def _sign_in_as(ui: Ui, account_id: str) -> None:
    """A session for an account nobody signs up for (the harness's operator), as cookies."""
    issued: IssuedSession = _db(ui.stack, lambda sessions: open_session(sessions, account_id,
                                                                       timedelta(days=1)))
    ui.page.context.add_cookies([
        {"name": "darkbloom_session", "value": issued.token, "url": ui.stack.url},
        {"name": "darkbloom_csrf", "value": issued.csrf_token, "url": ui.stack.url}])


def test_operator_sees_its_machine_earnings_and_withdraws(ui: Ui, console: ConsoleStack) -> None:
    page = ui.page
    answer = console.coordinator.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8)
    assert answer.choices
    _db(console, lambda sessions: ledger.credit(sessions, OPERATOR, 5_000_000, "admin_reward",
                                               f"browser-{uuid.uuid4().hex}", withdrawable=True,
                                               actor="browser-test"))
    _sign_in_as(ui, OPERATOR)

    ui.goto("/providers")
    deadline = time.monotonic() + 20
    while not page.locator("#earnings").is_visible() and time.monotonic() < deadline:
        time.sleep(0.5)  # the job's earning is written just after its last byte
        page.reload()
    machine = page.locator("#machines tbody tr").filter(has_text=MODEL)
    expect(machine).to_have_count(1)
    expect(machine.locator(".badge").first).to_have_text(re.compile("online|serving"))
    expect(page.locator("#earnings tbody tr").first).to_contain_text(MODEL)
    expect(page.locator("#withdrawable")).not_to_have_text("$0.00")
    expect(page.get_by_text("darkbloom login --coordinator ws://")).to_be_visible()

    # Stripe Connect: onboarding leaves for Stripe (answered here: the browser has no internet).
    page.route("https://connect.stripe.com/**", lambda route: _stripe_page(route))
    page.get_by_role("button", name="Set up payouts").click()
    page.wait_for_url(re.compile(r"^https://connect\.stripe\.com/"))
    connect = _db(console, lambda sessions: stripe_store.get_connect(sessions, OPERATOR))
    console.fake.make_ready(connect.stripe_account_id)
    ui.goto("/providers?stripe=return")
    page.wait_for_url(console.url + "/providers#withdraw")
    page.get_by_label("Amount (USD)").fill("2.00")
    page.get_by_role("button", name="Withdraw").click()
    expect(page.locator("#withdraw-message")).to_contain_text("$2.00 withdrawn")
    page.reload()
    expect(page.locator("#payouts tbody tr").first).to_contain_text("$2.00")
    ui.shot("providers")


def _stripe_page(route: Route) -> None:
    route.fulfill(status=200, content_type="text/html", body="<title>Stripe</title><p>Stripe onboarding</p>")
