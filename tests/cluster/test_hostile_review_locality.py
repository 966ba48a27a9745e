"""Hostile review of scale-out locality (lease hand-over, home-first slots, queue instead of 503,
liveness after two misses): two coordinators' Links in one process on the machine's real Redis,
built as in test_hostile_review_link.py. The first tests each failed before its fix (a lease given
back while handed over, a lapsed lease handed on, a slot held through an outage, a stream left
without a TTL); the rest checks what the review found sound."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from darkbloom.coordinator.cluster import Bus, Keys, Slots
from darkbloom.coordinator.cluster.link import Link
from darkbloom.coordinator.routing.cost import Demand
from darkbloom.crypto import KeyPair
from darkbloom.errors import NoProviderAvailable
from darkbloom.protocol import encode
from darkbloom.protocol.frames import InferenceComplete, InferenceRequest, Usage
from tests.cluster import test_hostile_review_link as link_review
from tests.cluster.conftest import MakeClient
from tests.cluster.test_hostile_review_link import (
    MODEL,
    MakeNode,
    dispatch,
    eventually,
    home,
    provider_conn,
    received,
)

DEMAND = Demand(MODEL, max_tokens=16)
nodes = link_review.nodes  # the same coordinators-in-one-process fixture


def unreachable_for(monkeypatch: pytest.MonkeyPatch, link: Link) -> None:
    """Redis unreachable from ``link``'s node alone (the others still reach it)."""

    async def down(*args: object, **kwargs: object) -> object:
        raise RedisConnectionError("Redis went away")

    cluster = link.cluster
    for target, name in ((cluster.slots, "acquire"), (cluster.slots, "in_flight_many"),
                         (cluster.slots, "release"), (cluster.bus, "send_reply"),
                         (cluster.notices, "publish"), (cluster.presence, "all")):
        monkeypatch.setattr(target, name, down)


# --- findings --------------------------------------------------------------------------------


async def test_a_lapsed_lease_is_not_handed_over(nodes: MakeNode, redis: Redis, prefix: str) -> None:
    a = await nodes("node-a")
    conn = provider_conn(KeyPair.generate(), slots=1)
    a.scheduler.add(conn)
    first = await a.scheduler.acquire(DEMAND)
    other = Slots(redis, prefix, "node-x")
    assert await other.in_flight(conn.id) == 1
    waiter = asyncio.create_task(a.scheduler.acquire(DEMAND))  # queued behind the first
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await redis.delete(Keys(prefix).slots(conn.id))  # the lease lapses (or Redis lost it)
    await a.link.cluster.slots.renew()  # and this node knows: dropped from Slots.held
    assert not a.link.cluster.slots.held
    a.scheduler.release(first, DEMAND)
    async with asyncio.timeout(2):
        assert await waiter is conn  # the waiter dispatches on the provider...
    assert conn.in_flight == 1
    # ...so its one slot must be counted in Redis: another coordinator finds it full.
    assert await other.acquire(conn.id, 1) is None


async def test_a_carried_request_ending_during_an_outage_frees_the_slot_at_home(
        nodes: MakeNode, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = await nodes("node-a"), await nodes("node-b")
    conn = provider_conn(KeyPair.generate(), slots=1)
    await home(a, conn, b)
    await dispatch(b)
    request = await received(conn)
    assert isinstance(request, InferenceRequest)
    unreachable_for(monkeypatch, a.link)  # Redis goes away (for A) mid-request
    done = InferenceComplete(request_id=request.request_id,
                             usage=Usage(prompt_tokens=1, completion_tokens=1))
    assert await a.link.carried(conn, done, encode(done))
    assert conn.in_flight == 0  # the provider is idle
    with pytest.raises(RedisConnectionError):
        await a.link.sync()  # the sync loop cannot correct it either
    provider = await a.scheduler.acquire(DEMAND, may_queue=False)  # A's own consumer
    assert provider is conn


async def test_a_stream_recreated_within_a_quarter_ttl_still_expires(
        make_client: MakeClient, prefix: str) -> None:
    redis = make_client()
    bus = Bus(make_client(), prefix, "node-b")
    await bus.start()
    try:
        await bus.send_request("node-a", "prov-1", "req-1", "{}")
        key = Keys(prefix).inbox("node-a")
        assert await redis.pttl(key) > 0
        await redis.delete(key)  # Redis restarted / evicted the stream
        await bus.send_request("node-a", "prov-1", "req-2", "{}")
        assert await redis.exists(key)
        assert await redis.pttl(key) > 0  # -1: this stream lives forever if nobody writes again
    finally:
        await bus.close()


# --- checked and sound --------------------------------------------------------------------


async def test_two_dispatches_ending_together_keep_the_waiters_lease_in_redis(
        nodes: MakeNode, redis: Redis, prefix: str) -> None:
    a = await nodes("node-a")
    conn = provider_conn(KeyPair.generate(), slots=2)
    a.scheduler.add(conn)
    one, two = await a.scheduler.acquire(DEMAND), await a.scheduler.acquire(DEMAND)
    waiter = asyncio.create_task(a.scheduler.acquire(DEMAND))
    await asyncio.sleep(0.05)
    a.scheduler.release(one, DEMAND)  # both end in one loop turn
    a.scheduler.release(two, DEMAND)
    async with asyncio.timeout(2):
        await waiter
    await eventually(lambda: not a.link._spare)
    await asyncio.sleep(0.1)
    assert conn.in_flight == 1
    assert await Slots(redis, prefix, "node-x").in_flight(conn.id) == 1  # 0: given back in use


async def test_an_acquire_right_after_a_release_keeps_its_lease(
        nodes: MakeNode, redis: Redis, prefix: str) -> None:
    a = await nodes("node-a")
    conn = provider_conn(KeyPair.generate(), slots=1)
    a.scheduler.add(conn)
    first = await a.scheduler.acquire(DEMAND)
    a.scheduler.release(first, DEMAND)
    assert await a.scheduler.acquire(DEMAND) is conn
    await asyncio.sleep(0.1)
    assert await Slots(redis, prefix, "node-x").acquire(conn.id, 1) is None


async def test_one_dispatch_ending_hands_its_lease_to_the_waiter_once(
        nodes: MakeNode, redis: Redis, prefix: str) -> None:
    """Sound: one release with one waiter: the waiter keeps the lease, Redis counts it, and it
    goes back once when that dispatch ends."""
    a = await nodes("node-a")
    conn = provider_conn(KeyPair.generate(), slots=1)
    a.scheduler.add(conn)
    first = await a.scheduler.acquire(DEMAND)
    waiter = asyncio.create_task(a.scheduler.acquire(DEMAND))
    await asyncio.sleep(0.05)
    a.scheduler.release(first, DEMAND)
    async with asyncio.timeout(2):
        await waiter
    await asyncio.sleep(0.1)
    counter = Slots(redis, prefix, "node-x")
    assert await counter.in_flight(conn.id) == 1
    a.scheduler.release(conn, DEMAND)
    await eventually(lambda: not a.link._leases and not a.link._spare)
    await asyncio.sleep(0.1)
    assert await counter.in_flight(conn.id) == 0


async def test_a_full_cluster_times_out_instead_of_waiting_forever(
        nodes: MakeNode, redis: Redis, prefix: str) -> None:
    """Every slot is leased by another coordinator that never gives it back: after LEASE_TRIES
    the request queues, and still ends with a 503 at queue_timeout_s (no stall, no 5xx)."""
    a = await nodes("node-a", queue_timeout_s=0.5)
    conn = provider_conn(KeyPair.generate(), slots=1)
    a.scheduler.add(conn)
    assert await Slots(redis, prefix, "node-x").acquire(conn.id, 1) is not None
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(NoProviderAvailable):
        async with asyncio.timeout(5):
            await a.scheduler.acquire(DEMAND)
    assert loop.time() - start < 2.5
    assert conn.in_flight == 0


async def test_notices_between_home_and_origin_do_not_loop(
        nodes: MakeNode, monkeypatch: pytest.MonkeyPatch) -> None:
    """B's give-back notice makes the home re-announce once; nobody re-announces the home's."""
    a, b = await nodes("node-a"), await nodes("node-b")
    conn = provider_conn(KeyPair.generate(), slots=1)
    await home(a, conn, b)
    sent: list[str] = []
    for node in (a, b):
        publish = node.link.cluster.notices.publish

        async def counted(kind: str, models: object, provider_id: str = "",
                          _publish: object = publish, _name: str = node.name) -> None:
            if kind == "slot":
                sent.append(_name)
            await _publish(kind, models, provider_id)  # type: ignore[operator]

        monkeypatch.setattr(node.link.cluster.notices, "publish", counted)
    attempt = await dispatch(b)
    request = await received(conn)
    done = InferenceComplete(request_id=request.request_id,  # type: ignore[attr-defined]
                             usage=Usage(prompt_tokens=1, completion_tokens=1))
    assert await a.link.carried(conn, done, encode(done))
    await eventually(lambda: attempt.done)
    await eventually(lambda: len(sent) >= 2)
    await asyncio.sleep(0.3)
    assert sorted(sent) == ["node-a", "node-b"]
    await eventually(lambda: conn.free_slots == 1)
