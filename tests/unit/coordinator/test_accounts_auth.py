"""Pure parts of sign-in: email normalisation, password rules and hashing, session tokens, the
CSRF rule and the admin-key compare."""

from __future__ import annotations

import pytest

from darkbloom.coordinator.api.auth import admin_key_matches, csrf_required, is_admin
from darkbloom.coordinator.store import accounts
from darkbloom.coordinator.store.credentials import hash_secret


@pytest.mark.parametrize(("raw", "want"), [
    ("  Alice@Example.COM\n", "alice@example.com"),
    ("a.b+tag@sub.example.org", "a.b+tag@sub.example.org"),
    ("no-at-sign.example.com", None), ("two@@example.com", None), ("user@localhost", None),
    ("sp ace@example.com", None), ("", None), ("   ", None), ("a@b.c\x00", None),
    ("\ud800@example.com", None), ("a@" + "b" * 260 + ".com", None), ("ü@exämple.de", "ü@exämple.de"),
])
def test_normalise_email(raw: str, want: str | None) -> None:
    assert accounts.normalise_email(raw) == want


def test_password_rules_and_hash() -> None:
    assert accounts.password_problem("short") is not None
    assert accounts.password_problem("x" * 10) is None
    assert accounts.password_problem("x" * (accounts.PASSWORD_MAX_CHARS + 1)) is not None
    assert accounts.password_problem("\udfff" * 12) is not None
    stored = accounts.hash_password("correct horse battery")
    assert stored.startswith("$argon2id$") and "correct" not in stored
    assert accounts.verify_password(stored, "correct horse battery")
    assert not accounts.verify_password(stored, "correct horse battery!")
    # An unknown account still verifies (against a dummy hash) and always fails.
    assert not accounts.verify_password(None, "correct horse battery")
    assert not accounts.verify_password("not-a-hash", "correct horse battery")


def test_session_tokens_and_csrf_hash() -> None:
    token = accounts.new_session_token()
    assert token.startswith("dbs-") and len(token) == 4 + 64 and token != accounts.new_session_token()
    assert not token.startswith("sk-db-")
    assert accounts.csrf_matches(hash_secret("abc"), "abc")
    assert not accounts.csrf_matches(hash_secret("abc"), "abd")
    assert not accounts.csrf_matches(hash_secret("abc"), None)


@pytest.mark.parametrize(("method", "cookie", "want"), [
    ("POST", True, True), ("DELETE", True, True), ("put", True, True), ("PATCH", True, True),
    ("GET", True, False), ("HEAD", True, False), ("OPTIONS", True, False),
    ("POST", False, False), ("DELETE", False, False),
])
def test_csrf_is_needed_only_for_a_cookie_on_unsafe_methods(method: str, cookie: bool, want: bool) -> None:
    assert csrf_required(method, cookie) is want


def test_admin_key_compare() -> None:
    assert admin_key_matches("s3cret-admin", "s3cret-admin")
    assert not admin_key_matches("s3cret-admin", "s3cret-admiN")
    assert not admin_key_matches("s3cret-admin", None)
    assert not admin_key_matches(None, "anything")
    assert not admin_key_matches("", "")  # an empty setting never makes anyone admin
    assert not admin_key_matches("s3cret-admin", "s3cret-admin\xff")


def test_admin_by_flag_or_email_list() -> None:
    def who(email: str | None, flag: bool) -> accounts.SessionIdentity:
        return accounts.SessionIdentity("s", "a", email, flag, "h")
    assert is_admin(who("ops@example.com", False), ["ops@example.com"])
    assert is_admin(who("x@example.com", True), [])
    assert not is_admin(who("x@example.com", False), ["ops@example.com"])
    assert not is_admin(who(None, False), ["ops@example.com"])
