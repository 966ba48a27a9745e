"""docs/bench-scale.png: the scale-out figures of `make bench` as a picture (issue 10)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen: render straight to a file
import matplotlib.pyplot as plt


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
