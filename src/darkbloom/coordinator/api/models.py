"""GET /v1/models (OpenAI list of what is routable now) and GET /health."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from darkbloom.coordinator.routing.scheduler import Scheduler
from darkbloom.inference.catalog import Catalog

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    catalog: Catalog = request.app.state.catalog
    scheduler: Scheduler = request.app.state.scheduler
    counts = scheduler.provider_counts()
    data = [
        {
            "id": model.id,
            "object": "model",
            "created": 0,
            "owned_by": "darkbloom",
            "metadata": {
                "display_name": model.display_name,
                "model_type": "text",
                "quantization": model.quantization,
                "context_length": model.context_length,
                "provider_count": counts[model.id],
                "attested_providers": 0,
                "trust_level": "none",
                "aliases": list(model.aliases),
            },
        }
        for model in catalog.models
        if counts.get(model.id)
    ]
    return {"object": "list", "data": data}


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
