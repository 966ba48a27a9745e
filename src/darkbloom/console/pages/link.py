"""Link device page (console.md)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from darkbloom.console.render import page, signed_in, to_sign_in

router = APIRouter()


@router.get("/link")
async def link_page(request: Request) -> Response:
    identity = await signed_in(request)
    if identity is None:
        return to_sign_in(request)
    return page(request, "link.html", identity, "Link device")
