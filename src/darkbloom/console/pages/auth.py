"""Sign in and sign up (console.md): forms whose script posts to ``/v1/auth/login`` and
``/v1/auth/signup``; the answer sets the HttpOnly session cookie and the CSRF cookie."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from darkbloom.console.render import local_path, page, signed_in

router = APIRouter()


@router.get("/")
async def home(request: Request) -> Response:
    identity = await signed_in(request)
    return RedirectResponse("/chat" if identity else "/signin", status_code=303)


@router.get("/signin")
async def sign_in(request: Request, next: str | None = None) -> Response:
    return page(request, "signin.html", await signed_in(request), "Sign in", mode="signin",
                next=local_path(next))


@router.get("/signup")
async def sign_up(request: Request, next: str | None = None) -> Response:
    return page(request, "signin.html", await signed_in(request), "Sign up", mode="signup",
                next=local_path(next))
