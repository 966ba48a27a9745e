"""The cluster bus's capacity (issue 10): sealed chunk frames from a provider's home coordinator
(A) back to the requesting coordinator (B) through the machine's Redis on loopback.

Both ends run in this one process on one event loop (so one core does A's writing and B's
reading, plus the Python side of Redis's client), with their own Redis clients, exactly as two
coordinators would use the bus: B registers replies and sends each request to A's inbox; A
answers every request with ``frames`` chunk frames, the last one final. Frames are the shape and
size of real ``inference_response_chunk`` frames (random base64 standing for the ciphertext).
Throughput is frames delivered to B's iterators per second from the first request to the last
frame; latency is one frame's time from A's ``send_reply`` to B's iterator. Not a test: nothing
asserts a number.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from darkbloom.coordinator.cluster import Bus, Presence  # noqa: E402
from darkbloom.coordinator.cluster._aio import client, stop  # noqa: E402

REDIS_URL = os.environ.get("DARKBLOOM_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
# (concurrent streams, frames per stream, plaintext bytes per chunk, frames/s per stream or None
# for as fast as the bus takes them): token-sized chunks and larger ones (a non-streamed answer's
# single chunk is usually a few KiB) flat out, for throughput; then paced like real token streams
# (50 tokens/s each), where latency means something (flat out, it is mostly queueing).
RUNS = ((1, 10_000, 64, None), (16, 2_000, 64, None), (64, 500, 64, None), (16, 500, 4096, None),
        (64, 100, 64, 50.0), (256, 50, 64, 50.0))


def chunk_frame(request_id: str, seq: int, plaintext_bytes: int, key_b64: str) -> str:
    """An inference_response_chunk as a provider sends it: nonce (24) + tag (16) + ciphertext."""
    ciphertext = base64.b64encode(os.urandom(24 + 16 + plaintext_bytes)).decode()
    return json.dumps({"type": "inference_response_chunk", "v": 1, "request_id": request_id,
                       "seq": seq, "encrypted_data": {"ephemeral_public_key": key_b64,
                                                      "ciphertext": ciphertext}})


async def measure(streams: int, frames: int, plaintext_bytes: int,
                  rate: float | None = None) -> dict[str, float]:
    prefix = f"bench-{secrets.token_hex(4)}:"
    client_a, client_b = client(REDIS_URL), client(REDIS_URL)
    presence_a = Presence(client_a, prefix, "node-a")
    presence_b = Presence(client_b, prefix, "node-b")
    await presence_a.beat()
    await presence_b.beat()
    beating = [asyncio.create_task(presence_a.run()), asyncio.create_task(presence_b.run())]
    a = Bus(client_a, prefix, "node-a", liveness=presence_a)
    b = Bus(client_b, prefix, "node-b", liveness=presence_b)
    await a.start()
    await b.start()
    key_b64 = base64.b64encode(os.urandom(32)).decode()
    # Frames are made before timing; sent_at[request][seq] is stamped as A hands each to the bus.
    prepared = {f"req-{i}": [chunk_frame(f"req-{i}", n, plaintext_bytes, key_b64) for n in range(frames)]
                for i in range(streams)}
    sent_at: dict[str, list[float]] = {rid: [0.0] * frames for rid in prepared}
    latencies: list[float] = []
    wire_bytes = sum(len(f) for fs in prepared.values() for f in fs)
    waiting = {rid: b.replies(rid, home="node-a") for rid in prepared}  # registered before sending

    async def home() -> None:
        """A: take each request from the inbox and answer it from its own task."""
        answering: list[asyncio.Task[None]] = []

        async def answer(origin: str, rid: str) -> None:
            first = time.perf_counter()
            for n, frame in enumerate(prepared[rid]):
                if rate is not None and (lag := first + n / rate - time.perf_counter()) > 0:
                    await asyncio.sleep(lag)
                sent_at[rid][n] = time.perf_counter()
                await a.send_reply(origin, rid, frame, final=n == frames - 1)

        inbox = a.inbox()
        for _ in range(streams):
            message = await anext(inbox)
            answering.append(asyncio.create_task(answer(message.origin, message.request_id)))
        await asyncio.gather(*answering)

    async def consume(rid: str) -> int:
        got = 0
        async for _ in waiting[rid]:
            latencies.append(time.perf_counter() - sent_at[rid][got])
            got += 1
        return got

    try:
        started = time.perf_counter()
        home_task = asyncio.create_task(home())
        consumers = asyncio.gather(*(consume(rid) for rid in prepared))  # reading from the start
        for rid in prepared:
            await b.send_request("node-a", "prov-1", rid, '{"type": "inference_request"}')
        counts = await consumers
        elapsed = time.perf_counter() - started
        await home_task
        assert sum(counts) == streams * frames, counts
    finally:
        await stop(beating)
        await a.close()
        await b.close()
        keys = [k async for k in client_a.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client_a.delete(*keys)
        await client_a.aclose()
        await client_b.aclose()
    ordered = sorted(latencies)
    return {"frames_per_s": streams * frames / elapsed, "mib_per_s": wire_bytes / elapsed / 2**20,
            "lat_p50_ms": statistics.median(ordered) * 1000,
            "lat_p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000,
            "frame_bytes": wire_bytes / (streams * frames), "n": streams * frames}


Key = tuple[int, int, float | None]


def run_all() -> dict[Key, dict[str, float]]:
    results = {}
    for streams, frames, plaintext, rate in RUNS:
        pace = f" at {rate:g}/s each" if rate else " flat out"
        print(f"cluster bus: {streams} stream(s) x {frames} frames of {plaintext} B{pace}...", flush=True)
        results[(streams, plaintext, rate)] = asyncio.run(measure(streams, frames, plaintext, rate))
    return results


def table(results: dict[Key, dict[str, float]]) -> str:
    rows = ["| concurrent streams | chunk plaintext (B) | frame on the bus (B) | pace per stream "
            "| frames/s | MiB/s | latency p50 (ms) | latency p99 (ms) | frames |",
            "|---|---|---|---|---|---|---|---|---|"]
    for (streams, plaintext, rate), r in results.items():
        pace = f"{rate:g} frames/s" if rate else "flat out"
        rows.append(f"| {streams} | {plaintext} | {r['frame_bytes']:.0f} | {pace} | {r['frames_per_s']:.0f} "
                    f"| {r['mib_per_s']:.1f} | {r['lat_p50_ms']:.2f} | {r['lat_p99_ms']:.2f} "
                    f"| {int(r['n'])} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table(run_all()))
