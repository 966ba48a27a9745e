"""GPU detection through nvidia-smi (a stand-in script on PATH, printing what the real one
prints for `--query-gpu=name,memory.total --format=csv,noheader,nounits`), and the bandwidth
table."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from darkbloom.provider import hardware
from darkbloom.provider.model_store import fits, memory_budget


@pytest.fixture
def nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    script = tmp_path / "nvidia-smi"
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    hardware.gpus.cache_clear()
    yield script
    hardware.gpus.cache_clear()


def test_two_gpus_are_the_memory_budget(nvidia_smi: Path) -> None:
    nvidia_smi.write_text("#!/bin/sh\nprintf 'NVIDIA H200, 143771\\nNVIDIA H200, 143771\\n'\n")
    nvidia_smi.chmod(0o755)
    assert hardware.gpus() == (hardware.Gpu("NVIDIA H200", 143771 * 2**20),) * 2
    assert memory_budget() == 2 * 143771 * 2**20
    assert fits(int(2 * 143771 * 2**20 / 1.2)) and not fits(2 * 143771 * 2**20)
    machine = hardware.detect()
    assert machine.accelerator == "cuda" and machine.gpu_name == "NVIDIA H200"
    assert machine.memory_bandwidth_gbs == 4800 and machine.gpu_memory_gb == 280.8


@pytest.mark.parametrize("script", ["#!/bin/sh\nexit 9\n", "#!/bin/sh\necho 'garbage'\n",
                                    "#!/bin/sh\necho 'NVIDIA X, [N/A]'\n"])
def test_a_failing_or_odd_nvidia_smi_means_no_gpu(nvidia_smi: Path, script: str) -> None:
    nvidia_smi.write_text(script)
    nvidia_smi.chmod(0o755)
    assert hardware.gpus() == ()
    assert hardware.detect().accelerator in ("cpu", "metal")


@pytest.mark.parametrize(("name", "gbs"), [
    ("Apple M1 Pro", 200), ("Apple M1", 68), ("Apple M4 Max", 546), ("NVIDIA H100 80GB HBM3", 3350),
    ("NVIDIA A100-SXM4-40GB", 1555), ("NVIDIA L40S", 864), ("NVIDIA L4", 300),
    ("NVIDIA GeForce RTX 4090", 1008), ("AMD EPYC 7B13", None), ("Apple M10", None),
])
def test_bandwidth_estimates_only_for_known_chips(name: str, gbs: float | None) -> None:
    assert hardware.bandwidth_gbs(name) == gbs
