"""The pictures of `make bench`: docs/bench-latency.png (issue 14, the side-by-side) and
docs/bench-scale.png (issue 10, the scale-out figures)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # no screen: render straight to a file
import matplotlib.pyplot as plt

if TYPE_CHECKING:
    from bench.latency import Results

COLORS = {"in-process": "#55a868", "llama-server": "#8172b2", "litellm": "#dd8452",
          "darkbloom": "#4c72b0"}


def latency_plot(results: Results, out: Path) -> None:
    """Added TTFT at one stream (what a request pays for the server), TTFT as streams grow (the
    queue), and aggregate tok/s as streams grow (what batching buys)."""
    from bench.latency import LABELS, SYSTEMS

    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(14, 4.2))
    one = results.levels[0]
    base = results.summary("in-process", one)
    others = [s for s in SYSTEMS if s != "in-process"]
    for i, q in enumerate(("p50", "p99")):
        added = [getattr(results.summary(s, one), f"ttft_{q}_ms") - getattr(base, f"ttft_{q}_ms")
                 for s in others]
        left.bar([x + (i - 0.5) * 0.38 for x in range(len(others))], added, width=0.38,
                 color=[COLORS[s] for s in others], alpha=1.0 if q == "p50" else 0.45)
        left.bar([0], [0], color="#888888", alpha=1.0 if q == "p50" else 0.45, label=q)
    left.axhline(0, color="black", linewidth=0.6)
    left.axhline(2, color="#c44e52", linestyle="--", linewidth=1, label="target p50 ≤ 2 ms")
    left.set_xticks(range(len(others)), [LABELS[s].split(" (")[0].replace(" → ", "\n→ ")
                                         for s in others], fontsize=7)
    left.set_ylabel("ms over in-process llama.cpp")
    left.set_title(f"Added TTFT, {one.streams} stream")
    left.legend(fontsize=7)
    streams = [lv.streams for lv in results.levels]
    for system in SYSTEMS:
        summaries = [results.summary(system, lv) for lv in results.levels]
        middle.plot(streams, [s.ttft_p50_ms for s in summaries], "o-", color=COLORS[system],
                    label=LABELS[system].replace("`", ""))
        for n, s in zip(streams, summaries, strict=True):
            if s.failed:  # its TTFT is over the served requests only: say how many
                middle.annotate(f"{s.requests - s.failed}/{s.requests} served", (n, s.ttft_p50_ms),
                                textcoords="offset points", xytext=(-60, -12), fontsize=7,
                                color=COLORS[system])
        right.plot(streams, [s.aggregate_tps for s in summaries], "o-", color=COLORS[system],
                   label=LABELS[system].replace("`", ""))
    for axis in (middle, right):
        axis.set_xscale("log", base=2)
        axis.set_xticks(streams, [str(n) for n in streams])
        axis.set_xlabel("concurrent streams")
    middle.set_yscale("log")
    middle.set_ylabel("TTFT p50 (ms)")
    middle.set_title("Time to first token")
    right.set_ylabel("content tokens / s, all streams")
    right.set_ylim(bottom=0)
    right.set_title("Aggregate throughput")
    right.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)


def scale_plot(relay_rows: list[dict[str, float]], decisions: dict[int, dict[str, float]],
               out: Path) -> None:
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    base = relay_rows[0]["chunks_per_cpu_s"] if relay_rows else 1.0
    cluster = [r for r in relay_rows if r["clustered"]]
    alone = {int(r["coordinators"]): r for r in relay_rows if not r["clustered"]}
    sizes = [int(r["coordinators"]) for r in cluster]
    left.bar([x - 0.2 for x in range(len(sizes))], [r["chunks_per_cpu_s"] / base for r in cluster],
             width=0.4, color="#4c72b0", label="one cluster (vs 1 coordinator)")
    left.bar([x + 0.2 for x in range(len(sizes))],
             [alone[n]["chunks_per_cpu_s"] / base if n in alone else 1.0 for n in sizes],
             width=0.4, color="#8da0cb", label="as many standing alone (crowding on 2 cores)")
    left.set_xticks(range(len(sizes)), [str(n) for n in sizes])
    left.axhline(0.8, color="#c44e52", linestyle="--", label="target 0.8")
    left.set_xlabel("coordinators on one PostgreSQL + Redis")
    left.set_ylabel("relative efficiency")
    left.set_ylim(0, 1.2)
    left.set_title("Relay capacity (simulated providers)")
    left.legend(loc="lower left", fontsize=8)
    providers = sorted(decisions)
    right.plot(providers, [decisions[n]["p50_us"] / 1000 for n in providers], "o-", label="p50")
    right.plot(providers, [decisions[n]["p99_us"] / 1000 for n in providers], "s-", label="p99")
    right.set_xscale("log")
    right.set_xlabel("connected providers (one model)")
    right.set_ylabel("routing decision (ms)")
    right.set_title("Routing decision time")
    right.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)
