"""Earn calculator page (console.md)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from darkbloom.console.render import page, signed_in

router = APIRouter()


@router.get("/earn")
async def earn_page(request: Request) -> Response:
    return page(request, "earn.html", await signed_in(request), "Earn calculator")
