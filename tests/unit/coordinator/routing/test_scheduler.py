"""Scheduler: eligibility, slot caps, the per-model FIFO queue and its failure modes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from darkbloom.coordinator.routing.cost import Demand as D
from darkbloom.coordinator.routing.cost import Weights
from darkbloom.coordinator.routing.registry import ProviderConn
from darkbloom.coordinator.routing.scheduler import Scheduler
from darkbloom.errors import InvalidRequest, NoProviderAvailable

pytestmark = pytest.mark.timeout(5)

MakeProvider = Callable[..., ProviderConn]


def scheduler(*providers: ProviderConn, queue_max: int = 8, queue_timeout_s: float = 5.0) -> Scheduler:
    s = Scheduler(queue_max=queue_max, queue_timeout_s=queue_timeout_s)
    for p in providers:
        s.add(p)
    return s


async def settle() -> None:
    """Let every ready task run until it blocks again."""
    for _ in range(5):
        await asyncio.sleep(0)


def loaded(make: MakeProvider, pid: str, max_concurrency: int, in_flight: int) -> ProviderConn:
    p = make(pid, max_concurrency=max_concurrency)
    p.in_flight = in_flight
    return p


# --- try_acquire / membership ------------------------------------------------------------


def test_try_acquire_takes_a_slot_until_full(make_provider: MakeProvider) -> None:
    p = make_provider(max_concurrency=2)
    s = scheduler(p)
    assert s.try_acquire(D("m")) is p
    assert s.try_acquire(D("m")) is p
    assert p.in_flight == 2
    assert s.try_acquire(D("m")) is None
    assert p.in_flight == 2


def test_try_acquire_filters_model_and_exclude(make_provider: MakeProvider) -> None:
    a = make_provider("a", models=("m", "other"))
    b = make_provider("b", models=("m",))
    s = scheduler(a, b)
    assert s.try_acquire(D("nobody-serves-this")) is None
    assert s.try_acquire(D("other"), exclude=frozenset({"a"})) is None
    assert s.try_acquire(D("m"), exclude=frozenset({"a"})) is b
    assert s.try_acquire(D("m"), exclude=frozenset({"a"})) is None
    assert a.in_flight == 0


def test_release_never_goes_negative(make_provider: MakeProvider) -> None:
    p = make_provider()
    s = scheduler(p)
    s.release(p, D("m"))
    assert p.in_flight == 0


def test_membership_and_counts(make_provider: MakeProvider) -> None:
    a = make_provider("a", models=("m", "n"))
    b = make_provider("b", models=("m",))
    s = scheduler(a, b)
    assert {m: v.providers for m, v in s.model_summaries().items()} == {"m": 2, "n": 1}
    assert {p.id for p in s.serving("m")} == {"a", "b"}
    assert [p.id for p in s.serving("m", frozenset({"a"}))] == ["b"]
    s.remove(a)
    assert a.closed is True
    assert {m: v.providers for m, v in s.model_summaries().items()} == {"m": 1}
    assert s.serving("n") == []


# --- acquire -----------------------------------------------------------------------------


async def test_acquire_picks_least_loaded(make_provider: MakeProvider) -> None:
    a = make_provider("a", max_concurrency=2)
    b = make_provider("b", max_concurrency=2)
    s = scheduler(a, b)
    first = await s.acquire(D("m"))
    second = await s.acquire(D("m"))
    assert {first.id, second.id} == {"a", "b"}
    assert (a.in_flight, b.in_flight) == (1, 1)


async def test_acquire_with_nobody_serving_fails_at_once(make_provider: MakeProvider) -> None:
    s = scheduler(make_provider("a", models=("m",)))
    with pytest.raises(NoProviderAvailable) as info:
        await s.acquire(D("unknown-model"))
    assert info.value.status_code == 503
    assert s.queue_depth("unknown-model") == 0


async def test_acquire_exclude_honoured(make_provider: MakeProvider) -> None:
    a = make_provider("a", max_concurrency=4)
    b = make_provider("b", max_concurrency=1)
    s = scheduler(a, b)
    assert await s.acquire(D("m"), exclude=frozenset({"a"})) is b
    with pytest.raises(NoProviderAvailable):
        await s.acquire(D("m"), exclude=frozenset({"a", "b"}))
    with pytest.raises(NoProviderAvailable):
        await s.acquire(D("m"), exclude=frozenset({"a"}), may_queue=False)
    assert (a.in_flight, b.in_flight) == (0, 1)


async def test_acquire_may_queue_false_fails_when_full(make_provider: MakeProvider) -> None:
    p = make_provider()
    s = scheduler(p)
    await s.acquire(D("m"))
    with pytest.raises(NoProviderAvailable):
        await s.acquire(D("m"), may_queue=False)
    assert p.in_flight == 1
    assert s.queue_depth("m") == 0


async def test_slot_cap_never_exceeded_and_fifo_grants(make_provider: MakeProvider) -> None:
    p = make_provider(max_concurrency=2)
    s = scheduler(p, queue_max=10)
    granted: list[int] = []

    async def client(i: int) -> ProviderConn:
        provider = await s.acquire(D("m"))
        granted.append(i)
        assert provider.in_flight <= provider.max_concurrency
        return provider

    tasks = [asyncio.create_task(client(i)) for i in range(6)]
    await settle()
    assert granted == [0, 1]
    assert p.in_flight == 2
    assert s.queue_depth("m") == 4

    for expected in ([0, 1, 2], [0, 1, 2, 3], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5]):
        s.release(p, D("m"))
        assert p.in_flight == 2  # the freed slot went straight to the oldest waiter
        await settle()
        assert granted == expected
    assert s.queue_depth("m") == 0
    await asyncio.gather(*tasks)

    for _ in range(2):
        s.release(p, D("m"))
    assert p.in_flight == 0


async def test_new_arrival_does_not_jump_the_queue(make_provider: MakeProvider) -> None:
    p = make_provider()
    s = scheduler(p)
    await s.acquire(D("m"))
    order: list[str] = []

    async def client(name: str) -> None:
        await s.acquire(D("m"))
        order.append(name)

    first = asyncio.create_task(client("first"))
    await settle()
    s.release(p, D("m"))  # granted to "first" synchronously
    late = asyncio.create_task(client("late"))
    await settle()
    assert order == ["first"]
    assert s.queue_depth("m") == 1
    s.release(p, D("m"))
    await asyncio.gather(first, late)
    assert order == ["first", "late"]


async def test_queue_full_fails_immediately_with_retry_after(make_provider: MakeProvider) -> None:
    p = make_provider()
    s = scheduler(p, queue_max=2)
    await s.acquire(D("m"))
    waiters = [asyncio.create_task(s.acquire(D("m"))) for _ in range(2)]
    await settle()
    assert s.queue_depth("m") == 2
    with pytest.raises(NoProviderAvailable) as info:
        await s.acquire(D("m"))
    assert info.value.status_code == 503
    assert info.value.headers.get("Retry-After") == "1"
    assert "queue is full" in info.value.message
    assert s.queue_depth("m") == 2
    for t in waiters:
        t.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    assert s.queue_depth("m") == 0
    assert p.in_flight == 1


async def test_queue_timeout(make_provider: MakeProvider) -> None:
    p = make_provider()
    s = scheduler(p, queue_timeout_s=0.05)
    await s.acquire(D("m"))
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(NoProviderAvailable) as info:
        await s.acquire(D("m"))
    assert 0.04 <= loop.time() - started < 1.0
    assert "became free" in info.value.message
    assert info.value.headers.get("Retry-After") == "1"
    assert s.queue_depth("m") == 0
    assert p.in_flight == 1
    s.release(p, D("m"))  # a later release finds no stale waiter to hand the slot to
    assert p.in_flight == 0


async def test_removing_last_provider_fails_waiters_promptly(make_provider: MakeProvider) -> None:
    p = make_provider()
    s = scheduler(p, queue_timeout_s=30)
    await s.acquire(D("m"))
    waiters = [asyncio.create_task(s.acquire(D("m"))) for _ in range(3)]
    await settle()
    assert s.queue_depth("m") == 3
    s.remove(p)
    results = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), 0.5)
    assert all(isinstance(r, NoProviderAvailable) for r in results)
    assert s.queue_depth("m") == 0


async def test_removing_one_of_two_providers_keeps_waiters(make_provider: MakeProvider) -> None:
    a, b = make_provider("a"), make_provider("b")
    s = scheduler(a, b, queue_timeout_s=30)
    await s.acquire(D("m"))
    await s.acquire(D("m"))
    waiter = asyncio.create_task(s.acquire(D("m")))
    await settle()
    s.remove(a)
    await settle()
    assert not waiter.done()
    s.release(a, D("m"))  # the removed provider's slot is not handed out
    await settle()
    assert not waiter.done()
    s.release(b, D("m"))
    assert await asyncio.wait_for(waiter, 0.5) is b


async def test_removing_provider_only_fails_waiters_of_unserved_models(make_provider: MakeProvider) -> None:
    a = make_provider("a", models=("m",))
    b = make_provider("b", models=("n",))
    s = scheduler(a, b, queue_timeout_s=30)
    await s.acquire(D("m"))
    await s.acquire(D("n"))
    wait_m = asyncio.create_task(s.acquire(D("m")))
    wait_n = asyncio.create_task(s.acquire(D("n")))
    await settle()
    s.remove(a)
    with pytest.raises(NoProviderAvailable):
        await asyncio.wait_for(wait_m, 0.5)
    assert not wait_n.done()
    s.release(b, D("n"))
    assert await asyncio.wait_for(wait_n, 0.5) is b


async def test_adding_provider_grants_waiters(make_provider: MakeProvider) -> None:
    a = make_provider("a")
    s = scheduler(a)
    await s.acquire(D("m"))
    waiter = asyncio.create_task(s.acquire(D("m")))
    await settle()
    b = make_provider("b")
    s.add(b)
    assert await asyncio.wait_for(waiter, 0.5) is b
    assert b.in_flight == 1


async def test_queued_waiter_exclude_honoured(make_provider: MakeProvider) -> None:
    a, b = make_provider("a"), make_provider("b")
    s = scheduler(a, b)
    await s.acquire(D("m"))
    await s.acquire(D("m"))
    waiter = asyncio.create_task(s.acquire(D("m"), exclude=frozenset({"a"})))
    await settle()
    s.release(a, D("m"))
    await settle()
    assert not waiter.done()
    assert a.in_flight == 0
    s.release(b, D("m"))
    assert await asyncio.wait_for(waiter, 0.5) is b


async def test_cancelled_waiter_leaves_the_queue(make_provider: MakeProvider) -> None:
    p = make_provider()
    s = scheduler(p)
    await s.acquire(D("m"))
    waiter = asyncio.create_task(s.acquire(D("m")))
    await settle()
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert s.queue_depth("m") == 0
    s.release(p, D("m"))
    assert p.in_flight == 0


async def test_slot_granted_then_cancelled_is_never_lost(make_provider: MakeProvider) -> None:
    p = make_provider()
    s = scheduler(p)
    await s.acquire(D("m"))
    waiter = asyncio.create_task(s.acquire(D("m")))
    await settle()
    s.release(p, D("m"))  # grants the slot to the waiter, which has not resumed yet
    assert p.in_flight == 1
    waiter.cancel()
    [result] = await asyncio.gather(waiter, return_exceptions=True)
    # Either the caller got the provider (and owns the slot) or the slot went back.
    assert p.in_flight == (1 if result is p else 0)


async def test_cancel_after_grant_propagates_and_returns_the_slot(make_provider: MakeProvider) -> None:
    p = make_provider()
    s = scheduler(p)
    await s.acquire(D("m"))
    waiter = asyncio.create_task(s.acquire(D("m")))
    await settle()
    s.release(p, D("m"))
    waiter.cancel()
    [result] = await asyncio.gather(waiter, return_exceptions=True)
    assert isinstance(result, asyncio.CancelledError)
    assert p.in_flight == 0


async def test_queues_are_per_model(make_provider: MakeProvider) -> None:
    a = make_provider("a", models=("m",))
    b = make_provider("b", models=("n",))
    s = scheduler(a, b)
    await s.acquire(D("m"))
    waiter = asyncio.create_task(s.acquire(D("m")))
    await settle()
    assert await s.acquire(D("n")) is b  # the queue for m does not hold up n
    assert s.queue_depth("m") == 1
    assert s.queue_depth("n") == 0
    s.release(a, D("m"))
    assert await asyncio.wait_for(waiter, 0.5) is a


# --- routability: the one predicate behind routing, /v1/models and the listing -------------


def attested(make: MakeProvider, pid: str = "p1") -> ProviderConn:
    p = make(pid)
    p.identity_key, p.trust_level = "identity-" + pid, "self_signed"
    return p


def test_attested_provider_is_unroutable_until_it_passes(make_provider: MakeProvider) -> None:
    p = attested(make_provider)
    s = Scheduler(queue_max=8, queue_timeout_s=5, min_trust="self_signed", pass_window_s=60)
    s.add(p)
    assert not s.routable(p) and s.model_summaries() == {} and s.try_acquire(D("m")) is None
    p.last_pass = time.monotonic()
    assert s.routable(p) and s.model_summaries()["m"].providers == 1 and s.try_acquire(D("m")) is p


def test_a_stale_pass_or_a_strike_makes_it_unroutable(make_provider: MakeProvider) -> None:
    p = attested(make_provider)
    s = Scheduler(queue_max=8, queue_timeout_s=5, min_trust="self_signed", pass_window_s=60)
    s.add(p)
    p.last_pass = time.monotonic() - 61
    assert not s.routable(p)
    p.last_pass = time.monotonic()
    p.strikes = 1
    assert not s.routable(p)
    p.strikes, p.untrusted = 0, True
    assert not s.routable(p) and s.model_summaries() == {}


def test_unattested_provider_needs_the_operator_to_lower_the_minimum(make_provider: MakeProvider) -> None:
    p = make_provider()  # trust none, no identity key: nothing to challenge
    assert Scheduler(8, 5, min_trust="none").routable(p)
    assert not Scheduler(8, 5, min_trust="self_signed").routable(p)


def test_sessions_of_an_identity(make_provider: MakeProvider) -> None:
    a, b, c = attested(make_provider, "a"), attested(make_provider, "b"), attested(make_provider, "c")
    b.identity_key = a.identity_key
    s = scheduler(a, b, c)
    assert {p.id for p in s.sessions_of("identity-a")} == {"a", "b"}


# --- several coordinators: a slot must also be leased cluster-wide -----------------------


class _Leases:
    """A cluster whose slots are all held by other coordinators until ``open``: every lease
    fails, and this coordinator's view of the providers stays stale (as between two syncs)."""

    def __init__(self) -> None:
        self.open = False
        self.tries = 0
        self.released_n = 0

    async def lease(self, provider: ProviderConn) -> bool:
        self.tries += 1
        return self.open

    def released(self, provider: ProviderConn) -> None:
        self.released_n += 1


async def test_a_full_cluster_queues_the_request_instead_of_a_503(make_provider: MakeProvider) -> None:
    p = make_provider(max_concurrency=4)
    s = scheduler(p, queue_timeout_s=5)
    leases = _Leases()
    s.link = leases
    task = asyncio.create_task(s.acquire(D("m")))
    for _ in range(50):
        await settle()
    assert not task.done()  # every lease failed, yet it waits rather than failing
    assert s.queue_depth("m") == 1
    assert p.in_flight == 0  # each failed choice gave its local slot back
    leases.open = True  # a slot freed elsewhere: the notice drains the queue
    s.drain()
    assert await asyncio.wait_for(task, 1) is p
    assert p.in_flight == 1


async def test_a_full_cluster_fails_at_once_when_it_may_not_queue(make_provider: MakeProvider) -> None:
    p = make_provider(max_concurrency=4)
    s = scheduler(p)
    leases = _Leases()
    s.link = leases
    with pytest.raises(NoProviderAvailable):
        await asyncio.wait_for(s.acquire(D("m"), may_queue=False), 1)
    assert p.in_flight == 0


async def test_a_full_cluster_times_out_like_the_queue(make_provider: MakeProvider) -> None:
    p = make_provider(max_concurrency=4)
    s = scheduler(p, queue_timeout_s=0.1)
    s.link = _Leases()
    with pytest.raises(NoProviderAvailable) as info:
        await asyncio.wait_for(s.acquire(D("m")), 1)
    assert info.value.headers.get("Retry-After") == "1"
    assert s.queue_depth("m") == 0 and p.in_flight == 0


# --- locality: wait for this coordinator's own provider, or cross to one held elsewhere ----


def _own_and_remote(make: MakeProvider, own_tps: float) -> tuple[ProviderConn, ProviderConn]:
    own, remote = make("own"), make("remote")
    own.measured_decode_tps = own_tps
    remote.home, remote.routable_until = "coordinator-b", time.time() + 60
    return own, remote


async def test_a_request_waits_for_its_own_provider_when_answers_are_quick(
        make_provider: MakeProvider) -> None:
    own, remote = _own_and_remote(make_provider, own_tps=500.0)  # 100 tokens: 0.2 s an answer
    s = scheduler(own, remote)
    assert await s.acquire(D("m", max_tokens=100)) is own
    waiting = asyncio.create_task(s.acquire(D("m", max_tokens=100)))
    await settle()
    assert not waiting.done() and remote.in_flight == 0  # the idle remote one is left alone
    s.release(own, D("m", max_tokens=100))
    assert await asyncio.wait_for(waiting, 1) is own


async def test_a_request_crosses_when_its_own_provider_is_slow(make_provider: MakeProvider) -> None:
    own, remote = _own_and_remote(make_provider, own_tps=10.0)  # 100 tokens: 10 s an answer
    s = scheduler(own, remote)
    assert await s.acquire(D("m", max_tokens=100)) is own
    assert await asyncio.wait_for(s.acquire(D("m", max_tokens=100)), 1) is remote


async def test_a_request_that_may_not_wait_crosses(make_provider: MakeProvider) -> None:
    own, remote = _own_and_remote(make_provider, own_tps=500.0)
    s = scheduler(own, remote)
    assert await s.acquire(D("m", max_tokens=100)) is own
    assert await s.acquire(D("m", max_tokens=100), may_queue=False) is remote


async def test_a_waiter_crosses_once_it_has_waited_what_crossing_costs(
        make_provider: MakeProvider) -> None:
    own, remote = _own_and_remote(make_provider, own_tps=500.0)
    s = scheduler(own, remote)
    assert await s.acquire(D("m", max_tokens=100)) is own
    waiting = asyncio.create_task(s.acquire(D("m", max_tokens=100)))
    await settle()
    assert not waiting.done()
    s._queues["m"][0].since -= s.weights.elsewhere_ms / 1000  # as if it had waited that long
    s.drain()
    assert await asyncio.wait_for(waiting, 1) is remote


async def test_a_waiter_crosses_on_time_even_when_nothing_else_happens(
        make_provider: MakeProvider) -> None:
    own, remote = _own_and_remote(make_provider, own_tps=500.0)
    s = Scheduler(queue_max=8, queue_timeout_s=5.0, weights=Weights(elsewhere_ms=300.0))
    s.add(own)
    s.add(remote)
    assert await s.acquire(D("m", max_tokens=10)) is own  # and it never finishes
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await asyncio.wait_for(s.acquire(D("m", max_tokens=10)), 2) is remote
    assert loop.time() - started >= 0.25


async def test_own_providers_that_may_not_take_the_request_are_not_waited_for(
        make_provider: MakeProvider) -> None:
    own, remote = _own_and_remote(make_provider, own_tps=500.0)
    remote.trust_level = "hardware"  # the request wants hardware; its own provider is not
    s = scheduler(own, remote)
    assert await asyncio.wait_for(s.acquire(D("m", max_tokens=100), min_trust="hardware"), 1) \
        is remote


# --- per-model slots and capabilities (issue 11) ----------------------------------------


def test_each_model_has_its_own_slots_on_a_provider(make_provider: MakeProvider) -> None:
    """Two models with one slot each: a second request for the same model does not take the
    other model's slot (the provider would only queue it), but a request for the other does."""
    p = make_provider(models=("m", "n"), max_concurrency=2)
    p.model_slots = {"m": 1, "n": 1}
    s = scheduler(p)
    assert s.try_acquire(D("m")) is p
    assert s.try_acquire(D("m")) is None
    assert s.try_acquire(D("n")) is p
    assert p.in_flight == 2


async def test_a_request_goes_only_to_providers_whose_engine_can_do_it(make_provider: MakeProvider) -> None:
    plain = make_provider("plain")
    plain.model_capabilities = {"m": frozenset({"stop_sequences"})}
    full = make_provider("full")  # says nothing: every capability, as older providers
    s = scheduler(plain, full)
    assert await s.acquire(D("m", needs=frozenset({"logprobs"}))) is full
    assert s.try_acquire(D("m", needs=frozenset({"logprobs"}))) is None  # full is busy: not plain
    assert s.try_acquire(D("m", needs=frozenset({"stop_sequences"}))) is plain


async def test_when_no_provider_of_the_model_can_do_it_the_request_is_a_400_not_a_wait(
        make_provider: MakeProvider) -> None:
    a, b = make_provider("a"), make_provider("b")
    a.model_capabilities = {"m": frozenset({"stop_sequences"})}
    b.model_capabilities = {"m": frozenset({"tools"})}
    s = scheduler(a, b)
    with pytest.raises(InvalidRequest) as refused:
        await s.acquire(D("m", needs=frozenset({"logprobs", "tools"})))
    assert refused.value.status_code == 400 and refused.value.code == "unsupported_parameter"
    assert refused.value.param == "logprobs" and "tools" not in refused.value.message
    assert a.in_flight == b.in_flight == 0


async def test_a_waiter_whose_only_capable_provider_leaves_is_refused_at_once(
        make_provider: MakeProvider) -> None:
    """The queued request would otherwise wait out the queue for a provider that cannot come:
    it gets what a new request would (the 400), while a plain waiter keeps its place."""
    capable, plain = make_provider("capable", max_concurrency=1), make_provider("plain", max_concurrency=1)
    plain.model_capabilities = {"m": frozenset()}
    s = scheduler(capable, plain, queue_timeout_s=60)
    assert s.try_acquire(D("m", needs=frozenset({"seed"}))) is capable
    assert s.try_acquire(D("m")) is plain
    seeded = asyncio.create_task(s.acquire(D("m", needs=frozenset({"seed"}))))
    simple = asyncio.create_task(s.acquire(D("m")))
    await settle()
    assert s.queue_depth("m") == 2
    s.remove(capable)
    await settle()
    assert seeded.done() and not simple.done() and s.queue_depth("m") == 1
    with pytest.raises(InvalidRequest) as refused:
        seeded.result()
    assert refused.value.code == "unsupported_parameter" and refused.value.param == "seed"
    s.release(plain, D("m"))
    assert await simple is plain
