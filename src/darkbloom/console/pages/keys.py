"""API keys page (console.md)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from darkbloom.console.render import page, signed_in, to_sign_in

router = APIRouter()


@router.get("/keys")
async def keys_page(request: Request) -> Response:
    identity = await signed_in(request)
    if identity is None:
        return to_sign_in(request)
    return page(request, "keys.html", identity, "API keys")
