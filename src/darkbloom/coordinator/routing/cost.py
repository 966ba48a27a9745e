"""The routing cost model (protocol.md §7): which eligible provider should take a request.

Pure functions over what the coordinator knows of each provider (its last heartbeat, its measured
speed, its reputation) and of its own pending work. Lower cost wins; the unit is an estimate of
milliseconds until the answer is done. Every weight lives in ``Weights`` so tuning is one edit and
the unit tests pin each term.

Trust is a gate (``Scheduler.routable``), never a multiplier: a less trusted machine is not a
cheaper one, it is one the request may not go to at all.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from darkbloom.coordinator.routing.registry import ProviderConn
from darkbloom.protocol.frames import Slot


@dataclass(frozen=True, slots=True)
class Weights:
    """protocol.md §7's constants, plus our reputation term (Decision there)."""

    queue_ms: float = 3_000.0  # per request queued or running ahead of this one
    pending_ms: float = 750.0  # per request this coordinator has in flight on the provider
    running_slowdown: float = 0.27  # decode speed shared among running requests
    state_unknown_ms: float = 2_500.0  # no slot report for this model
    state_cold_ms: float = 20_000.0  # model unloaded (idle_shutdown): a cold load first
    memory_pressure_ms: float = 4_000.0
    cpu_usage_ms: float = 1_500.0
    thermal_ms: tuple[tuple[str, float], ...] = (("fair", 2_000.0), ("serious", 8_000.0))
    gpu_memory_ms: float = 5_000.0
    reputation_ms: float = 5_000.0  # at reputation 0; nothing at 1
    # A provider another coordinator holds: each chunk of its answer costs a second coordinator's
    # CPU and a Redis round trip, so it must be about one request less loaded than this
    # coordinator's own to win (docs/routing.md "Locality").
    elsewhere_ms: float = 3_000.0
    near_tie_ms: float = 3_000.0
    # The memory gate: bytes of KV cache per token, and the token count it will consider at most.
    bytes_per_token: int = 400_000
    max_gate_tokens: int = 16 * 2**20
    # A request without max_tokens is assumed to want this many for routing.
    default_max_tokens: int = 256


WEIGHTS = Weights()


@dataclass(frozen=True, slots=True)
class Demand:
    """What a request asks of a provider, for routing: the catalog model, its prompt size
    (exact where the coordinator tokenized it, else bytes ÷ 4) and its output budget."""

    model: str
    prompt_tokens: int = 1
    max_tokens: int = WEIGHTS.default_max_tokens
    model_bytes: int = 0  # the catalog's size of the weights; 0: unknown
    needs: frozenset[str] = frozenset()  # capabilities (inference/capabilities.py)

    @classmethod
    def of(cls, model: str, *, prompt_tokens: int | None, body_bytes: int, max_tokens: int | None,
           model_bytes: int = 0, needs: frozenset[str] = frozenset()) -> Demand:
        estimate = prompt_tokens if prompt_tokens is not None else body_bytes // 4
        return cls(model, max(1, estimate), max_tokens or WEIGHTS.default_max_tokens, model_bytes,
                   needs)


def slot_of(provider: ProviderConn, model: str) -> Slot | None:
    capacity = provider.heartbeat.backend_capacity
    if capacity is None:
        return None
    return next((slot for slot in capacity.slots if slot.model == model), None)


def unfit(provider: ProviderConn, demand: Demand, weights: Weights = WEIGHTS) -> str | None:
    """Why the provider's health says it cannot take this request now (None: it can): the model's
    slot is reloading or crashed, the machine is at critical temperature, or its free memory
    cannot hold the model (unless already loaded) plus this request's KV cache."""
    health = provider.heartbeat.system_metrics
    if health.thermal_state == "critical":
        return "thermal state critical"
    slot = slot_of(provider, demand.model)
    if slot is not None and slot.state in ("reloading", "crashed"):
        return f"model slot {slot.state}"
    capacity = provider.heartbeat.backend_capacity
    if capacity is None or capacity.total_memory_gb <= 0 or demand.model_bytes <= 0:
        return None  # protocol.md §7: the gate is skipped when either size is unknown
    free = (capacity.total_memory_gb - capacity.gpu_memory_active_gb) * 2**30
    tokens = min(demand.prompt_tokens + demand.max_tokens, weights.max_gate_tokens)
    needed = (0 if slot is not None and slot.state == "running" else demand.model_bytes) \
        + tokens * weights.bytes_per_token
    return "not enough free memory" if free < needed else None


@dataclass(frozen=True, slots=True)
class Quote:
    """One provider's cost for one request, with the tie-breakers selection uses."""

    provider: ProviderConn
    cost_ms: float
    eff_queue: int
    pending_total: int


def quote(provider: ProviderConn, demand: Demand, reputation: float,
          weights: Weights = WEIGHTS) -> Quote:
    """protocol.md §7 "Cost", term by term."""
    slot = slot_of(provider, demand.model)
    running = slot.num_running if slot else 0
    waiting = slot.num_waiting if slot else 0
    potential = slot.max_tokens_potential if slot else 0
    # Requests other coordinators have in flight there (scale-out; 0 on one coordinator) load
    # it as this coordinator's own do, and a heartbeat may not show them yet either.
    others = provider.cluster_in_flight
    pending_model = provider.pending_by_model.get(demand.model, 0) + others
    pending_max = provider.pending_tokens_by_model.get(demand.model, 0)
    pending_total = provider.in_flight + others

    eff_tps = max(1.0, provider.decode_tps / (1 + weights.running_slowdown * running))
    eff_queue = max(pending_model, running + waiting)
    waiting_tokens = waiting * demand.max_tokens
    unaccounted = max(0, pending_max - potential - waiting_tokens)
    warm = slot.state == "running" if slot is not None \
        else demand.model in provider.heartbeat.warm_models
    state_ms = (0.0 if warm
                else weights.state_cold_ms if slot is not None and slot.state == "idle_shutdown"
                else weights.state_unknown_ms)
    backlog_ms = (potential + waiting_tokens + unaccounted) / eff_tps * 1000
    this_ms = (demand.prompt_tokens / provider.prefill_tps * 1000
               + demand.max_tokens / eff_tps * 1000)
    health = provider.heartbeat.system_metrics
    capacity = provider.heartbeat.backend_capacity
    gpu_share = 0.0
    if capacity is not None and capacity.total_memory_gb > 0:
        gpu_share = min(1.0, max(0.0, capacity.gpu_memory_active_gb / capacity.total_memory_gb))
    health_ms = (health.memory_pressure * weights.memory_pressure_ms
                 + health.cpu_usage * weights.cpu_usage_ms
                 + dict(weights.thermal_ms).get(health.thermal_state, 0.0)
                 + gpu_share * weights.gpu_memory_ms)
    reputation_ms = (1 - min(1.0, max(0.0, reputation))) * weights.reputation_ms
    elsewhere_ms = weights.elsewhere_ms if provider.home is not None else 0.0
    cost = (state_ms + eff_queue * weights.queue_ms + pending_total * weights.pending_ms
            + backlog_ms + this_ms + health_ms + reputation_ms + elsewhere_ms)
    return Quote(provider, cost, eff_queue, pending_total)


def choose(quotes: Sequence[Quote], weights: Weights = WEIGHTS,
           rng: random.Random | None = None, prefer: str | None = None) -> ProviderConn | None:
    """protocol.md §7 "Selection": the cheapest, where every quote within ``near_tie_ms`` of it
    ties; among ties ``prefer`` (the provider that answered this consumer last: its prefix cache),
    then one this coordinator holds, then the shortest queue, then the fewest pending; then
    uniformly at random."""
    if not quotes:
        return None
    best = min(q.cost_ms for q in quotes)
    near = [q for q in quotes if q.cost_ms - best <= weights.near_tie_ms]
    if prefer is not None:
        for q in near:
            if q.provider.id == prefer:
                return q.provider
    near = [q for q in near if q.provider.home is None] or near
    fewest = min((q.eff_queue, q.pending_total) for q in near)
    tied = [q for q in near if (q.eff_queue, q.pending_total) == fewest]
    return (rng or random).choice(tied).provider
