"""protocol.md §8: reported figures are clamped before routing reads them."""

from __future__ import annotations

import math

from darkbloom.coordinator.routing import clamps
from darkbloom.protocol.frames import BackendCapacity, Heartbeat, Slot, Stats, SystemMetrics


def resolve(name: str) -> str | None:
    return {"m": "m", "alias-of-m": "m", "n": "n"}.get(name)


def test_nan_negative_and_huge_numbers_are_clamped() -> None:
    assert clamps.clamp(math.nan, 1.0) == 0.0
    assert clamps.clamp(-3, 1.0) == 0.0
    assert clamps.clamp(7.5, 1.0) == 1.0
    assert clamps.clamp(math.inf, 500.0) == 500.0
    frame = Heartbeat(
        stats=Stats(requests_served=-4, tokens_generated=2**70),
        system_metrics=SystemMetrics(memory_pressure=math.nan, cpu_usage=9.0),
        backend_capacity=BackendCapacity(
            slots=[Slot(model="m", num_running=-1, num_waiting=10**9, max_tokens_potential=-5)],
            gpu_memory_active_gb=math.inf, total_memory_gb=-2))
    out = clamps.heartbeat(frame, frozenset({"m"}), resolve)
    assert (out.stats.requests_served, out.stats.tokens_generated) == (0, clamps.MAX_STAT)
    assert (out.system_metrics.memory_pressure, out.system_metrics.cpu_usage) == (0.0, 1.0)
    assert out.backend_capacity is not None
    [slot] = out.backend_capacity.slots
    assert (slot.num_running, slot.num_waiting, slot.max_tokens_potential) == (0, clamps.MAX_COUNT, 0)
    assert out.backend_capacity.gpu_memory_active_gb == clamps.MAX_MEMORY_GB
    assert out.backend_capacity.total_memory_gb == 0.0


def test_only_served_models_survive_named_by_catalog_id() -> None:
    frame = Heartbeat(active_model="alias-of-m", warm_models=["alias-of-m", "n", "unknown"],
                      backend_capacity=BackendCapacity(slots=[
                          Slot(model="alias-of-m"), Slot(model="n"), Slot(model="unknown")]
                          + [Slot(model="m")] * 500))
    out = clamps.heartbeat(frame, frozenset({"m"}), resolve)
    assert out.active_model == "m" and out.warm_models == ["m"]
    assert out.backend_capacity is not None
    assert {s.model for s in out.backend_capacity.slots} == {"m"}
    assert len(out.backend_capacity.slots) <= clamps.MAX_SLOTS


def test_repeated_models_are_kept_once_in_order_the_first_slot_standing() -> None:
    frame = Heartbeat(warm_models=["n", "alias-of-m", "m", "n"] * 10,
                      backend_capacity=BackendCapacity(slots=[
                          Slot(model="alias-of-m", num_waiting=1), Slot(model="n"),
                          Slot(model="m", num_waiting=9), Slot(model="n", num_waiting=5)]))
    out = clamps.heartbeat(frame, frozenset({"m", "n"}), resolve)
    assert out.warm_models == ["n", "m"]
    assert out.backend_capacity is not None
    assert [(s.model, s.num_waiting) for s in out.backend_capacity.slots] == [("m", 1), ("n", 0)]
