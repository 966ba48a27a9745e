"""Relay capacity (issue 10), SIMULATED providers: how many sealed chunks a coordinator relays per
second of its own CPU, and how that holds with 1, 2 and 4 coordinators on one PostgreSQL + Redis.

Each coordinator gets its own simulated providers (tests/e2e/sim_provider.py: the real provider
agent replaying a recorded token stream with no model, so the load is the coordinator's). Clients
stream chat completions round-robin across the coordinators; the share of requests that reached
a provider held by another coordinator (and crossed Redis both ways) is read off each
coordinator's ``cluster_requests_total``. Chunks are
counted at the HTTP client (SSE data lines); CPU is the coordinators' own (utime + stime from
/proc), so "chunks per coordinator CPU-second" is comparable however many cores the machine has.
Not a test: nothing asserts a number.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from tests.conftest import drop_postgres_database, fresh_postgres_database
from tests.e2e.harness import MODEL, Coordinator, Provider, _cli

TOKENS = 64
STREAMS_PER_COORDINATOR = 16
DURATION_S = 15.0
PROVIDERS_PER_COORDINATOR = 2
SLOTS = 2  # the memory tier's cap for what a simulated provider reports (protocol.md §7)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _stream_forever(base: str, key: str, stop: float, counts: list[int]) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": TOKENS,
            "stream": True}
    async with httpx.AsyncClient(timeout=60) as client:
        while time.monotonic() < stop:
            async with client.stream("POST", f"{base}/v1/chat/completions", json=body,
                                     headers={"Authorization": f"Bearer {key}"}) as response:
                if response.status_code != 200:
                    counts[1] += 1
                    await response.aread()
                    continue
                counts[2] += 1
                async for line in response.aiter_lines():
                    if line.startswith("data: {"):
                        counts[0] += 1


def _crossed(base: str) -> int:
    """Requests this coordinator sent to a provider another one holds (its /metrics)."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
               if line.startswith('cluster_requests_total{direction="sent"}'))


def measure(n: int, redis_prefix: str, clustered: bool = True) -> dict[str, float]:
    """Aggregate relayed chunks/s and chunks per coordinator CPU-second with ``n`` coordinators:
    one cluster on Redis, or (``clustered=False``) ``n`` coordinators that do not know each other,
    each serving its own providers: the same processes and load on this machine's 2 cores, so
    the difference between the two is what the cluster costs, not what crowding costs."""
    name, url = fresh_postgres_database()
    tmp = Path(tempfile.mkdtemp(prefix=f"relay{n}-"))
    settings: dict[str, object] = {"queue_max_per_model": 1000, "inference_rate_per_s": 0,
                                   "metrics_public": "true"}
    if n > 1 and clustered:
        settings.update(redis_url="redis://127.0.0.1:6379/0", redis_prefix=redis_prefix)
    coordinators: list[Coordinator] = []
    providers: list[Provider] = []
    try:
        (tmp / "c0").mkdir(parents=True, exist_ok=True)
        first = Coordinator(tmp / "c0", database_url=url, **settings).start()
        coordinators.append(first)
        for i in range(1, n):
            (tmp / f"c{i}").mkdir(parents=True, exist_ok=True)
            other = Coordinator(tmp / f"c{i}", database_url=url, **settings)
            other.api_key, other.provider_token = first.api_key, first.provider_token
            coordinators.append(other.start())
        for c in coordinators:
            for j in range(PROVIDERS_PER_COORDINATOR):
                providers.append(Provider(c, f"sim{j}", slots=SLOTS, simulated=True,
                                          sim_tokens=TOKENS, sim_token_s=0.0).start(wait=False))
        total = n * PROVIDERS_PER_COORDINATOR
        for c in coordinators:
            c.wait_providers(total if n > 1 and clustered else PROVIDERS_PER_COORDINATOR, timeout=60)
        key = _cli(["keys", "create", "--label", "bench"], first.env)
        pids = [c.proc.pid for c in coordinators if c.proc]
        cpu_before = sum(_cpu_s(p) for p in pids)
        counts = [0, 0, 0]  # chunks, errors, answers
        stop = time.monotonic() + DURATION_S

        async def go() -> None:
            await asyncio.gather(*(
                _stream_forever(coordinators[i % n].base_url, key, stop, counts)
                for i in range(STREAMS_PER_COORDINATOR * n)))

        started = time.monotonic()
        asyncio.run(go())
        elapsed = time.monotonic() - started
        cpu = sum(_cpu_s(p) for p in pids) - cpu_before
        sent = sum(_crossed(c.base_url) for c in coordinators)
        return {"crossing": sent / counts[2] if counts[2] else 0.0, "coordinators": n,
                "clustered": float(clustered), "chunks_per_s": counts[0] / elapsed,
                "chunks_per_cpu_s": counts[0] / cpu if cpu else 0.0, "errors": counts[1],
                "cpu_s": cpu, "elapsed_s": elapsed}
    finally:
        for p in providers:
            p.stop()
        for c in coordinators:
            c.stop()
        drop_postgres_database(name)


def run_all(sizes: tuple[int, ...] = (1, 2, 4)) -> list[dict[str, float]]:
    """Each cluster size, then the same number of coordinators standing alone (the crowding
    baseline), interleaved so drift hits both."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    rows = []
    for n in sizes:
        rows.append(measure(n, f"{prefix}-{n}"))
        if n > 1:
            rows.append(measure(n, "", clustered=False))
    return rows


def table(rows: list[dict[str, float]]) -> str:
    base = rows[0]["chunks_per_cpu_s"] if rows else 0.0
    alone = {int(r["coordinators"]): r["chunks_per_cpu_s"] for r in rows if not r["clustered"]}
    out = ["| coordinators | relayed chunks/s (all) | chunks per coordinator CPU-second | "
           "vs one coordinator | vs as many standing alone | requests crossing | errors |",
           "|---|---|---|---|---|---|---|"]
    for row in rows:
        n = int(row["coordinators"])
        ratio = row["chunks_per_cpu_s"] / base if base else 0.0
        kind = "one cluster" if row["clustered"] and n > 1 else "standing alone" if n > 1 else "one"
        versus = (f"{row['chunks_per_cpu_s'] / alone[n]:.2f}" if row["clustered"] and n in alone
                  else "")
        out.append(f"| {n} ({kind}) | {row['chunks_per_s']:,.0f} | {row['chunks_per_cpu_s']:,.0f} | "
                   f"{ratio:.2f} | {versus} | {row.get('crossing', 0.0):.0%} | "
                   f"{int(row['errors'])} |")
    return "\n".join(out)


if __name__ == "__main__":
    print(table(run_all()))
