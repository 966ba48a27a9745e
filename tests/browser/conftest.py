"""The console in a real browser: Debian's Chromium driven by Playwright, against a real
coordinator (with the fake Stripe server) and a real llama.cpp provider.

Every test gets a fresh browser context (its own cookies) through the ``ui`` fixture, which
fails the test on any JavaScript error, console error or failed request the test did not say it
expects, and saves screenshots under ``test-artifacts/console/`` (a CI artefact).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, Response, sync_playwright

from darkbloom.coordinator.store import ledger
from darkbloom.coordinator.store.db import make_engine, make_sessionmaker
from tests.e2e.fake_stripe import FakeStripe
from tests.e2e.harness import ROOT, Coordinator, Provider

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts" / "console"
STRIPE_SECRET = "sk_test_" + uuid.uuid4().hex
WEBHOOK_SECRET = "whsec_console_" + uuid.uuid4().hex
CONNECT_SECRET = "whsec_connect_" + uuid.uuid4().hex
PASSWORD = "correct horse battery staple"


@dataclass
class ConsoleStack:
    coordinator: Coordinator
    provider: Provider
    fake: FakeStripe
    database_url: str

    @property
    def url(self) -> str:
        return self.coordinator.base_url

    def db(self, work: Any) -> Any:
        """Run ``work(sessions)`` against the coordinator's database from this process, on a
        thread of its own: Playwright's sync API keeps an event loop on this one, where
        ``asyncio.run`` refuses to start."""
        async def run() -> Any:
            engine = make_engine(self.database_url)
            try:
                return await work(make_sessionmaker(engine))
            finally:
                await engine.dispose()
        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, run()).result()

    def credit(self, account_id: str, micro_usd: int) -> None:
        self.db(lambda sessions: ledger.credit(sessions, account_id, micro_usd, "admin_credit",
                                               f"browser-{uuid.uuid4().hex}", withdrawable=False,
                                               actor="browser-test"))

    def balance(self, account_id: str) -> ledger.Balances:
        found: ledger.Balances = self.db(lambda sessions: ledger.balance(sessions, account_id))
        return found


@pytest.fixture(scope="session")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleStack]:
    workdir = tmp_path_factory.mktemp("console")
    fake = FakeStripe(STRIPE_SECRET).start()
    coordinator = Coordinator(workdir, stripe_secret_key=STRIPE_SECRET,
                              stripe_webhook_secret=WEBHOOK_SECRET,
                              stripe_connect_webhook_secret=CONNECT_SECRET, stripe_api_base=fake.url)
    # The console's own origin: Checkout returns here, /link is printed from it, CORS allows it.
    coordinator.env["DARKBLOOM_PUBLIC_URL"] = coordinator.base_url
    coordinator.start()
    provider = Provider(coordinator).start()
    database_url = f"sqlite+aiosqlite:///{(workdir / 'state' / 'coordinator.db').resolve()}"
    try:
        yield ConsoleStack(coordinator, provider, fake, database_url)
    finally:
        provider.stop()
        coordinator.stop()
        fake.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Per module, not per session: while Playwright's sync API is started it holds an event
    loop on the main thread, and every asyncio test after it (tests/e2e, tests/storage) would
    find that loop running."""
    assert Path(CHROMIUM).exists(), "Debian's chromium is missing (.ci/run: apt-get install chromium)"
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


_STATUS_IN_CONSOLE = re.compile(r"status of (\d{3})")


@dataclass
class Ui:
    """A page in its own browser context, watched for errors."""

    page: Page
    stack: ConsoleStack
    expected_statuses: set[int] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)

    def expect_status(self, *statuses: int) -> None:
        """Answers with these statuses are part of the test (a wrong code, say): not problems."""
        self.expected_statuses.update(statuses)

    def goto(self, path: str) -> Response | None:
        return self.page.goto(self.stack.url + path)

    def shot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def sign_up(self, email: str | None = None) -> tuple[str, str]:
        """A new account through the sign-up page; returns (email, the first API key shown)."""
        email = email or f"user-{uuid.uuid4().hex[:10]}@example.com"
        self.goto("/signup")
        self.page.get_by_label("Email").fill(email)
        self.page.get_by_label("Password").fill(PASSWORD)
        self.page.get_by_role("button", name="Sign up").click()
        key = self.page.locator("#first-key-value")
        key.wait_for()
        return email, key.inner_text()

    def account_id(self) -> str:
        me = self.page.evaluate("() => fetch('/v1/me').then(r => r.json())")
        return str(me["account_id"])

    # --- watching -----------------------------------------------------------------------------

    def _console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        status = _STATUS_IN_CONSOLE.search(message.text)
        if status and int(status[1]) in self.expected_statuses:
            return
        self.problems.append(f"console error: {message.text}")

    def _response(self, response: Response) -> None:
        if response.status >= 400 and response.status not in self.expected_statuses:
            self.problems.append(f"{response.status} from {response.request.method} {response.url}")

    def _failed(self, request: Request) -> None:
        failure = request.failure or ""
        if "ERR_ABORTED" in failure and request.resource_type in (
                "fetch", "document", "image", "other"):
            return  # a stream the test stopped, a navigation away (the favicon's load with it)
        self.problems.append(f"request failed: {request.method} {request.url} ({failure})")


@pytest.fixture
def ui(browser: Browser, console: ConsoleStack) -> Iterator[Ui]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    watched = Ui(page, console)
    page.on("console", watched._console)
    page.on("pageerror", lambda exc: watched.problems.append(f"page error: {exc}"))
    page.on("response", watched._response)
    page.on("requestfailed", watched._failed)
    page.set_default_timeout(30_000)
    try:
        yield watched
    finally:
        context.close()
    assert watched.problems == [], "\n".join(watched.problems)
