"""What this machine is, for `register` and the heartbeat (no secrets, nothing per-user)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import psutil

from darkbloom.protocol.frames import CpuCores, Hardware, SystemMetrics


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def detect() -> Hardware:
    memory = psutil.virtual_memory()
    total = os.cpu_count() or 1
    return Hardware(
        machine_model=f"{platform.system()} {platform.machine()}",
        chip_name=_cpu_name(),
        chip_family=platform.machine(),
        memory_gb=round(memory.total / 2**30),
        memory_available_gb=round(memory.available / 2**30, 2),
        cpu_cores=CpuCores(total=total, performance=total, efficiency=0),
        accelerator="cpu",
    )


def metrics() -> SystemMetrics:
    return SystemMetrics(memory_pressure=psutil.virtual_memory().percent / 100,
                         cpu_usage=psutil.cpu_percent(interval=None) / 100)


MEMORY_RESERVE_BYTES = 4 * 2**30  # provider.md: left to the operating system and the user


def model_memory_bytes(size_bytes: int) -> int:
    """provider.md: a model takes about its weights' size × 1.2 once loaded."""
    return size_bytes * 6 // 5


def model_budget_bytes() -> int:
    """Memory models may take on this machine: total RAM − 4 GB (0 if less)."""
    return max(0, int(psutil.virtual_memory().total) - MEMORY_RESERVE_BYTES)

