"""Provider version comparison for the minimum-version gate (SemVer 2.0 precedence)."""

from __future__ import annotations

import pytest

from darkbloom.semver import older, parse


@pytest.mark.parametrize(("version", "minimum", "is_older"), [
    ("0.3.9", "0.4.0", True), ("0.4.0", "0.4.0", False), ("0.10.0", "0.9.0", False),
    ("1.2", "1.2.0", False), ("v1.2.1", "1.2.0", False), ("1.2.0-rc.1", "1.2.0", True),
    ("1.2.0-rc.2", "1.2.0-rc.10", True), ("1.2.0-alpha", "1.2.0-alpha.1", True),
    ("1.2.0+build.5", "1.2.0", False), ("garbage", "0.1.0", True), ("", "0.1.0", True)])
def test_precedence(version: str, minimum: str, is_older: bool) -> None:
    assert older(version, minimum) is is_older


def test_an_unreadable_minimum_is_an_error() -> None:
    assert parse("1,2,0") is None
    with pytest.raises(ValueError):
        older("1.0.0", "1,2,0")
