"""Stripe: Checkout top-ups (billing.md §6) and Connect withdrawals (§9).

``stripe_gateway`` makes every call to Stripe (through the official library), ``webhooks`` checks
signatures and turns events into store calls, ``store/stripe.py`` keeps the state and moves the
money. The withdrawal numbers live here because the route and the tests both need them.
"""

from __future__ import annotations

from dataclasses import dataclass

CENT_MICRO_USD = 10_000
MIN_WITHDRAW_MICRO_USD = 1_000_000  # $1, Stripe's ACH minimum (reference MinWithdrawMicroUSD)
INSTANT_FEE_BPS = 150  # 1.5 %
INSTANT_FEE_MIN_MICRO_USD = 500_000  # $0.50
ETA = {"standard": "1-2 business days", "instant": "~30 minutes"}


@dataclass(frozen=True, slots=True)
class WithdrawalAmounts:
    """``gross = fee + net``; ``net`` is whole cents, what Stripe pays out. ``fee`` is the instant
    fee plus the sub-cent dust of the net (billing.md §9: "sub-cent dust stays with the platform"),
    so it is whole cents too and the platform's ``withdrawal_fee`` row books all of it."""

    gross: int
    fee: int
    net: int

    @property
    def net_cents(self) -> int:
        return self.net // CENT_MICRO_USD


def withdrawal_amounts(gross: int, method: str) -> WithdrawalAmounts:
    """Standard is free; instant costs ``max(floor(gross × 1.5 %), $0.50)``; the net is floored to
    cents. ``net`` is 0 when nothing would be left to pay out."""
    fee = max(gross * INSTANT_FEE_BPS // 10_000, INSTANT_FEE_MIN_MICRO_USD) if method == "instant" else 0
    net = max(0, gross - fee) // CENT_MICRO_USD * CENT_MICRO_USD
    return WithdrawalAmounts(gross, gross - net, net)
