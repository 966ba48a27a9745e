"""Metrics (api.md §10): ``GET /v1/admin/metrics`` (admin; JSON, or Prometheus text with
``?format=prom``) and ``GET /metrics`` (Prometheus text, no auth) when
``DARKBLOOM_METRICS_PUBLIC=true`` for a local scraper; a 404 otherwise, as if it did not exist.

The metrics carry no account, key, prompt or provider identity: route templates, models, counts
and timings only (coordinator/metrics.py).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from darkbloom.coordinator.api.auth import AdminDep
from darkbloom.coordinator.metrics import CONTENT_TYPE, Metrics
from darkbloom.errors import NotFound

router = APIRouter()


def _metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


def _prometheus(metrics: Metrics) -> Response:
    return Response(metrics.prometheus_text(), media_type=CONTENT_TYPE,
                    headers={"cache-control": "no-store"})


@router.get("/v1/admin/metrics")
async def admin_metrics(request: Request, _admin: AdminDep,
                        fmt: Annotated[Literal["json", "prom"], Query(alias="format")] = "json",
                        ) -> Response:
    metrics = _metrics(request)
    if fmt == "prom":
        return _prometheus(metrics)
    return JSONResponse(metrics.snapshot(), headers={"cache-control": "no-store"})


@router.get("/metrics", include_in_schema=False)
async def public_metrics(request: Request) -> Response:
    if not request.app.state.settings.metrics_public:
        raise NotFound("Not Found")
    return _prometheus(_metrics(request))
