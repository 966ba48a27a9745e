"""Console pages under load (issue 12): how long each page takes to render with 1,000 usage rows
and 100 connected providers, measured at an HTTP client on loopback (so the figure includes the
HTTP exchange on top of the render). Not a test: nothing asserts a number.

A real coordinator process (SQLite) with 100 real WebSocket provider sessions that register and
heartbeat like ``darkbloom serve`` (all linked to one operator account), and 1,000 usage rows
spread over the last 14 days for that same account, so every page has its largest data: the
billing page's chart and table, the provider dashboard's 100 machines, the network page's
provider table.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.e2e.harness import OPERATOR, Coordinator

from darkbloom.coordinator.store.accounts import open_session
from darkbloom.coordinator.store.db import make_engine, make_sessionmaker
from darkbloom.coordinator.store.tables import UsageRecord
from darkbloom.crypto import KeyPair
from darkbloom.inference.catalog import DEFAULT_MODEL

PROVIDERS = 100
USAGE_ROWS = 1_000
ROUNDS = 40
PAGES = ("/signin", "/chat", "/keys", "/billing", "/models", "/network", "/network/live",
         "/providers", "/link", "/earn")


async def _seed(database_url: str) -> tuple[str, str]:
    """USAGE_ROWS usage rows for the operator account; a session for it (token, CSRF token)."""
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    rng = random.Random(12)
    now = datetime.now(UTC)
    try:
        async with sessions.begin() as session:
            for i in range(USAGE_ROWS):
                prompt, completion = rng.randint(10, 2000), rng.randint(1, 800)
                session.add(UsageRecord(
                    request_id=f"bench-{i:05d}-{uuid.uuid4().hex[:8]}", account_id=OPERATOR,
                    api_key_id=None, endpoint="/v1/chat/completions", model=DEFAULT_MODEL.id,
                    provider_id=None, provider_account_id=OPERATOR, prompt_tokens=prompt,
                    completion_tokens=completion, cost_micro_usd=prompt // 10 + completion // 2,
                    provider_payout_micro_usd=0, platform_fee_micro_usd=0,
                    referral_reward_micro_usd=0, status="completed", self_routed=True, ttft_ms=20.0,
                    duration_ms=400.0, created_at=now - timedelta(seconds=rng.randint(0, 14 * 86400))))
        issued = await open_session(sessions, OPERATOR, timedelta(days=1))
        return issued.token, issued.csrf_token
    finally:
        await engine.dispose()


async def _measure(coordinator: Coordinator, token: str, csrf: str) -> dict[str, dict[str, float]]:
    register = {"type": "register", "backend": "llama.cpp", "version": "0.0.0",
                "hardware": {"chip_name": "Apple M2 Max", "memory_gb": 64, "cpu_cores": {"total": 12}},
                "models": [{"id": DEFAULT_MODEL.id, "weight_hash": DEFAULT_MODEL.weight_hash}]}
    beat = {"type": "heartbeat", "status": "idle", "warm_models": [DEFAULT_MODEL.id],
            "backend_capacity": {"slots": [{"model": DEFAULT_MODEL.id}], "total_memory_gb": 64}}
    headers = {"Authorization": f"Bearer {coordinator.provider_token}"}
    sockets = []
    try:
        for _ in range(PROVIDERS):
            ws = await websockets.connect(coordinator.ws_url, additional_headers=headers)
            await ws.send(json.dumps({**register, "public_key": KeyPair.generate().public_b64}))
            await ws.recv()
            await ws.send(json.dumps(beat))
            sockets.append(ws)
        await asyncio.sleep(1)
        cookies = {"darkbloom_session": token, "darkbloom_csrf": csrf}
        times: dict[str, list[float]] = {path: [] for path in PAGES}
        sizes: dict[str, int] = {}
        async with httpx.AsyncClient(base_url=coordinator.base_url, cookies=cookies,
                                     timeout=30) as http:
            for path in PAGES:  # warm-up: templates compiled, caches filled
                answer = await http.get(path)
                assert answer.status_code == 200, (path, answer.status_code)
            for _ in range(ROUNDS):
                for path in PAGES:
                    start = time.perf_counter()
                    answer = await http.get(path)
                    times[path].append((time.perf_counter() - start) * 1000)
                    assert answer.status_code == 200, (path, answer.status_code)
                    sizes[path] = len(answer.content)
        return {path: {"p50_ms": statistics.median(values),
                       "p99_ms": sorted(values)[min(len(values) - 1, round(0.99 * (len(values) - 1)))],
                       "bytes": float(sizes[path])}
                for path, values in times.items()}
    finally:
        for ws in sockets:
            await ws.close()


def run_all() -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        coordinator = Coordinator(Path(tmp), min_trust_level="none", log_level="warning",
                                  max_sessions_per_token=str(PROVIDERS + 10)).start()
        try:
            database_url = f"sqlite+aiosqlite:///{(Path(tmp) / 'state' / 'coordinator.db').resolve()}"
            token, csrf = asyncio.run(_seed(database_url))
            return asyncio.run(_measure(coordinator, token, csrf))
        finally:
            coordinator.stop()


def table(results: dict[str, dict[str, float]]) -> str:
    rows = ["| page | p50 | p99 | size |", "|---|---|---|---|"]
    rows += [f"| `{path}` | {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms | {r['bytes'] / 1024:.0f} KiB |"
             for path, r in results.items()]
    return "\n".join(rows)


if __name__ == "__main__":
    print(table(run_all()))
