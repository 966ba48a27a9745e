"""The model list, catalog and retrieve routes, and GET /health."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from darkbloom.coordinator.pricing import PriceBook
from darkbloom.coordinator.routing.scheduler import ModelSummary
from darkbloom.errors import ModelNotFound
from darkbloom.inference.catalog import Catalog, CatalogModel

router = APIRouter()


def openai_model(model: CatalogModel, online: ModelSummary, prices: PriceBook) -> dict[str, Any]:
    """api.md §5: the routable providers' count, attested count and best trust level, and the
    price a request pays now (an admin override, else the catalog's)."""
    price = prices.price(model)
    return {
        "id": model.id,
        "object": "model",
        "created": 0,
        "owned_by": "darkbloom",
        "metadata": {
            "display_name": model.display_name,
            "model_type": model.model_type,
            "quantization": model.quantization,
            "context_length": model.context_length,
            "provider_count": online.providers,
            "attested_providers": online.attested,
            "trust_level": online.trust_level,
            "input_price": price.input_price,
            "output_price": price.output_price,
            "price_unit": model.price_unit,
            "aliases": list(model.aliases),
        },
    }


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    """Models a connected provider serves now (api.md §5)."""
    online = request.app.state.scheduler.model_summaries()
    catalog: Catalog = request.app.state.catalog
    return {"object": "list", "data": [openai_model(m, online[m.id], request.app.state.prices)
                                       for m in catalog.models if m.id in online]}


@router.get("/v1/models/catalog")
async def model_catalog(request: Request, type: str | None = None) -> dict[str, Any]:
    """Every model the network knows, online or not, with what a client needs to choose one."""
    online = request.app.state.scheduler.model_summaries()
    catalog: Catalog = request.app.state.catalog
    return {"models": [
        {
            "id": m.id, "display_name": m.display_name, "model_type": m.model_type,
            "architecture": m.architecture, "description": m.description,
            "context_length": m.context_length, "quantization": m.quantization,
            "size_bytes": m.size_bytes, "size_gb": round(m.size_bytes / 1e9, 3),
            "min_ram_gb": m.min_ram_gb, "weight_hash": m.weight_hash,
            # What `darkbloom models download` needs; download_url is null for models that ship
            # only in a wheel (pip installs them).
            "filename": m.filename, "sha256": m.weight_hash, "download_url": m.download_url or None,
            "download_name": m.filename, "s3_name": m.filename,
            "input_price": m.input_price, "output_price": m.output_price, "price_unit": m.price_unit,
            "capabilities": list(m.capabilities), "aliases": list(m.aliases),
            "providers_online": online.get(m.id, ModelSummary()).providers, "active": True,
        }
        for m in catalog.models if type is None or m.model_type == type
    ]}


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(request: Request, model_id: str) -> dict[str, Any]:
    """OpenAI's retrieve: any catalog model by id or alias (online or not)."""
    model = request.app.state.catalog.resolve(model_id)
    if model is None:
        raise ModelNotFound(f"The model {model_id!r} does not exist", param="model")
    online = request.app.state.scheduler.model_summaries().get(model.id, ModelSummary())
    return openai_model(model, online, request.app.state.prices)


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    providers = len(request.app.state.scheduler.providers)
    try:
        async with request.app.state.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except (SQLAlchemyError, OSError):
        return JSONResponse({"status": "degraded", "providers": providers,
                             "database": "unreachable"}, status_code=503)
    return JSONResponse({"status": "ok", "providers": providers})
