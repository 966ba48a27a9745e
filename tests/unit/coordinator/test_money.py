"""USD strings to micro-USD and back, and the request cost formula (billing.md §0.1, §1)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from darkbloom.coordinator.money import MIN_CHARGE_MICRO_USD, format_usd, parse_usd, request_cost


@pytest.mark.parametrize(("text", "micro"), [
    ("0.0005", 500), ("10.00", 10_000_000), ("10", 10_000_000), ("0", 0), ("0.000001", 1),
    ("007.5", 7_500_000), ("999999999999.999999", 999_999_999_999_999_999),
])
def test_parse_usd_accepts_plain_decimals(text: str, micro: int) -> None:
    assert parse_usd(text) == micro


@pytest.mark.parametrize(("text", "decimals", "complaint"), [
    ("1e3", 6, "plain decimal"), ("1E3", 6, "plain decimal"), ("-1", 6, "negative"),
    ("0.0000001", 6, "more than 6 decimal places"), ("1.005", 2, "more than 2 decimal places"),
    ("NaN", 6, "plain decimal"), ("inf", 6, "plain decimal"), ("", 6, "plain decimal"),
    (" 1", 6, "plain decimal"), ("1.", 6, "plain decimal"), (".5", 6, "plain decimal"),
    ("+1", 6, "plain decimal"), ("1,000", 6, "plain decimal"), ("\u0663", 6, "plain decimal"),
    ("1" * 13, 6, "too large"), ("9" * 65, 6, "too long"), ("0x10", 6, "plain decimal"),
])
def test_parse_usd_refuses_with_a_reason(text: str, decimals: int, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_usd(text, decimals)


def test_parse_usd_refuses_non_strings() -> None:
    with pytest.raises(ValueError, match="not float"):
        parse_usd(0.1)  # type: ignore[arg-type]


@given(st.integers(min_value=0, max_value=10**18 - 1))
def test_format_then_parse_round_trips(micro: int) -> None:
    assert parse_usd(format_usd(micro)) == micro


@given(st.integers(min_value=0, max_value=10**14 - 1))
def test_cents_round_trip_at_two_decimals(cents: int) -> None:
    assert parse_usd(format_usd(cents * 10_000, 2), 2) == cents * 10_000


def test_format_usd() -> None:
    assert format_usd(500) == "0.000500"
    assert format_usd(-1_500_000) == "-1.500000"
    assert format_usd(1_230_000, 2) == "1.23"
    with pytest.raises(ValueError, match="not a whole number"):
        format_usd(1_234_567, 2)  # would round money away


def test_request_cost_examples() -> None:
    assert request_cost(0, 0, 50_000, 200_000) == 0
    assert request_cost(1, 0, 0, 0) == 0  # a free model charges nothing, not the minimum
    assert request_cost(1, 1, 50_000, 200_000) == MIN_CHARGE_MICRO_USD
    assert request_cost(1_000_000, 0, 50_000, 200_000) == 50_000
    assert request_cost(1_000_001, 0, 50_000, 200_000) == 50_001  # one rounding, upward
    with pytest.raises(ValueError, match="completion_tokens"):
        request_cost(1, -1, 1, 1)


@given(st.integers(0, 10**7), st.integers(0, 10**7), st.integers(0, 10**7), st.integers(0, 10**7))
def test_request_cost_is_the_exact_ceiling(prompt: int, completion: int, inp: int, out: int) -> None:
    exact = Fraction(prompt * inp + completion * out, 1_000_000)
    cost = request_cost(prompt, completion, inp, out)
    assert isinstance(cost, int)
    assert cost == (0 if exact == 0 else max(MIN_CHARGE_MICRO_USD, math.ceil(exact)))
