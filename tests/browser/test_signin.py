"""Sign up, sign out and sign in through the pages, in Chromium."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.browser.conftest import PASSWORD, Ui


def test_sign_up_shows_the_first_key_once_then_sign_out_and_in(ui: Ui) -> None:
    page = ui.page
    email, key = ui.sign_up()
    assert key.startswith("sk-db-")
    ui.shot("signup-first-key")
    assert page.evaluate("() => Object.keys(localStorage).length + Object.keys(sessionStorage).length") == 0
    page.get_by_role("link", name="Continue").click()
    expect(page).to_have_url(ui.stack.url + "/chat")
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(ui.stack.url + "/signin")
    ui.goto("/keys")
    expect(page).to_have_url(ui.stack.url + "/signin?next=/keys")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(ui.stack.url + "/keys")
    assert key not in page.content()  # shown once, never again


def test_wrong_password_is_said_in_words(ui: Ui) -> None:
    ui.expect_status(401)
    email, _ = ui.sign_up()
    ui.page.context.clear_cookies()
    ui.goto("/signin")
    ui.page.get_by_label("Email").fill(email)
    ui.page.get_by_label("Password").fill("not the password")
    ui.page.get_by_role("button", name="Sign in").click()
    expect(ui.page.get_by_role("alert")).to_have_text("incorrect email or password")
    ui.shot("signin")
