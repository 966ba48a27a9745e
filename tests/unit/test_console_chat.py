"""The chat page's model picker: the text models /v1/models lists now, at today's prices."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace
from typing import Any

from darkbloom.console.pages.chat import model_choices
from darkbloom.coordinator.pricing import Price
from darkbloom.coordinator.routing.scheduler import ModelSummary
from darkbloom.inference.catalog import SMOLLM2_135M, Catalog


def _request(catalog: Catalog, online: dict[str, ModelSummary]) -> Any:
    prices = SimpleNamespace(price=lambda model: Price(7, 11))
    scheduler = SimpleNamespace(model_summaries=lambda: online)
    return SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(
        catalog=catalog, scheduler=scheduler, prices=prices)))


def test_only_served_text_models_are_offered_with_their_weights_and_prices() -> None:
    offline = replace(SMOLLM2_135M, id="offline", aliases=())
    embedder = replace(SMOLLM2_135M, id="embedder", aliases=(), model_type="embedding")
    catalog = Catalog((offline, embedder, SMOLLM2_135M))
    online = {"smollm2-135m": ModelSummary(2, 1, "self_signed"), "embedder": ModelSummary(1, 1, "none")}
    [choice] = model_choices(_request(catalog, online))
    assert (choice.id, choice.providers, choice.trust_level) == ("smollm2-135m", 2, "self_signed")
    assert choice.weight_hash == SMOLLM2_135M.weight_hash
    assert (choice.input_price, choice.output_price) == (7, 11)


def test_no_provider_no_choice() -> None:
    assert model_choices(_request(Catalog(), {})) == []
