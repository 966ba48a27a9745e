"""The routing cost model (protocol.md §7): each term, the health gates and near-tie selection."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from darkbloom.coordinator.routing.cost import WEIGHTS, Demand, Quote, choose, quote, unfit
from darkbloom.coordinator.routing.registry import UNMEASURED_MAX_TPS, ProviderConn
from darkbloom.coordinator.routing.scheduler import Scheduler
from darkbloom.protocol.frames import BackendCapacity, Heartbeat, Slot, SystemMetrics

MakeProvider = Callable[..., ProviderConn]
GB = 2**30


def beat(*slots: Slot, total_gb: float = 0.0, active_gb: float = 0.0,
         **metrics: object) -> Heartbeat:
    return Heartbeat(system_metrics=SystemMetrics.model_validate(metrics),
                     backend_capacity=BackendCapacity(slots=list(slots), total_memory_gb=total_gb,
                                                      gpu_memory_active_gb=active_gb))


def idle(p: ProviderConn, decode_tps: float = 100.0) -> ProviderConn:
    p.measured_decode_tps = decode_tps
    p.heartbeat = beat(Slot(model="m"))
    return p


def test_speed_falls_back_from_measured_to_reported_to_bandwidth(make_provider: MakeProvider) -> None:
    p = make_provider()
    assert p.decode_tps == 1.0
    p.hardware = p.hardware.model_copy(update={"memory_bandwidth_gbs": 400.0})
    assert p.decode_tps == 20.0
    p.reported_decode_tps = 50.0
    assert p.decode_tps == 50.0 and p.prefill_tps == 200.0
    p.reported_decode_tps = 500.0  # believed only up to UNMEASURED_MAX_TPS until timed
    assert p.decode_tps == UNMEASURED_MAX_TPS
    p.measured_decode_tps = 80.0
    assert p.decode_tps == 80.0
    p.reported_prefill_tps = 1000.0
    assert p.prefill_tps == 1000.0


def test_idle_warm_provider_costs_only_this_request(make_provider: MakeProvider) -> None:
    p = idle(make_provider(), decode_tps=100.0)
    q = quote(p, Demand("m", prompt_tokens=400, max_tokens=100), reputation=1.0)
    # prefill 400 tokens at 400 tok/s + 100 tokens at 100 tok/s
    assert q.cost_ms == pytest.approx(1000 + 1000)
    assert (q.eff_queue, q.pending_total) == (0, 0)


def test_each_term_adds_what_the_spec_says(make_provider: MakeProvider) -> None:
    demand = Demand("m", prompt_tokens=1, max_tokens=100)
    base = quote(idle(make_provider()), demand, 1.0).cost_ms

    p = idle(make_provider())
    p.heartbeat = beat(Slot(model="m", state="idle_shutdown"))
    assert quote(p, demand, 1.0).cost_ms - base == pytest.approx(WEIGHTS.state_cold_ms)
    p.heartbeat = beat()  # no slot for the model
    assert quote(p, demand, 1.0).cost_ms - base == pytest.approx(WEIGHTS.state_unknown_ms)

    p = idle(make_provider())
    p.heartbeat = beat(Slot(model="m"), memory_pressure=0.5, cpu_usage=1.0, thermal_state="serious")
    assert quote(p, demand, 1.0).cost_ms - base == pytest.approx(2000 + 1500 + 8000)

    p = idle(make_provider())
    assert quote(p, demand, 0.0).cost_ms - base == pytest.approx(WEIGHTS.reputation_ms)
    assert quote(p, demand, 0.5).cost_ms - base == pytest.approx(WEIGHTS.reputation_ms / 2)


def test_load_slows_decode_and_queues(make_provider: MakeProvider) -> None:
    demand = Demand("m", prompt_tokens=1, max_tokens=100)
    p = idle(make_provider(max_concurrency=4))
    p.heartbeat = beat(Slot(model="m", num_running=2, num_waiting=1, max_tokens_potential=200))
    q = quote(p, demand, 1.0)
    eff_tps = 100 / (1 + 0.27 * 2)
    assert q.eff_queue == 3
    expected = (3 * WEIGHTS.queue_ms + (200 + 100) / eff_tps * 1000 + 1 / (4 * 100) * 1000
                + 100 / eff_tps * 1000)
    assert q.cost_ms == pytest.approx(expected)


def test_pending_work_counts_even_before_the_provider_reports_it(make_provider: MakeProvider) -> None:
    demand = Demand("m", prompt_tokens=1, max_tokens=100)
    p = idle(make_provider(max_concurrency=4))
    before = quote(p, demand, 1.0)
    p.take_slot("m", 300)
    after = quote(p, demand, 1.0)
    assert after.pending_total == 1 and after.eff_queue == 1
    assert after.cost_ms - before.cost_ms == pytest.approx(
        WEIGHTS.queue_ms + WEIGHTS.pending_ms + 300 / 100 * 1000)
    p.free_slot("m", 300)
    assert quote(p, demand, 1.0) == Quote(p, before.cost_ms, 0, 0)


def test_health_gates(make_provider: MakeProvider) -> None:
    demand = Demand("m", prompt_tokens=1000, max_tokens=1000, model_bytes=4 * GB)
    p = idle(make_provider())
    assert unfit(p, demand) is None
    p.heartbeat = beat(Slot(model="m"), thermal_state="critical")
    assert unfit(p, demand) == "thermal state critical"
    for state in ("reloading", "crashed"):
        p.heartbeat = beat(Slot(model="m", state=state))
        assert unfit(p, demand) == f"model slot {state}"
    # 2,000 tokens × 400 kB ≈ 0.75 GiB of KV cache; a cold model needs its 4 GiB too.
    p.heartbeat = beat(Slot(model="m", state="idle_shutdown"), total_gb=16, active_gb=12)
    assert unfit(p, demand) == "not enough free memory"
    p.heartbeat = beat(Slot(model="m"), total_gb=16, active_gb=12)  # loaded: the cache fits
    assert unfit(p, demand) is None
    p.heartbeat = beat(Slot(model="m"), total_gb=16, active_gb=15.5)
    assert unfit(p, demand) == "not enough free memory"
    p.heartbeat = beat(Slot(model="m"), total_gb=0, active_gb=15.5)  # unknown: gate skipped
    assert unfit(p, demand) is None


def test_near_ties_prefer_short_queues_then_random(make_provider: MakeProvider) -> None:
    a, b, c, far = (make_provider(n) for n in "abcd")
    rng = random.Random(7)
    quotes = [Quote(a, 1000, 1, 0), Quote(b, 3500, 0, 2), Quote(c, 3900, 0, 2), Quote(far, 5000, 0, 0)]
    assert {choose(quotes, rng=rng).id for _ in range(50)} == {"b", "c"}  # type: ignore[union-attr]
    quotes = [Quote(a, 1000, 0, 1), Quote(b, 2000, 0, 0)]
    assert choose(quotes, rng=rng) is b
    assert choose([], rng=rng) is None


def test_scheduler_routes_to_the_cheapest_and_skips_the_unfit(make_provider: MakeProvider) -> None:
    fast, slow, hot = (idle(make_provider(n, max_concurrency=4)) for n in ("fast", "slow", "hot"))
    slow.measured_decode_tps = 5.0
    hot.heartbeat = beat(Slot(model="m"), thermal_state="critical")
    s = Scheduler(queue_max=4, queue_timeout_s=1)
    for p in (fast, slow, hot):
        s.add(p)
    demand = Demand("m", max_tokens=500)
    assert s.try_acquire(demand) is fast
    assert fast.pending_by_model == {"m": 1} and fast.pending_tokens_by_model == {"m": 500}
    s.release(fast, demand)
    assert fast.in_flight == 0 and fast.pending_tokens_by_model == {"m": 0}


def test_reputation_moves_traffic(make_provider: MakeProvider) -> None:
    good, flaky = (idle(make_provider(n, max_concurrency=4)) for n in ("good", "flaky"))
    s = Scheduler(queue_max=4, queue_timeout_s=1)
    for p in (good, flaky):
        s.add(p)
    for _ in range(20):
        s.reputations.failed(flaky)
        s.reputations.succeeded(good, 200.0)
    good.measured_decode_tps = flaky.measured_decode_tps = 100.0  # the same speed
    demand = Demand("m", max_tokens=10)
    picks = set()
    for _ in range(20):
        p = s.try_acquire(demand)
        assert p is not None
        picks.add(p.id)
        s.release(p, demand)
    # 0.4 of the score apart is 2,000 ms: within a near tie; a worse queue breaks it.
    assert picks <= {"good", "flaky"}
    flaky.heartbeat = beat(Slot(model="m"), cpu_usage=1.0, memory_pressure=0.5)  # +3,500 ms
    for _ in range(10):
        p = s.try_acquire(demand)
        assert p is good
        s.release(p, demand)


def test_a_provider_held_elsewhere_must_be_a_request_less_loaded(make_provider: MakeProvider) -> None:
    """Locality: a provider another coordinator holds costs ``elsewhere_ms`` more, and among
    near ties this coordinator's own win before queue length is looked at."""
    demand = Demand("m", prompt_tokens=1, max_tokens=100)
    local, remote = idle(make_provider("local")), idle(make_provider("remote"))
    remote.home = "coordinator-b"
    assert quote(remote, demand, 1.0).cost_ms - quote(local, demand, 1.0).cost_ms \
        == pytest.approx(WEIGHTS.elsewhere_ms)

    rng = random.Random(3)
    # One request more on the local provider: still a near tie, and local wins it.
    quotes = [Quote(local, 1000 + WEIGHTS.queue_ms, 1, 1), Quote(remote, 1000 + WEIGHTS.elsewhere_ms, 0, 0)]
    assert {choose(quotes, rng=rng).id for _ in range(20)} == {"local"}  # type: ignore[union-attr]
    # Two requests more: the remote one is cheaper by more than a near tie and wins.
    quotes = [Quote(local, 1000 + 2 * WEIGHTS.queue_ms + 1600, 2, 2),
              Quote(remote, 1000 + WEIGHTS.elsewhere_ms, 0, 0)]
    assert choose(quotes, rng=rng) is remote
    # Only providers held elsewhere: the ordinary tie-breaks among them.
    other = idle(make_provider("other"))
    other.home = "coordinator-c"
    quotes = [Quote(remote, 4000, 1, 0), Quote(other, 4100, 0, 0)]
    assert choose(quotes, rng=rng) is other


def test_requests_other_coordinators_have_there_load_it_too(make_provider: MakeProvider) -> None:
    demand = Demand("m", prompt_tokens=1, max_tokens=100)
    free, shared = idle(make_provider("free")), idle(make_provider("shared"))
    shared.cluster_in_flight = 1  # another coordinator's request, before any heartbeat shows it
    q = quote(shared, demand, 1.0)
    assert q.cost_ms - quote(free, demand, 1.0).cost_ms \
        == pytest.approx(WEIGHTS.queue_ms + WEIGHTS.pending_ms)
    assert (q.eff_queue, q.pending_total) == (1, 1)
