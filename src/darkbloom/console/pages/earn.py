"""Earn calculator (console.md): what a machine might earn serving a model, before its owner
installs anything.

Decoding one token reads every active weight once, so speed is bounded by memory bandwidth:
estimated tok/s = bandwidth / active model bytes × 0.6 (the share of peak a real engine reaches).
Revenue is those tokens at the model's current output price less the platform fee; the power
bill is the machine's typical draw over the same hours. ``static/js/earn.js`` computes the same
figures, in the same order of operations, as the inputs change; this module renders them for the
first paint (and for a browser without script, from the query string).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from darkbloom.console.hardware import BY_ID, DEFAULT, KINDS, MACHINES, Machine
from darkbloom.console.render import page, signed_in
from darkbloom.inference.catalog import CatalogModel

router = APIRouter()

EFFICIENCY = 0.6
DAYS_PER_MONTH = 30
HOURS_DEFAULT, HOURS_MAX = 12.0, 24.0
KWH_DEFAULT, KWH_MAX = 0.15, 10.0  # USD per kWh


@dataclass(frozen=True, slots=True)
class Estimate:
    fits: bool  # the model's memory estimate fits the machine's memory
    tokens_per_s: float
    tokens_per_day: float
    revenue_day: float  # USD
    electricity_day: float  # USD

    @property
    def net_day(self) -> float:
        return self.revenue_day - self.electricity_day

    @property
    def revenue_month(self) -> float:
        return self.revenue_day * DAYS_PER_MONTH

    @property
    def electricity_month(self) -> float:
        return self.electricity_day * DAYS_PER_MONTH

    @property
    def net_month(self) -> float:
        return self.net_day * DAYS_PER_MONTH


def estimate(bandwidth_gbs: float, power_w: float, memory_gb: float, hours: float, kwh_usd: float,
             model_bytes: int, needs_gb: float, output_price: int, fee_bps: int) -> Estimate:
    """The calculator's formula (earn.js mirrors it operation for operation). ``output_price``:
    micro-USD per 1M completion tokens; ``fee_bps``: the platform's share in basis points. A
    model that does not fit earns and costs nothing: the machine would not be offered it."""
    fits = model_bytes > 0 and needs_gb <= memory_gb
    if not fits:
        return Estimate(False, 0.0, 0.0, 0.0, 0.0)
    tokens_per_s = bandwidth_gbs * 1e9 / model_bytes * EFFICIENCY
    tokens_per_day = tokens_per_s * 3600 * hours
    revenue_day = tokens_per_day / 1e6 * output_price / 1e6 * (1 - fee_bps / 10_000)
    electricity_day = power_w * hours / 1000 * kwh_usd
    return Estimate(True, tokens_per_s, tokens_per_day, revenue_day, electricity_day)


def rate(value: float) -> str:
    """Tokens per second as the page shows it (earn.js: the same)."""
    return f"{value:,.1f}"


def count(value: float) -> str:
    return f"{value:,.0f}"


def dollars(value: float) -> str:
    """An estimate in dollars, to the cent (not ``usd``: that one is for exact ledger amounts)."""
    return f"{'-' if value < 0 else ''}${abs(value):,.2f}"


def _number(raw: str | None, default: float, ceiling: float) -> float:
    """A form value, or the default when it is missing or not a number; clamped to 0..ceiling."""
    try:
        value = float(raw) if raw is not None and len(raw) <= 32 else default
    except ValueError:
        value = default
    return min(max(value, 0.0), ceiling) if math.isfinite(value) else default


def _choices(request: Request, models: tuple[CatalogModel, ...]) -> dict[str, Any]:
    query = request.query_params
    machine: Machine = BY_ID.get(query.get("hardware") or "", DEFAULT)
    memory = int(_number(query.get("memory"), machine.memory_gb[-1], 1 << 20))
    if memory not in machine.memory_gb:
        memory = machine.memory_gb[-1]
    model = next((m for m in models if m.id == query.get("model")), models[0] if models else None)
    return {"machine": machine, "memory": memory, "model": model,
            "hours": _number(query.get("hours"), HOURS_DEFAULT, HOURS_MAX),
            "kwh": _number(query.get("price"), KWH_DEFAULT, KWH_MAX)}


@router.get("/earn")
async def earn_page(request: Request) -> Response:
    state = request.app.state
    models: tuple[CatalogModel, ...] = tuple(m for m in state.catalog.models if m.is_text)
    prices = {m.id: state.prices.price(m).output_price for m in models}
    fee_bps: int = state.settings.platform_fee_bps
    chosen = _choices(request, models)
    model: CatalogModel | None = chosen["model"]
    result = None
    if model is not None:
        machine: Machine = chosen["machine"]
        result = estimate(machine.bandwidth_gbs, machine.power_w, chosen["memory"], chosen["hours"],
                          chosen["kwh"], model.size_bytes, model.min_ram_gb, prices[model.id], fee_bps)
    return page(request, "earn.html", await signed_in(request), "Earn calculator",
                kinds=KINDS, machines=MACHINES, models=models, prices=prices, fee_bps=fee_bps,
                result=result, rate=rate, count=count, dollars=dollars, **chosen)
