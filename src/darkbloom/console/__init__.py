"""The web console (console.md), served by the coordinator itself: a self-hosted network needs no
second service.

Pages are rendered on the server from the same stores the API reads (Jinja2, autoescaped); the
little JavaScript there is (``static/js``) only calls the public API with the session cookie and
the CSRF header. Every asset ships in the package: the network may be closed, so nothing comes
from a CDN. ``headers.py`` sets the Content-Security-Policy that keeps any script but ours off
these pages.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from darkbloom.console.pages import ROUTERS

STATIC_DIR = Path(__file__).parent / "static"


def install(app: FastAPI) -> None:
    """Mount the console's pages under ``/`` and its assets under ``/static``."""
    for router in ROUTERS:
        app.include_router(router, include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
