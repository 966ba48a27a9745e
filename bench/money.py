"""The money path's cost per request (issue 9): reserve (before dispatch, so in time to first token)
and settle (after the last byte), one request at a time and at 64 concurrent requests, on SQLite
and on PostgreSQL.

Each worker is a consumer account running requests back to back; payouts go to 8 provider
accounts, so settlements contend on provider rows as on a small network. Latency is measured
around each call, as the pipeline awaits it. Not a test: nothing asserts a number.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from darkbloom.coordinator.store import charging, ledger
from darkbloom.coordinator.store.credentials import ensure_account
from darkbloom.coordinator.store.db import make_engine, make_sessionmaker, upgrade

RUNS = ((1, 300), (64, 40))  # (concurrent requests, requests per worker)
OPERATORS = 8


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(url: str, concurrency: int, per_worker: int) -> dict[str, float]:
    await upgrade(url)
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    consumers = [f"bench-c{i}" for i in range(concurrency)]
    operators = [f"bench-p{i}" for i in range(OPERATORS)]
    async with sessions.begin() as session:
        for account in consumers + operators:
            await ensure_account(session, account)
    for account in consumers:
        await ledger.credit(sessions, account, 10**9, "admin_credit", f"bench:{account}", withdrawable=False)
    reserve_ms: list[float] = []
    settle_ms: list[float] = []

    async def worker(w: int) -> None:
        for n in range(per_worker):
            rid = f"bench-{w}-{n}"
            hold = charging.Hold(rid, consumers[w], 2_000, 50_000, 200_000, 40, 8_192)
            t0 = time.perf_counter()
            await charging.reserve(sessions, hold)
            t1 = time.perf_counter()
            served = charging.Served(prompt_tokens=40, completion_tokens=64, status="completed",
                                     endpoint="/v1/chat/completions", model="m", api_key_id=None,
                                     provider_id="p", provider_account_id=operators[n % OPERATORS],
                                     provider_key="k", plausible=True)
            await charging.settle(sessions, hold, served, fee_bps=0, referral_pct=0)
            t2 = time.perf_counter()
            reserve_ms.append((t1 - t0) * 1000)
            settle_ms.append((t2 - t1) * 1000)

    start = time.perf_counter()
    try:
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - start
        assert await ledger.audit(sessions) == []
    finally:
        await engine.dispose()
    return {"reserve_p50": statistics.median(reserve_ms), "reserve_p99": _pct(reserve_ms, 0.99),
            "settle_p50": statistics.median(settle_ms), "settle_p99": _pct(settle_ms, 0.99),
            "per_s": len(settle_ms) / elapsed, "n": len(settle_ms)}


def run_all() -> dict[tuple[str, int], dict[str, float]]:
    from tests.conftest import drop_postgres_database, fresh_postgres_database

    results = {}
    for concurrency, per_worker in RUNS:
        with tempfile.TemporaryDirectory() as tmp:
            results[("SQLite (file, WAL)", concurrency)] = asyncio.run(
                measure(f"sqlite+aiosqlite:///{Path(tmp) / 'b.db'}", concurrency, per_worker))
        name, url = fresh_postgres_database()
        try:
            results[("PostgreSQL (local)", concurrency)] = asyncio.run(measure(url, concurrency, per_worker))
        finally:
            drop_postgres_database(name)
    return results


def table(results: dict[tuple[str, int], dict[str, float]]) -> str:
    rows = ["| database | concurrent | reserve p50 (ms) | reserve p99 (ms) | settle p50 (ms) "
            "| settle p99 (ms) | settlements/s | requests |", "|---|---|---|---|---|---|---|---|"]
    for (name, concurrency), r in results.items():
        rows.append(f"| {name} | {concurrency} | {r['reserve_p50']:.2f} | {r['reserve_p99']:.2f} "
                    f"| {r['settle_p50']:.2f} | {r['settle_p99']:.2f} | {r['per_s']:.0f} | {int(r['n'])} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table(run_all()))
