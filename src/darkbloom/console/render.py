"""What every page shares: the template environment, the signed-in account, the redirect to
sign in, and the page shell's context (navigation, who is signed in)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from darkbloom import __version__
from darkbloom.coordinator.api.auth import SESSION_COOKIE
from darkbloom.coordinator.store.accounts import SessionIdentity, find_session

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
templates.env.globals["version"] = __version__

# (path, link text): the navigation every page shows, in console.md's order.
NAV = (("/chat", "Chat"), ("/keys", "API keys"), ("/billing", "Billing"), ("/models", "Models"),
       ("/network", "Network"), ("/providers", "Providers"))


def usd(micro: int) -> str:
    """Micro-USD as people read dollars, exactly: two decimals unless a smaller part is there
    ($1.50, $0.000135, $12.345678); never rounded, so a page and the ledger always agree."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), 1_000_000)
    digits = f"{frac:06d}".rstrip("0").ljust(2, "0")
    return f"{sign}${whole:,}.{digits}"


templates.env.filters["usd"] = usd


async def signed_in(request: Request) -> SessionIdentity | None:
    """The account whose session cookie came with this page request, or None."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token or len(token) > 256:
        return None
    state = request.app.state
    return await find_session(state.sessions, token, timedelta(days=state.settings.session_idle_days))


def local_path(next_path: str | None, default: str = "/chat") -> str:
    """Where to go after signing in: a path on this site only (no open redirect)."""
    if not next_path or not next_path.startswith("/") or next_path.startswith("//") \
            or "\\" in next_path or len(next_path) > 512:
        return default
    parts = urlsplit(next_path)
    if parts.scheme or parts.netloc:
        return default
    return next_path


def to_sign_in(request: Request) -> Response:
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/signin?next={quote(local_path(here), safe='/')}", status_code=303)


def page(request: Request, template: str, identity: SessionIdentity | None, title: str,
         **context: Any) -> HTMLResponse:
    """Render a page inside the shell. ``Cache-Control: no-store``: pages carry account data."""
    response = templates.TemplateResponse(request, template, {
        "title": title, "nav": NAV, "identity": identity, "path": request.url.path,
        "base_url": str(request.base_url).rstrip("/"), **context})
    response.headers["cache-control"] = "no-store"
    return response
