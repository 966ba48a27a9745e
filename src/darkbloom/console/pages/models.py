"""Models page (console.md): every catalog model with what a consumer weighs before a request:
how many providers serve it now, the best trust level among them, its price and context size.

Read from the same scheduler summary, catalog and price book as ``/v1/models`` (no HTTP round
trip); nothing here touches the database.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import Response

from darkbloom.console.render import page, signed_in
from darkbloom.coordinator.pricing import PriceBook
from darkbloom.coordinator.routing.scheduler import ModelSummary
from darkbloom.inference.catalog import Catalog

router = APIRouter()

# The words a person reads for protocol/trust.py's levels.
TRUST_WORDS = {"hardware": "Hardware-attested", "self_signed": "Self-signed", "none": "Unverified"}


@dataclass(frozen=True, slots=True)
class ModelRow:
    id: str
    display_name: str
    model_type: str
    quantization: str
    context_length: int
    providers: int
    trust: str  # TRUST_WORDS' wording; "" when no provider serves it
    input_price: int  # micro-USD per 1M prompt tokens, or per price_unit (media)
    output_price: int  # micro-USD per 1M completion tokens
    price_unit: str = "1M tokens"


def model_rows(catalog: Catalog, online: dict[str, ModelSummary], prices: PriceBook) -> list[ModelRow]:
    """Served models first (most providers first), then the rest by name."""
    rows = []
    for model in catalog.models:
        summary = online.get(model.id, ModelSummary())
        price = prices.price(model)
        trust = TRUST_WORDS.get(summary.trust_level, "Unverified") if summary.providers else ""
        rows.append(ModelRow(model.id, model.display_name, model.model_type, model.quantization,
                             model.context_length, summary.providers, trust, price.input_price,
                             price.output_price, model.price_unit))
    rows.sort(key=lambda row: (-row.providers, row.display_name.lower()))
    return rows


@router.get("/models")
async def models_page(request: Request) -> Response:
    state = request.app.state
    rows = model_rows(state.catalog, state.scheduler.model_summaries(), state.prices)
    return page(request, "models.html", await signed_in(request), "Models", models=rows)
