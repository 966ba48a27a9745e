"""Network stats page (console.md): public, and refreshed every 10 s without a reload.

The figures are ``/v1/stats`` and ``/v1/leaderboard``'s own documents, taken from the same TTL
cache (coordinator/api/stats.py), so a room full of open stats pages costs the database no more
than one poller. ``GET /network/live`` renders only the live section; ``static/js/network.js``
fetches it and swaps it in. It is our own autoescaped Jinja output: provider-reported text
(chip names) is escaped there like everywhere else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.datastructures import State

from darkbloom.console.charts import line_chart
from darkbloom.console.pages.models import TRUST_WORDS
from darkbloom.console.render import page, signed_in, templates
from darkbloom.coordinator.api.stats import cached_leaderboard, cached_stats
from darkbloom.protocol.trust import LEVELS

router = APIRouter()

REFRESH_S = 10
PROVIDER_ROWS = 100  # the table's bound; the page says how many more there are
LEADERS = 10
ONLINE = ("online", "serving")


@dataclass(frozen=True, slots=True)
class Figures:
    tokens: int
    requests: int
    providers_online: int
    by_trust: list[tuple[str, int]]  # (words, count), highest level first
    models: int


async def stats_document(state: State) -> dict[str, Any]:
    """``/v1/stats``'s cached answer (computed here on a miss, into the same cache)."""
    document: dict[str, Any] = json.loads(await cached_stats(state))
    return document


async def leaderboard(state: State) -> list[dict[str, Any]]:
    """``/v1/leaderboard``'s default board (earnings, all time), from the same cache entry."""
    entries, _ = await cached_leaderboard(state, "earnings", "all")
    return entries[:LEADERS]


def figures(stats: dict[str, Any]) -> Figures:
    online = [p for p in stats["providers"] if p["status"] in ONLINE]
    by_trust = [(TRUST_WORDS[level], sum(1 for p in online if p["trust_level"] == level))
                for level in reversed(LEVELS)]
    return Figures(stats["total_tokens"], stats["total_requests"], len(online), by_trust,
                   len(stats["models"]))


def live_context(stats: dict[str, Any], leaders: list[dict[str, Any]]) -> dict[str, Any]:
    series = stats["time_series"]
    labels = [bucket["timestamp"][11:16] for bucket in series]  # HH:MM, UTC
    providers = sorted(stats["providers"], key=lambda p: (p["status"] not in ONLINE, p["chip"].lower()))
    return {
        "figures": figures(stats),
        "requests_chart": line_chart("Requests per minute, last 30 minutes (UTC)", labels,
                                     [bucket["requests"] for bucket in series], "requests"),
        "tokens_chart": line_chart("Tokens per minute, last 30 minutes (UTC)", labels,
                                   [bucket["total_tokens"] for bucket in series], "tokens"),
        "providers": providers[:PROVIDER_ROWS],
        "more_providers": max(len(providers) - PROVIDER_ROWS, 0),
        "trust_words": TRUST_WORDS,
        "leaders": leaders,
        "updated": datetime.now(UTC).strftime("%H:%M:%S"),
    }


async def _live(state: State) -> dict[str, Any]:
    return live_context(await stats_document(state), await leaderboard(state))


@router.get("/network")
async def network_page(request: Request) -> Response:
    return page(request, "network.html", await signed_in(request), "Network",
                refresh_s=REFRESH_S, **await _live(request.app.state))


@router.get("/network/live")
async def network_live(request: Request) -> Response:
    """The live section alone, for network.js to swap in."""
    response = templates.TemplateResponse(request, "network_live.html", await _live(request.app.state))
    response.headers["cache-control"] = "no-store"
    return response
