"""Routing at scale (issue 10): how long one routing decision takes with 1,000 and 10,000 connected
providers, and how much coordinator memory one connected provider costs.

Decision time: the real ``Scheduler`` in process, every provider serving the model with a varied
heartbeat (load, health, slot state) and reputation, timing ``try_acquire`` + ``release`` (the
decision and its slot bookkeeping; no network). Memory: a real coordinator process and N real
WebSocket provider sessions that register and heartbeat like ``darkbloom serve``; the coordinator's
resident memory before and after, divided by N. Not a test: nothing asserts a number.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import websockets
from tests.e2e.harness import Coordinator

from darkbloom.coordinator.routing.cost import Demand
from darkbloom.coordinator.routing.registry import ProviderConn
from darkbloom.coordinator.routing.scheduler import Scheduler
from darkbloom.crypto import KeyPair
from darkbloom.inference.catalog import DEFAULT_MODEL
from darkbloom.protocol.frames import BackendCapacity, Hardware, Heartbeat, Slot, SystemMetrics

SIZES = (1_000, 10_000)
DECISIONS = 2_000
MEMORY_SESSIONS = 500


def _provider(i: int, rng: random.Random) -> ProviderConn:
    keys = KeyPair.generate()
    conn = ProviderConn(id=f"p{i}", account_id="acct", models=frozenset({"m"}),
                        public_key=keys.public, public_key_b64=keys.public_b64,
                        max_concurrency=rng.choice((1, 2, 4, 8)), hardware=Hardware(),
                        backend="llama.cpp", version="0", trust_level="none")
    conn.reported_decode_tps = rng.uniform(5, 200)
    running = rng.randint(0, conn.max_concurrency)
    conn.heartbeat = Heartbeat(
        system_metrics=SystemMetrics(memory_pressure=rng.random(), cpu_usage=rng.random()),
        backend_capacity=BackendCapacity(slots=[Slot(
            model="m", state=rng.choice(("running", "running", "running", "idle_shutdown")),
            num_running=running, max_tokens_potential=running * 256)]))
    return conn


def decision_times(n: int) -> dict[str, float]:
    rng = random.Random(n)
    scheduler = Scheduler(queue_max=10, queue_timeout_s=1.0)
    for i in range(n):
        provider = _provider(i, rng)
        scheduler.add(provider)
        for _ in range(rng.randint(0, 5)):
            scheduler.reputations.succeeded(provider, rng.uniform(100, 3000))
    demand = Demand("m", prompt_tokens=200, max_tokens=256)
    times = []
    for _ in range(DECISIONS):
        start = time.perf_counter()
        provider = scheduler.try_acquire(demand)
        times.append((time.perf_counter() - start) * 1e6)
        assert provider is not None
        scheduler.release(provider, demand)
    times.sort()
    return {"p50_us": statistics.median(times), "p99_us": times[int(0.99 * len(times))]}


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def _sessions(coordinator: Coordinator, n: int) -> int:
    """Connect ``n`` provider sessions, heartbeat each once; the coordinator's RSS growth (kB)."""
    assert coordinator.proc is not None
    register = {"type": "register", "backend": "llama.cpp", "version": "0.0.0",
                "hardware": {"chip_name": "bench", "memory_gb": 16, "cpu_cores": {"total": 8}},
                "models": [{"id": DEFAULT_MODEL.id, "weight_hash": DEFAULT_MODEL.weight_hash}]}
    beat = {"type": "heartbeat", "status": "idle", "warm_models": [DEFAULT_MODEL.id],
            "backend_capacity": {"slots": [{"model": DEFAULT_MODEL.id}], "total_memory_gb": 16}}
    headers = {"Authorization": f"Bearer {coordinator.provider_token}"}
    before = _rss_kb(coordinator.proc.pid)
    sockets = []
    try:
        for _ in range(n):
            ws = await websockets.connect(coordinator.ws_url, additional_headers=headers)
            await ws.send(json.dumps({**register, "public_key": KeyPair.generate().public_b64}))
            await ws.recv()
            await ws.send(json.dumps(beat))
            sockets.append(ws)
        await asyncio.sleep(2)
        return _rss_kb(coordinator.proc.pid) - before
    finally:
        for ws in sockets:
            await ws.close()


def memory_per_provider(n: int = MEMORY_SESSIONS) -> float:
    """kB of coordinator RSS per connected provider session."""
    with tempfile.TemporaryDirectory() as tmp:
        coordinator = Coordinator(Path(tmp), min_trust_level="none",
                                  max_sessions_per_token=str(n + 10)).start()
        try:
            asyncio.run(_sessions(coordinator, 20))  # warm up: imports, pools, first allocations
            grown = asyncio.run(_sessions(coordinator, n))
        finally:
            coordinator.stop()
    return grown / n


def run_all() -> dict[str, object]:
    return {"decisions": {n: decision_times(n) for n in SIZES},
            "memory_kb_per_provider": memory_per_provider()}


def table(results: dict[str, object]) -> str:
    decisions = results["decisions"]
    assert isinstance(decisions, dict)
    rows = ["| connected providers (one model) | decision p50 | decision p99 |", "|---|---|---|"]
    rows += [f"| {n:,} | {d['p50_us'] / 1000:.2f} ms | {d['p99_us'] / 1000:.2f} ms |"
             for n, d in decisions.items()]
    rows.append("")
    rows.append(f"Coordinator memory per connected provider session: "
                f"{results['memory_kb_per_provider']:.0f} kB ({MEMORY_SESSIONS} sessions)")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table(run_all()))
