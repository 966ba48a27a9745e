"""Common machines for the Earn calculator (console.md): memory bandwidth bounds decode speed, power
sets the electricity bill. Vendored here, not fetched: the network may be closed.

Figures are the makers' published peak memory bandwidth and a typical whole-machine draw while
generating (not the idle or the burst figure); an estimate, as the page says.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Machine:
    id: str
    name: str
    kind: str  # "Apple silicon", "NVIDIA GPU" or "CPU": the page groups by it
    bandwidth_gbs: float  # peak memory bandwidth, GB/s (10^9 bytes per second)
    power_w: int  # typical draw while generating, watts
    memory_gb: tuple[int, ...]  # the sizes it is sold with (a GPU's own memory), smallest first


APPLE, NVIDIA, CPU = "Apple silicon", "NVIDIA GPU", "CPU"

MACHINES: tuple[Machine, ...] = (
    Machine("m1", "Apple M1", APPLE, 68.25, 20, (8, 16)),
    Machine("m1-pro", "Apple M1 Pro", APPLE, 200, 40, (16, 32)),
    Machine("m1-max", "Apple M1 Max", APPLE, 400, 60, (32, 64)),
    Machine("m1-ultra", "Apple M1 Ultra", APPLE, 800, 110, (64, 128)),
    Machine("m2", "Apple M2", APPLE, 100, 22, (8, 16, 24)),
    Machine("m2-pro", "Apple M2 Pro", APPLE, 200, 40, (16, 32)),
    Machine("m2-max", "Apple M2 Max", APPLE, 400, 60, (32, 64, 96)),
    Machine("m2-ultra", "Apple M2 Ultra", APPLE, 800, 120, (64, 128, 192)),
    Machine("m3", "Apple M3", APPLE, 100, 22, (8, 16, 24)),
    Machine("m3-pro", "Apple M3 Pro", APPLE, 150, 40, (18, 36)),
    Machine("m3-max", "Apple M3 Max", APPLE, 400, 70, (36, 48, 64, 96, 128)),
    Machine("m3-ultra", "Apple M3 Ultra", APPLE, 819, 150, (96, 256, 512)),
    Machine("m4", "Apple M4", APPLE, 120, 25, (16, 24, 32)),
    Machine("m4-pro", "Apple M4 Pro", APPLE, 273, 45, (24, 48, 64)),
    Machine("m4-max", "Apple M4 Max", APPLE, 546, 75, (36, 48, 64, 128)),
    Machine("rtx-3090", "NVIDIA GeForce RTX 3090", NVIDIA, 936, 350, (24,)),
    Machine("rtx-4060-ti", "NVIDIA GeForce RTX 4060 Ti 16 GB", NVIDIA, 288, 165, (16,)),
    Machine("rtx-4090", "NVIDIA GeForce RTX 4090", NVIDIA, 1008, 450, (24,)),
    Machine("rtx-5090", "NVIDIA GeForce RTX 5090", NVIDIA, 1792, 575, (32,)),
    Machine("l4", "NVIDIA L4", NVIDIA, 300, 72, (24,)),
    Machine("a100-80", "NVIDIA A100 80 GB PCIe", NVIDIA, 1935, 300, (80,)),
    Machine("h100-sxm", "NVIDIA H100 SXM", NVIDIA, 3350, 700, (80,)),
    Machine("ddr4-desktop", "Desktop CPU, dual-channel DDR4-3200", CPU, 51.2, 90, (16, 32, 64)),
    Machine("ddr5-desktop", "Desktop CPU, dual-channel DDR5-5600", CPU, 89.6, 120, (32, 64, 128)),
    Machine("strix-halo", "AMD Ryzen AI Max+ 395", CPU, 256, 120, (64, 128)),
    Machine("epyc-genoa", "AMD EPYC 9004, 12-channel DDR5-4800", CPU, 460.8, 360, (384, 768)),
)
KINDS = (APPLE, NVIDIA, CPU)
BY_ID = {machine.id: machine for machine in MACHINES}
DEFAULT = BY_ID["m4-pro"]
