"""An unexpected exception is answered 500 in the route's dialect and logged by type, method and
route template under the request's id: never its message, the raw path or the body."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
from fastapi import FastAPI, Request

from darkbloom.coordinator.api import errors
from darkbloom.coordinator.api.request_id import RequestIdMiddleware
from darkbloom.logcontext import RequestIdFilter

SECRET = "zebra-canary-secret"


def app() -> FastAPI:
    app = FastAPI()
    errors.install(app)

    @app.post("/v1/things/{item}")
    async def boom(item: str, request: Request) -> None:
        raise KeyError(SECRET + item + (await request.body()).decode())

    app.add_middleware(RequestIdMiddleware)
    return app


async def test_logged_by_type_method_and_route_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.handler.addFilter(RequestIdFilter())
    caplog.set_level(logging.ERROR, "darkbloom.coordinator.api.errors")
    transport = httpx.ASGITransport(app=app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        # Its own task, as each request has under uvicorn: the request id stays in its context.
        response = await asyncio.create_task(client.post(
            f"/v1/things/{SECRET}-path", content=f"{SECRET}-body", headers={"x-request-id": "trace-9"}))
    assert response.status_code == 500 and response.headers["x-request-id"] == "trace-9"
    assert response.json()["error"]["message"] == "internal error; the request was not charged"
    [record] = caplog.records
    assert record.getMessage() == "unhandled KeyError on POST /v1/things/{item}"
    assert getattr(record, "request_id", None) == "trace-9"
    assert SECRET not in caplog.text and not record.exc_info
