"""Billing page (console.md): balance, Buy credits (Stripe Checkout), redeem an invite code, spend
per day for the last 14 days, and the newest usage rows with "Load more".

Everything shown is read here from the stores the API reads; the page's script does the actions
through the public API (the checkout, its check on return, the redemption, the next usage page).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import Response
from markupsafe import Markup

from darkbloom.console.charts import bar_chart
from darkbloom.console.render import page, signed_in, to_sign_in, usd
from darkbloom.coordinator.api.billing import MIN_CHECKOUT_MICRO_USD, configured
from darkbloom.coordinator.api.payments import usage_cursor
from darkbloom.coordinator.store import ledger
from darkbloom.coordinator.store.usage import DAY_S, DaySpend, fill_days, spend_by_day, usage_page, utc

router = APIRouter()
CHART_DAYS = 14
USAGE_ROWS = 50  # the table's first page, and each "Load more"


@dataclass(frozen=True, slots=True)
class UsageRow:
    time: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_micro_usd: int
    cursor: str  # this row's time as /v1/payments/usage takes it for ``before``


def row_time(stamp: datetime) -> str:
    return utc(stamp).strftime("%Y-%m-%d %H:%M:%S UTC")


def day_label(day: int) -> str:
    """Month-day, short enough for a label under each of the 14 bars."""
    return datetime.fromtimestamp(day * DAY_S, UTC).strftime("%m-%d")


def spend_chart(series: list[tuple[int, DaySpend]]) -> Markup:
    labels = [day_label(day) for day, _ in series]
    values = [spent.cost_micro_usd / 1_000_000 for _, spent in series]
    return bar_chart(f"Spend per day, last {CHART_DAYS} days (UTC), in USD", labels, values, "USD")


@router.get("/billing")
async def billing_page(request: Request) -> Response:
    identity = await signed_in(request)
    if identity is None:
        return to_sign_in(request)
    state = request.app.state
    account_id = identity.account_id
    held = await ledger.balance(state.sessions, account_id)
    today = int(time.time()) // DAY_S
    series = fill_days(await spend_by_day(state.sessions, account_id, today - CHART_DAYS + 1), today,
                       CHART_DAYS)
    records = await usage_page(state.sessions, account_id, USAGE_ROWS, None)
    rows = [UsageRow(row_time(r.created_at), r.model, r.prompt_tokens, r.completion_tokens,
                     r.cost_micro_usd, usage_cursor(r.created_at)) for r in records]
    return page(request, "billing.html", identity, "Billing", balance=held,
                stripe=configured(request), min_checkout=usd(MIN_CHECKOUT_MICRO_USD),
                max_checkout=usd(state.settings.stripe_max_checkout_micro_usd),
                chart=spend_chart(series),
                spent_total=sum(spent.cost_micro_usd for _, spent in series),
                requests_total=sum(spent.requests for _, spent in series),
                rows=rows, page_size=USAGE_ROWS, more=len(rows) == USAGE_ROWS)
