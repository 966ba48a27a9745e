"""`darkbloom benchmark`: how fast this machine serves a model, measured, not guessed.

A warm-up run, then three runs of one fixed prompt (greedy, fixed seed); the medians are saved to
``<config_dir>/benchmark.json`` as ``{"measured_at", "models": {id: {"decode_tps", "prefill_tps",
"ttft_ms"}}}``. ``serve`` reads it back (``load_benchmark``) and reports the figures in
``register``; routing uses them until the coordinator has measured the provider itself.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from darkbloom.config import ProviderSettings
from darkbloom.inference.request import GenerationRequest, Message, Sampling
from darkbloom.provider.config_files import make_private_dir
from darkbloom.provider.engines.base import Engine, Finished, Started, TextDelta

BENCHMARK_FILE = "benchmark.json"
RUNS = 3
PROMPT = ("Write a detailed, step-by-step explanation of how a refrigerator keeps food cold, "
          "covering the compressor, the condenser, the expansion valve and the evaporator.")
_MAX_FILE_BYTES = 1 << 20
_MAX_MODELS = 256


@dataclass(frozen=True, slots=True)
class Run:
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float  # request to first text: prefill plus the first token
    total_s: float

    @property
    def prefill_tps(self) -> float:
        return self.prompt_tokens / self.ttft_s if self.ttft_s > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        """Tokens after the first, over the time after the first."""
        decode_s = self.total_s - self.ttft_s
        return (self.completion_tokens - 1) / decode_s if decode_s > 0 and self.completion_tokens > 1 \
            else 0.0


@dataclass(frozen=True, slots=True)
class Result:
    model: str
    runs: tuple[Run, ...]

    @property
    def decode_tps(self) -> float:
        return statistics.median(run.decode_tps for run in self.runs)

    @property
    def prefill_tps(self) -> float:
        return statistics.median(run.prefill_tps for run in self.runs)

    @property
    def ttft_ms(self) -> float:
        return statistics.median(run.ttft_s for run in self.runs) * 1000

    def figures(self) -> dict[str, float]:
        return {"decode_tps": round(self.decode_tps, 2), "prefill_tps": round(self.prefill_tps, 2),
                "ttft_ms": round(self.ttft_ms, 1)}


def load_model(settings: ProviderSettings, model_id: str) -> Engine:
    """The one place the benchmark loads a model (the provider runtime's loader)."""
    from darkbloom.cli.provider_common import model_store
    from darkbloom.provider.runtime import model_host

    host = model_host(settings.model_copy(update={"models": [model_id], "slots": 1}),
                      model_store(settings))
    host.load_all()
    return host


async def run_once(engine: Engine, model: str, max_tokens: int,
                   clock: Callable[[], float] = time.perf_counter) -> Run:
    request = GenerationRequest(endpoint="/v1/chat/completions", model=model,
                                messages=(Message("user", PROMPT),), max_tokens=max_tokens,
                                sampling=Sampling(temperature=0.0, seed=1234))
    start = clock()
    first: float | None = None
    prompt_tokens = 0
    async for event in engine.generate(request, max_tokens, threading.Event()):
        if isinstance(event, Started):
            prompt_tokens = event.prompt_tokens
        elif isinstance(event, TextDelta) and first is None and event.text:
            first = clock()
        elif isinstance(event, Finished):
            end = clock()
            return Run(event.prompt_tokens or prompt_tokens, event.completion_tokens,
                       (first or end) - start, end - start)
    raise RuntimeError("the engine ended without finishing the run")


async def measure(engine: Engine, model: str, max_tokens: int,
                  on_run: Callable[[int, Run], None] | None = None) -> Result:
    """A warm-up (run 0, not counted), then RUNS runs."""
    runs: list[Run] = []
    for index in range(RUNS + 1):
        run = await run_once(engine, model, max_tokens)
        if on_run is not None:
            on_run(index, run)
        if index:
            runs.append(run)
    return Result(model, tuple(runs))


def save_benchmark(config_dir: Path, result: Result, now: datetime | None = None) -> Path:
    """Merge this model's figures into benchmark.json (other models' stay), atomically."""
    existing = load_benchmark(config_dir) or {"models": {}}
    models = {k: v for k, v in existing["models"].items() if k != result.model}
    models[result.model] = result.figures()
    stamp = (now or datetime.now(UTC)).isoformat(timespec="seconds").replace("+00:00", "Z")
    path = config_dir / BENCHMARK_FILE
    make_private_dir(config_dir)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"measured_at": stamp, "models": models}, indent=2, sort_keys=True))
    os.replace(tmp, path)
    return path


def _speed(value: object, limit: float) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) \
            and 0 < value <= limit:
        return float(value)
    return None


def load_benchmark(config_dir: Path) -> dict[str, Any] | None:
    """benchmark.json as saved, keeping only well-formed entries (positive, finite, bounded
    figures); None when there is no usable file."""
    try:
        with (config_dir / BENCHMARK_FILE).open("rb") as f:
            raw = f.read(_MAX_FILE_BYTES + 1)
        data = json.loads(raw) if len(raw) <= _MAX_FILE_BYTES else None
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        return None
    models: dict[str, dict[str, float]] = {}
    for model, figures in list(data["models"].items())[:_MAX_MODELS]:
        if not isinstance(model, str) or not isinstance(figures, dict) or len(model) > 128:
            continue
        decode = _speed(figures.get("decode_tps"), 1e6)
        prefill = _speed(figures.get("prefill_tps"), 1e7)
        ttft = _speed(figures.get("ttft_ms"), 1e7)
        if decode is not None and prefill is not None and ttft is not None:
            models[model] = {"decode_tps": decode, "prefill_tps": prefill, "ttft_ms": ttft}
    measured = data.get("measured_at")
    return {"measured_at": measured if isinstance(measured, str) else None, "models": models}
