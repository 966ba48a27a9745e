"""What this machine is, for `register` and the heartbeat (no secrets, nothing per-user)."""

from __future__ import annotations

import functools
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psutil

from darkbloom.protocol.frames import CpuCores, Hardware, SystemMetrics


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    if platform.system() == "Darwin":
        brand = _run(["sysctl", "-n", "machdep.cpu.brand_string"])
        if brand:
            return brand.strip()
    return platform.processor() or platform.machine()


def _run(argv: list[str]) -> str | None:
    """A short query tool's output, or None when it is missing, slow or fails."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout[:65536] if done.returncode == 0 else None


@dataclass(frozen=True, slots=True)
class Gpu:
    name: str
    memory_bytes: int


@functools.lru_cache(maxsize=1)
def gpus() -> tuple[Gpu, ...]:
    """NVIDIA GPUs (nvidia-smi); empty where there are none or the driver does not answer.
    Asked once per process: the cards do not change while it runs, and each ask is a subprocess."""
    out = _run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"])
    found: list[Gpu] = []
    for line in (out or "").splitlines()[:64]:
        name, _, mib = line.rpartition(",")
        if name.strip() and mib.strip().isdigit():
            found.append(Gpu(name.strip(), int(mib.strip()) * 2**20))
    return tuple(found)


# Peak memory bandwidth in GB/s of chips whose number is public: decode speed is bounded by it
# (each token reads every weight once). Longest names first, so "M2 Max" wins over "M2".
_BANDWIDTH_GBS = {
    "M1 Ultra": 800, "M1 Max": 400, "M1 Pro": 200, "M1": 68,
    "M2 Ultra": 800, "M2 Max": 400, "M2 Pro": 200, "M2": 100,
    "M3 Ultra": 819, "M3 Max": 400, "M3 Pro": 150, "M3": 100,
    "M4 Max": 546, "M4 Pro": 273, "M4": 120,
    "H200": 4800, "H100 PCIe": 2000, "H100": 3350, "A100-SXM4-80GB": 2039, "A100": 1555,
    "L40S": 864, "L4": 300, "A10G": 600, "RTX 4090": 1008, "RTX 4080": 717, "RTX 3090": 936,
}


def bandwidth_gbs(chip_or_gpu: str) -> float | None:
    """The memory-bandwidth estimate for a known chip or GPU name, else None (not guessed)."""
    for name in sorted(_BANDWIDTH_GBS, key=len, reverse=True):
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(name)}(?![A-Za-z0-9])", chip_or_gpu):
            return float(_BANDWIDTH_GBS[name])
    return None


def detect() -> Hardware:
    memory = psutil.virtual_memory()
    total = os.cpu_count() or 1
    chip = _cpu_name()
    cards = gpus()
    apple = platform.system() == "Darwin" and platform.machine() == "arm64"
    gpu_name = cards[0].name if cards else (chip if apple else None)
    gpu_memory = (sum(c.memory_bytes for c in cards) if cards
                  else memory.total if apple else None)
    bandwidth = bandwidth_gbs(gpu_name or chip)
    return Hardware(
        machine_model=f"{platform.system()} {platform.machine()}",
        chip_name=chip,
        chip_family=platform.machine(),
        memory_gb=round(memory.total / 2**30),
        memory_available_gb=round(memory.available / 2**30, 2),
        cpu_cores=CpuCores(total=total, performance=total, efficiency=0),
        memory_bandwidth_gbs=bandwidth or 0.0,
        accelerator="cuda" if cards else "metal" if apple else "cpu",
        gpu_name=gpu_name,
        gpu_memory_gb=round(gpu_memory / 2**30, 1) if gpu_memory else None,
    )


def metrics() -> SystemMetrics:
    return SystemMetrics(memory_pressure=psutil.virtual_memory().percent / 100,
                         cpu_usage=psutil.cpu_percent(interval=None) / 100)
