"""Money as integer micro-USD (billing.md §0.1): USD strings are parsed digit by digit, never through
a float, and the request cost is one upward rounding in integers (billing.md §1 Decision)."""

from __future__ import annotations

import re
from dataclasses import dataclass

MICRO = 1_000_000  # micro-USD per USD
MIN_CHARGE_MICRO_USD = 100  # $0.0001, the smallest charge for a request that costs anything
MAX_USD_DIGITS = 12  # whole-dollar digits accepted: < $10^12 keeps every amount far inside BIGINT
_MAX_TEXT = 64
_AMOUNT = re.compile(r"([0-9]+)(?:\.([0-9]+))?", re.ASCII)


def parse_usd(text: str, decimals: int = 6) -> int:
    """``"0.0005"`` -> 500. Plain non-negative decimals only (no sign, exponent, spaces or NaN), at
    most ``decimals`` fractional digits: anything a float would round is refused instead."""
    if not 0 <= decimals <= 6:
        raise ValueError("decimals must be between 0 and 6")
    if not isinstance(text, str):
        raise ValueError(f'must be a string of US dollars like "10.00", not {type(text).__name__}')
    if len(text) > _MAX_TEXT:
        raise ValueError(f"is too long (at most {_MAX_TEXT} characters)")
    if text.startswith("-"):
        raise ValueError("must not be negative")
    match = _AMOUNT.fullmatch(text)
    if match is None:
        raise ValueError(f'must be a plain decimal number of US dollars like "10.00", got {text!r}')
    whole, frac = match.group(1), match.group(2) or ""
    if len(frac) > decimals:
        raise ValueError(f"has more than {decimals} decimal places")
    if len(whole.lstrip("0")) > MAX_USD_DIGITS:
        raise ValueError(f"is too large (at most {MAX_USD_DIGITS} digits before the decimal point)")
    return int(whole) * MICRO + int(frac.ljust(6, "0"))


def format_usd(micro: int, decimals: int = 6) -> str:
    """500 -> ``"0.000500"``. With fewer decimals the amount must be exact at that precision (a
    cent amount for Stripe), so formatting never rounds money away."""
    if not 0 <= decimals <= 6:
        raise ValueError("decimals must be between 0 and 6")
    step = 10 ** (6 - decimals)
    if micro % step:
        raise ValueError(f"{micro} micro-USD is not a whole number of 10^-{decimals} USD")
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO)
    return f"{sign}{whole}.{frac // step:0{decimals}d}" if decimals else f"{sign}{whole}"


def request_cost(prompt_tokens: int, completion_tokens: int, input_price: int, output_price: int) -> int:
    """``max(100, ceil((prompt*in + completion*out) / 10^6))`` micro-USD; prices are micro-USD per
    million tokens. A request that costs nothing (no tokens, or a free model) stays at 0."""
    for name, value in (("prompt_tokens", prompt_tokens), ("completion_tokens", completion_tokens),
                        ("input_price", input_price), ("output_price", output_price)):
        if value < 0:
            raise ValueError(f"{name} must not be negative")
    cost = -(-(prompt_tokens * input_price + completion_tokens * output_price) // MICRO)
    return max(MIN_CHARGE_MICRO_USD, cost) if cost > 0 else 0


# Media prices (media.md): micro-USD per audio minute (charged by the millisecond) or per image.
AUDIO_MS_PER_MINUTE = 60_000
PER_IMAGE = 1


def media_cost(units: int, price: int, units_per_price: int) -> int:
    """``max(100, ceil(units × price / units_per_price))`` micro-USD: audio milliseconds at a price
    per minute, or images at a price per image. Nothing to charge stays at 0."""
    if units < 0 or price < 0 or units_per_price < 1:
        raise ValueError("units and price must not be negative, units_per_price must be positive")
    cost = -(-(units * price) // units_per_price)
    return max(MIN_CHARGE_MICRO_USD, cost) if cost > 0 else 0


def prompt_estimate(text_bytes: int) -> int:
    """billing.md §3 Decision: a prompt the coordinator cannot tokenize is reserved for at one token
    per 3 bytes (one CJK character is 3 bytes and often a whole token), at least 1."""
    return max(1, -(-text_bytes // 3))


@dataclass(frozen=True, slots=True)
class Split:
    """Where one request's cost goes (billing.md §0.4: the three always sum to the cost)."""

    payout: int
    platform_fee: int
    referral_reward: int


def split_cost(cost: int, fee_bps: int, referral_pct: int, rewarded: bool) -> Split:
    """billing.md §7: ``fee = floor(cost × bps / 10 000)``; the referrer, if any and ``rewarded``,
    gets ``floor(fee × pct / 100)`` of it; the provider gets the rest of the cost."""
    fee = cost * fee_bps // 10_000
    reward = fee * referral_pct // 100 if rewarded else 0
    return Split(cost - fee, fee - reward, reward)
