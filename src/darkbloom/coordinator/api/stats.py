"""Public network data (api.md §9): ``/v1/stats``, ``/v1/leaderboard``, ``/v1/network/totals``.

No auth, so anyone can poll them: each answer is computed at most once per TTL per process, and
concurrent callers of a stale answer wait on that one computation (single flight) instead of
each querying the database, so a storm of stats requests cannot take connections from inference.
Answers are cached as JSON bytes. Provider accounts appear only as HMAC pseudonyms.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable, Hashable
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.datastructures import State

from darkbloom.coordinator.routing.registry import ProviderConn
from darkbloom.coordinator.store import network_stats
from darkbloom.errors import InvalidRequest

router = APIRouter()
T = TypeVar("T")

SERIES_MINUTES = 30
MAX_LIMIT = 200
METRICS = ("earnings", "tokens", "jobs")
WINDOW_ALIASES = {"24h": "24h", "1d": "24h", "7d": "7d", "30d": "30d", "all": "all", "lifetime": "all"}
_TEXT_MAX = 64  # hardware strings come from providers: shown, but cut short


class TtlCache:
    """One value per key, fresh for a TTL. A miss starts one computation; callers arriving while
    it runs await the same future. A failed computation is not cached (the next caller retries);
    a caller that gives up (client gone) does not cancel it for the others."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._values: dict[Hashable, tuple[float, Any]] = {}
        self._pending: dict[Hashable, asyncio.Future[Any]] = {}

    async def get(self, key: Hashable, ttl: float, compute: Callable[[], Awaitable[T]]) -> T:
        hit = self._values.get(key)
        if hit is not None and hit[0] > self._clock():
            return cast(T, hit[1])
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._fill(key, ttl, compute))
            pending.add_done_callback(_observe)
            self._pending[key] = pending
        return cast(T, await asyncio.shield(pending))

    async def _fill(self, key: Hashable, ttl: float, compute: Callable[[], Awaitable[T]]) -> T:
        try:
            value = await compute()
            self._values[key] = (self._clock() + ttl, value)
            return value
        finally:
            self._pending.pop(key, None)


def _observe(future: asyncio.Future[Any]) -> None:
    """Mark the exception seen: every waiter may have left (no 'never retrieved' noise)."""
    if not future.cancelled():
        future.exception()


def _cache(state: State) -> TtlCache:
    cache = getattr(state, "network_stats_cache", None)
    if cache is None:  # no await since the lookup: one cache per app
        cache = state.network_stats_cache = TtlCache()
    return cast(TtlCache, cache)


def _json_bytes(body: bytes, max_age: float) -> Response:
    return Response(body, media_type="application/json",
                    headers={"Cache-Control": f"public, max-age={int(max_age)}"})


def _encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()


def _now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- /v1/stats ------------------------------------------------------------------------------


def _number(value: Any, ceiling: float = 1e9) -> float:
    """A provider-reported figure fit for JSON and sums: finite, 0..ceiling."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return min(max(number, 0.0), ceiling) if math.isfinite(number) else 0.0


def _int(value: Any, ceiling: int = 10**12) -> int:
    return int(_number(value, ceiling))


def _text(value: Any) -> str:
    return str(value or "")[:_TEXT_MAX]


def _status(p: ProviderConn, routable: bool) -> str:
    """The words of /v1/providers/attestation."""
    return ("untrusted" if p.untrusted else "unroutable" if not routable
            else "serving" if p.in_flight else "online")


def _provider(p: ProviderConn, routable: bool) -> dict[str, Any]:
    hw, beat = p.hardware, p.heartbeat
    cores = hw.cpu_cores
    return {
        "id": p.id,  # the session id, public already in /v1/providers/attestation
        "chip": _text(hw.chip_name), "chip_family": _text(hw.chip_family),
        "chip_tier": _text(hw.chip_tier), "machine_model": _text(hw.machine_model),
        "memory_gb": _int(hw.memory_gb, 1 << 20), "gpu_cores": _int(hw.gpu_cores, 1 << 20),
        "cpu_cores": {"total": _int(cores.total, 1 << 20), "performance": _int(cores.performance, 1 << 20),
                      "efficiency": _int(cores.efficiency, 1 << 20)},
        "memory_bandwidth_gbs": round(_number(hw.memory_bandwidth_gbs, 1e6), 1),
        "status": _status(p, routable),
        "trust_level": p.trust_level,
        "decode_tps": round(_number(p.decode_tps, 1e6), 1),
        "requests_served": _int(beat.stats.requests_served),
        "tokens_generated": _int(beat.stats.tokens_generated),
        "models": sorted(p.models),
        "current_model": _text(beat.active_model) or None,
    }


async def compute_stats(state: State) -> bytes:
    """The /v1/stats document: totals and the series from the database (two queries), providers
    from this process's scheduler."""
    sessions = state.sessions
    last_minute = int(time.time() // 60)
    totals = await network_stats.usage_totals(sessions)
    series = await network_stats.usage_by_minute(sessions, last_minute - SERIES_MINUTES + 1)
    scheduler = state.scheduler
    providers: list[dict[str, Any]] = []
    models: dict[str, int] = {}
    active = gpu = cpu = memory = 0
    bandwidth = 0.0
    for p in list(scheduler.providers.values()):
        routable = bool(scheduler.routable(p))
        entry = _provider(p, routable)
        providers.append(entry)
        if not routable:
            continue
        active += 1
        gpu += entry["gpu_cores"]
        cpu += entry["cpu_cores"]["total"]
        memory += entry["memory_gb"]
        bandwidth += entry["memory_bandwidth_gbs"]
        for model in entry["models"]:
            models[model] = models.get(model, 0) + 1
    tokens = totals.prompt_tokens + totals.completion_tokens
    return _encode({
        "total_requests": totals.requests,
        "total_prompt_tokens": totals.prompt_tokens,
        "total_completion_tokens": totals.completion_tokens,
        "total_tokens": tokens,
        "avg_tokens_per_request": round(tokens / totals.requests, 2) if totals.requests else 0,
        "active_providers": active,
        "total_gpu_cores": gpu,
        "total_cpu_cores": cpu,
        "total_memory_gb": memory,
        "total_bandwidth_gbs": round(bandwidth, 1),
        "network_capacity_tps": 0,  # as the reference: a console reads it, nothing fills it
        "providers": providers,
        "models": [{"id": model, "providers": count} for model, count in sorted(models.items())],
        "time_series": network_stats.fill_minutes(series, last_minute, SERIES_MINUTES),
    })


async def cached_stats(state: State) -> bytes:
    """The /v1/stats document from the shared cache (the console's network page reads it too)."""
    return await _cache(state).get("stats", state.settings.stats_cache_s, lambda: compute_stats(state))


@router.get("/v1/stats")
async def stats(request: Request) -> Response:
    state = request.app.state
    return _json_bytes(await cached_stats(state), state.settings.stats_cache_s)


# --- /v1/leaderboard, /v1/network/totals ----------------------------------------------------


def _param(request: Request, name: str, default: str) -> str:
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise InvalidRequest(f"{name} may be given once", param=name)
    value = values[0] if values else default
    if len(value) > 16:
        raise InvalidRequest(f"{name} is too long", param=name)
    return value.strip().lower()


def _window(request: Request) -> str:
    window = WINDOW_ALIASES.get(_param(request, "window", "all"))
    if window is None:
        raise InvalidRequest("window must be one of 24h (or 1d), 7d, 30d, all (or lifetime)",
                             param="window")
    return window


def _metric(request: Request) -> network_stats.Metric:
    metric = _param(request, "metric", "earnings")
    if metric not in METRICS:
        raise InvalidRequest("metric must be one of earnings, tokens, jobs", param="metric")
    return cast(network_stats.Metric, metric)


def _limit(request: Request) -> int:
    raw = _param(request, "limit", "50")
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be an integer from 1 to {MAX_LIMIT}", param="limit")
    return int(raw)


async def _secret(state: State) -> bytes:
    return await _cache(state).get("pseudonym-secret", math.inf, lambda: network_stats.shared_secret(
        state.sessions, network_stats.PSEUDONYM_SECRET))


async def compute_leaderboard(state: State, metric: network_stats.Metric, window: str
                              ) -> list[dict[str, Any]]:
    """The top MAX_LIMIT entries; a request for fewer gets a prefix of the same cached list."""
    secret = await _secret(state)
    rows = await network_stats.top_accounts(state.sessions, metric, window, MAX_LIMIT, datetime.now(UTC))
    return [{"rank": rank, "pseudonym": network_stats.pseudonym(secret, row.account_id),
             "earnings_micro_usd": row.earnings_micro_usd, "tokens": row.tokens, "jobs": row.jobs}
            for rank, row in enumerate(rows, start=1)]


async def cached_leaderboard(state: State, metric: network_stats.Metric, window: str
                             ) -> tuple[list[dict[str, Any]], str]:
    """A board and when it was computed, from the shared cache."""
    async def compute() -> tuple[list[dict[str, Any]], str]:
        return await compute_leaderboard(state, metric, window), _now_rfc3339()

    return await _cache(state).get(("leaderboard", metric, window), state.settings.leaderboard_cache_s,
                                   compute)


@router.get("/v1/leaderboard")
async def leaderboard(request: Request) -> Response:
    metric, window, limit = _metric(request), _window(request), _limit(request)
    state = request.app.state
    ttl = state.settings.leaderboard_cache_s
    entries, updated_at = await cached_leaderboard(state, metric, window)
    return _json_bytes(_encode({"metric": metric, "window": window, "entries": entries[:limit],
                                "updated_at": updated_at}), ttl)


async def compute_totals(state: State, window: str) -> bytes:
    totals = await network_stats.earnings_totals(state.sessions, window, datetime.now(UTC))
    return _encode({"window": window, "earnings_micro_usd": totals.earnings_micro_usd,
                    "tokens": totals.tokens, "jobs": totals.jobs,
                    "active_accounts": totals.active_accounts, "updated_at": _now_rfc3339()})


@router.get("/v1/network/totals")
async def network_totals(request: Request) -> Response:
    window = _window(request)
    state = request.app.state
    ttl = state.settings.network_totals_cache_s
    body = await _cache(state).get(("totals", window), ttl, lambda: compute_totals(state, window))
    return _json_bytes(body, ttl)
