"""Hostile review of issue 9's pure parts: USD strings a lax parser (int(), Decimal) would take,
email look-alikes, and empty admin settings that must match nobody."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from darkbloom.config import CoordinatorSettings
from darkbloom.coordinator.api.auth import admin_key_matches, is_admin
from darkbloom.coordinator.money import format_usd, parse_usd
from darkbloom.coordinator.store.accounts import SessionIdentity, normalise_email


@pytest.mark.parametrize("text", [
    "1_000", "1_0.5", "0.5_0", "\uff11", "\u0661.5", "1\n", "1 ", "\u00a01", "1.0\x00", "1.5.5",
    "--1", "-0", "1e-3", "0x1", "Infinity", "1/2", "\u2460", "1.\u0665",
])
def test_parse_usd_refuses_what_int_or_decimal_would_accept(text: str) -> None:
    with pytest.raises(ValueError):
        parse_usd(text)


@pytest.mark.parametrize(("micro", "decimals"), [(-1, 2), (-5_000, 2), (1, 0), (999_999, 0)])
def test_format_usd_never_rounds_money_away(micro: int, decimals: int) -> None:
    with pytest.raises(ValueError):
        format_usd(micro, decimals)


@pytest.mark.parametrize(("raw", "want"), [
    ("a@example.com.", None), ("a@.example.com", None), ("a@example..com", None),
    ("a\u200b@example.com", None), ("a@example.com\u200b", None),
    ("\u212aate@example.com", "kate@example.com"),  # the Kelvin sign folds to k: the same account
    ("ADMIN@EXAMPLE.COM", "admin@example.com"), ("a@exa\tmple.com", None), ("@example.com", None),
])
def test_email_look_alikes(raw: str, want: str | None) -> None:
    assert normalise_email(raw) == want


def _identity(email: str | None, admin: bool = False) -> SessionIdentity:
    return SessionIdentity("s", "acct", email, admin, "h")


def test_empty_admin_settings_match_nobody() -> None:
    settings = CoordinatorSettings(admin_emails=["", "  ", " Ops@Example.com "], admin_key=SecretStr(""))
    assert settings.admin_emails == ["ops@example.com"]
    assert not is_admin(_identity(None), settings.admin_emails)
    assert not is_admin(_identity(""), settings.admin_emails)
    assert is_admin(_identity("ops@example.com"), settings.admin_emails)
    configured = settings.admin_key.get_secret_value() if settings.admin_key else None
    for presented in ("", None, " "):
        assert not admin_key_matches(configured, presented)
        assert not admin_key_matches("", presented)


@pytest.mark.parametrize("days", [0, -1, 3_000_000, float("inf"), float("nan")])
def test_an_idle_period_that_cannot_be_added_to_a_date_is_refused_at_start(days: float) -> None:
    """Else every sign-in would fail with an OverflowError (a 5xx) instead of the coordinator
    refusing the setting when it starts."""
    with pytest.raises(ValidationError, match="session_idle_days"):
        CoordinatorSettings(session_idle_days=days)
