"""Network page (console.md)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from darkbloom.console.render import page, signed_in

router = APIRouter()


@router.get("/network")
async def network_page(request: Request) -> Response:
    return page(request, "network.html", await signed_in(request), "Network")
