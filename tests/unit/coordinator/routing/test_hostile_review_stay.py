"""Hostile review of the locality rule (Scheduler._stay): a request declining a provider held by
another coordinator to wait for one of this coordinator's own. The first four
tests each failed before their fix (exclude ignored, the queue timeout ignored, a recheck armed too
late, one shared timer); the rest checks what the review found sound."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from darkbloom.coordinator.routing.cost import Demand as D
from darkbloom.coordinator.routing.cost import Weights
from darkbloom.coordinator.routing.registry import ProviderConn
from darkbloom.coordinator.routing.scheduler import ANY, Scheduler
from darkbloom.errors import NoProviderAvailable

pytestmark = pytest.mark.timeout(10)

MakeProvider = Callable[..., ProviderConn]


def _pair(make: MakeProvider, own_tps: float = 500.0, remote_slots: int = 1
          ) -> tuple[ProviderConn, ProviderConn]:
    own, remote = make("own"), make("remote", max_concurrency=remote_slots)
    own.measured_decode_tps = own_tps
    remote.home, remote.routable_until = "coordinator-b", time.time() + 60
    return own, remote


def _sched(*ps: ProviderConn, queue_timeout_s: float = 5.0, elsewhere_ms: float = 3000.0
           ) -> Scheduler:
    s = Scheduler(queue_max=8, queue_timeout_s=queue_timeout_s,
                  weights=Weights(elsewhere_ms=elsewhere_ms))
    for p in ps:
        s.add(p)
    return s


async def test_retry_excluding_the_own_provider_does_not_wait_for_it(
        make_provider: MakeProvider) -> None:
    own, remote = _pair(make_provider)
    s = _sched(own, remote)
    got = await asyncio.wait_for(s.acquire(D("m", max_tokens=100), exclude=frozenset({"own"})), 1)
    assert got is remote


async def test_a_short_queue_timeout_is_not_spent_waiting_for_own(
        make_provider: MakeProvider) -> None:
    own, remote = _pair(make_provider)
    s = _sched(own, remote, queue_timeout_s=0.3)
    assert await s.acquire(D("m", max_tokens=100)) is own  # and it never finishes
    try:
        got = await asyncio.wait_for(s.acquire(D("m", max_tokens=100)), 2)
    except NoProviderAvailable:
        got = None
    assert got is remote


async def test_the_recheck_fires_when_the_estimate_says_cross(make_provider: MakeProvider) -> None:
    own, remote = _pair(make_provider)  # 250 tokens at 500 tok/s: 500 ms an answer
    s = _sched(own, remote, elsewhere_ms=600.0)  # stay_ms = 600 - 500 = 100 ms
    assert await s.acquire(D("m", max_tokens=250)) is own  # and it never finishes
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await asyncio.wait_for(s.acquire(D("m", max_tokens=250)), 2) is remote
    assert loop.time() - started < 0.4  # crossing was due at ~0.1 s; it comes at ~0.6 s


async def test_each_waiter_crosses_at_its_own_deadline(make_provider: MakeProvider) -> None:
    own = make_provider("own", models=("b",), max_concurrency=1)
    own2 = make_provider("own2", models=("a",), max_concurrency=1)
    own.measured_decode_tps = own2.measured_decode_tps = 500.0
    remote = make_provider("remote", models=("a", "b"), max_concurrency=4)
    remote.home, remote.routable_until = "coordinator-b", time.time() + 60
    s = _sched(own, own2, remote, elsewhere_ms=600.0)
    assert await s.acquire(D("a", max_tokens=1)) is own2  # queue "a" listed first, own2 busy
    assert await s.acquire(D("b", max_tokens=1)) is own  # then queue "b", own busy
    loop = asyncio.get_running_loop()
    z = asyncio.create_task(s.acquire(D("a", max_tokens=1)))  # arms the timer: t=0.6
    await asyncio.sleep(0.1)
    y = asyncio.create_task(s.acquire(D("b", max_tokens=1)))  # due at t=0.7
    y_started = loop.time()
    await asyncio.sleep(0.1)
    x = asyncio.create_task(s.acquire(D("a", max_tokens=1)))  # due at t=0.8
    assert await asyncio.wait_for(z, 2) is remote
    assert await asyncio.wait_for(y, 2) is remote
    y_waited = loop.time() - y_started
    assert await asyncio.wait_for(x, 2) is remote
    assert y_waited < 0.65  # due at 0.6 after it queued


async def test_queue_full_crosses_at_once(make_provider: MakeProvider) -> None:
    own, remote = _pair(make_provider, remote_slots=1)
    s = Scheduler(queue_max=1, queue_timeout_s=5.0)
    s.add(own)
    s.add(remote)
    assert await s.acquire(D("m", max_tokens=100)) is own
    first = asyncio.create_task(s.acquire(D("m", max_tokens=100)))
    await asyncio.sleep(0)
    assert s.queue_depth("m") == 1
    # The queue is full: the next one may not wait, so it takes the idle remote one.
    assert await asyncio.wait_for(s.acquire(D("m", max_tokens=100)), 1) is remote
    first.cancel()


async def test_no_own_slots_and_absurd_speed_do_not_raise(make_provider: MakeProvider) -> None:
    own, remote = _pair(make_provider, own_tps=float("inf"))
    s = _sched(own, remote, elsewhere_ms=200.0)
    assert await s.acquire(D("m", max_tokens=0)) is own
    got = await asyncio.wait_for(s.acquire(D("m", max_tokens=0)), 2)  # bounded by the timer
    assert got is remote
    await asyncio.sleep(0.15)  # past OWN_CAPACITY_S
    s.remove(own)
    assert s._own_capacity("m", frozenset(), "none", ANY) == (0, 0.0)  # no own slots: no division


async def test_removed_own_provider_is_not_waited_for(make_provider: MakeProvider) -> None:
    own, remote = _pair(make_provider)
    s = _sched(own, remote)
    assert await s.acquire(D("m", max_tokens=100)) is own
    s.remove(own)
    await asyncio.sleep(0.15)  # past OWN_CAPACITY_S
    assert await asyncio.wait_for(s.acquire(D("m", max_tokens=100)), 1) is remote
