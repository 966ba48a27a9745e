"""Chat page (console.md "Chat"): a playground that streams through the public API with the
browser's session, and verifies each answer's receipt in the browser (``static/js/verify.js``).

The model picker is filled here from what ``/v1/models`` lists (text models a routable provider
serves now), with each model's catalog weight hash, so the page can tell whether a receipt's
weights are the catalog's without another request.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import Response

from darkbloom.console.render import page, signed_in, to_sign_in
from darkbloom.inference.catalog import Catalog

router = APIRouter()


@dataclass(frozen=True, slots=True)
class ModelChoice:
    id: str
    display_name: str
    trust_level: str
    providers: int
    weight_hash: str
    input_price: int  # micro-USD per 1M tokens
    output_price: int


def model_choices(request: Request) -> list[ModelChoice]:
    """The text models /v1/models lists now, in catalog order."""
    state = request.app.state
    online = state.scheduler.model_summaries()
    catalog: Catalog = state.catalog
    choices = []
    for model in catalog.models:
        summary = online.get(model.id)
        if summary is None or model.model_type != "text":
            continue
        price = state.prices.price(model)
        choices.append(ModelChoice(model.id, model.display_name, summary.trust_level,
                                   summary.providers, model.weight_hash, price.input_price,
                                   price.output_price))
    return choices


@router.get("/chat")
async def chat_page(request: Request) -> Response:
    identity = await signed_in(request)
    if identity is None:
        return to_sign_in(request)
    return page(request, "chat.html", identity, "Chat", models=model_choices(request))
