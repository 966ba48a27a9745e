"""A hostile review of the console in Chromium: what a signed-out tab still holds."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.browser.conftest import Ui

LONG = 120_000  # ms: a CPU provider shares two cores with the browser and the coordinator


def test_sign_out_forgets_the_chat_transcript(ui: Ui) -> None:
    ui.sign_up()
    ui.stack.credit(ui.account_id(), 5_000_000)
    ui.goto("/chat")
    page = ui.page
    page.get_by_label("Max tokens").fill("4")
    page.get_by_label("Message").fill("my secret prompt 7d1f")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("button", name="Stop")).to_be_disabled(timeout=LONG)
    stored = "() => Object.keys(sessionStorage).map((k) => sessionStorage.getItem(k)).join('\\n')"
    assert "my secret prompt 7d1f" in page.evaluate(stored)  # kept while signed in, by design
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/signin")
    assert "my secret prompt 7d1f" not in page.evaluate(stored)
