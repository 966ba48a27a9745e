"""protocol.md §8: the numbers a provider reports are clamped before routing reads them, so a
provider cannot buy traffic (or break the cost model) with NaN, negative or absurd figures."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from darkbloom.protocol.frames import BackendCapacity, Heartbeat, Slot, Stats, SystemMetrics

log = logging.getLogger(__name__)

MAX_DECODE_TPS = 500.0
MAX_PREFILL_TPS = 5_000.0
MAX_MEMORY_GB = 1_024.0
MAX_TOKENS_POTENTIAL = 1_000_000
MAX_SLOTS = 64
MAX_COUNT = 1_000_000
MAX_STAT = 2**62


def clamp(value: float, high: float, low: float = 0.0) -> float:
    """NaN and negatives become ``low``; above ``high`` becomes ``high``."""
    if not isinstance(value, (int, float)) or math.isnan(value):
        return low
    return min(high, max(low, float(value)))


def _count(value: int, high: int) -> int:
    return min(high, max(0, value))


def heartbeat(frame: Heartbeat, served: frozenset[str], resolve: Callable[[str], str | None]
              ) -> Heartbeat:
    """The heartbeat as routing may use it: figures clamped, slots and warm models only for models
    this session was accepted for (named by catalog id), each once, at most ``MAX_SLOTS`` of them."""
    metrics = frame.system_metrics
    capacity = frame.backend_capacity
    clamped_capacity = None
    if capacity is not None:
        slots: list[Slot] = []
        for slot in capacity.slots[:MAX_SLOTS]:
            model = resolve(slot.model)
            if model is None or model not in served or any(s.model == model for s in slots):
                continue  # not ours, or said already: a model's first entry stands
            slots.append(slot.model_copy(update={
                "model": model,
                "num_running": _count(slot.num_running, MAX_COUNT),
                "num_waiting": _count(slot.num_waiting, MAX_COUNT),
                "active_tokens": _count(slot.active_tokens, MAX_TOKENS_POTENTIAL),
                "max_tokens_potential": _count(slot.max_tokens_potential, MAX_TOKENS_POTENTIAL)}))
        clamped_capacity = BackendCapacity(
            slots=slots,
            gpu_memory_active_gb=clamp(capacity.gpu_memory_active_gb, MAX_MEMORY_GB),
            gpu_memory_peak_gb=clamp(capacity.gpu_memory_peak_gb, MAX_MEMORY_GB),
            gpu_memory_cache_gb=clamp(capacity.gpu_memory_cache_gb, MAX_MEMORY_GB),
            total_memory_gb=clamp(capacity.total_memory_gb, MAX_MEMORY_GB))
    # In order, each once: a repeat would list the same warm model many times.
    warm = list(dict.fromkeys(m for m in (resolve(w) for w in frame.warm_models[:MAX_SLOTS])
                              if m in served))
    active = resolve(frame.active_model) if frame.active_model else None
    return Heartbeat(
        status=frame.status,
        active_model=active if active in served else None,
        warm_models=[m for m in warm if m is not None],
        stats=Stats(requests_served=_count(frame.stats.requests_served, MAX_STAT),
                    tokens_generated=_count(frame.stats.tokens_generated, MAX_STAT)),
        system_metrics=SystemMetrics(memory_pressure=clamp(metrics.memory_pressure, 1.0),
                                     cpu_usage=clamp(metrics.cpu_usage, 1.0),
                                     thermal_state=metrics.thermal_state),
        backend_capacity=clamped_capacity)
