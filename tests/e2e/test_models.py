"""Model catalog, retrieve and aliases (api.md §5)."""

from __future__ import annotations

import httpx
import openai
import pytest

from darkbloom.inference.catalog import DEFAULT_MODEL
from tests.e2e.harness import MODEL, Coordinator


def test_catalog_lists_known_models_with_details(stack: Coordinator) -> None:
    models = httpx.get(f"{stack.base_url}/v1/models/catalog").json()["models"]
    [entry] = [m for m in models if m["id"] == MODEL]
    assert entry["context_length"] == 8192 and entry["quantization"] == "Q4_1"
    assert entry["size_bytes"] == DEFAULT_MODEL.size_bytes
    assert entry["weight_hash"] == DEFAULT_MODEL.weight_hash
    assert entry["providers_online"] == 1
    assert isinstance(entry["input_price"], int) and isinstance(entry["output_price"], int)
    assert "SmolLM2-135M-Instruct" in entry["aliases"] and "chat" in entry["capabilities"]
    assert httpx.get(f"{stack.base_url}/v1/models/catalog", params={"type": "tts"}).json() == {"models": []}


@pytest.mark.parametrize("name", [MODEL, "SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"])
def test_retrieve_by_id_or_alias(client: openai.OpenAI, name: str) -> None:
    model = client.models.retrieve(name)
    assert model.id == MODEL and model.object == "model"


def test_retrieve_unknown_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("gpt-nothing")
    assert info.value.response.json()["error"]["code"] == "model_not_found"


def test_alias_works_in_every_dialect(stack: Coordinator, client: openai.OpenAI) -> None:
    alias = "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert client.responses.create(model=alias, input="Hi", max_output_tokens=2).model == alias
    response = httpx.post(f"{stack.base_url}/v1/messages", timeout=60,
                          json={"model": alias, "max_tokens": 2,
                                "messages": [{"role": "user", "content": "Hi"}]},
                          headers={"x-api-key": stack.api_key})
    assert response.status_code == 200 and response.json()["model"] == alias
