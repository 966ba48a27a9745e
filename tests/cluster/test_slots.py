"""Slot leases shared by two coordinators: never above max_concurrency, back when a holder dies."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from darkbloom.coordinator.cluster import Slots
from tests.cluster.conftest import MakeClient


async def test_200_concurrent_acquirers_on_two_nodes_never_exceed_the_maximum(
        make_client: MakeClient, prefix: str) -> None:
    a = Slots(make_client(), prefix, "node-a")
    b = Slots(make_client(), prefix, "node-b")
    results = await asyncio.gather(*(
        (a if i % 2 else b).acquire("p1", max_concurrency=7) for i in range(200)))
    won = [lease for lease in results if lease is not None]
    assert len(won) == 7
    assert len({lease.member for lease in won}) == 7
    assert await a.in_flight("p1") == 7
    assert await b.in_flight("p1") == 7
    assert len(a.held) + len(b.held) == 7


async def test_churn_across_two_nodes_holds_the_invariant(make_client: MakeClient, prefix: str) -> None:
    """200 workers on two nodes each take a slot, hold it briefly, give it back, twice: the
    number holding at once (counted after Redis granted, before Redis took back) never passes 3,
    and every worker gets its turns."""
    nodes = [Slots(make_client(), prefix, "node-a"), Slots(make_client(), prefix, "node-b")]
    holding = 0
    peak = 0
    turns = 0

    async def worker(i: int) -> None:
        nonlocal holding, peak, turns
        slots = nodes[i % 2]
        for _ in range(2):
            while (lease := await slots.acquire("p1", max_concurrency=3)) is None:  # noqa: ASYNC110
                await asyncio.sleep(0.005)  # polling is the point: racing for freed slots
            holding += 1
            peak = max(peak, holding)
            assert holding <= 3
            await asyncio.sleep(0)
            holding -= 1
            turns += 1
            assert await slots.release(lease)

    await asyncio.gather(*(worker(i) for i in range(200)))
    assert peak <= 3
    assert turns == 400
    assert await nodes[0].in_flight("p1") == 0


async def test_a_dead_holders_leases_lapse_and_the_slots_come_back(make_client: MakeClient,
                                                                   prefix: str) -> None:
    dead = Slots(make_client(), prefix, "node-a", lease_s=0.3)
    other = Slots(make_client(), prefix, "node-b", lease_s=0.3)
    assert all([await dead.acquire("p1", 2), await dead.acquire("p1", 2)])
    assert await other.acquire("p1", 2) is None
    await asyncio.sleep(0.45)  # node-a never renews: it died
    assert await other.in_flight("p1") == 0
    assert await other.acquire("p1", 2) is not None


async def test_renewal_keeps_leases_while_the_holder_lives(make_client: MakeClient, prefix: str) -> None:
    holder = Slots(make_client(), prefix, "node-a", lease_s=0.3)
    other = Slots(make_client(), prefix, "node-b", lease_s=0.3)
    assert await holder.acquire("p1", 1) is not None
    renewing = asyncio.create_task(holder.run(every_s=0.08))
    try:
        await asyncio.sleep(0.8)
        assert await other.acquire("p1", 1) is None
        assert await other.in_flight("p1") == 1
    finally:
        renewing.cancel()
    await asyncio.sleep(0.45)
    assert await other.acquire("p1", 1) is not None


async def test_a_lapsed_lease_is_dropped_from_held_on_renewal(redis: Redis, prefix: str) -> None:
    slots = Slots(redis, prefix, "node-a", lease_s=0.2)
    await slots.acquire("p1", 1)
    await asyncio.sleep(0.3)
    assert await slots.renew() == 0
    assert slots.held == {}


async def test_release_gives_the_slot_back_exactly_once(redis: Redis, prefix: str) -> None:
    slots = Slots(redis, prefix, "node-a")
    lease = await slots.acquire("p1", 1)
    assert lease is not None
    assert await slots.acquire("p1", 1) is None
    assert await slots.release(lease)
    assert not await slots.release(lease)
    assert await slots.in_flight("p1") == 0
    assert await slots.acquire("p1", 1) is not None


async def test_taking_a_held_lease_again_never_counts_twice(redis: Redis, prefix: str) -> None:
    slots = Slots(redis, prefix, "node-a")
    assert await slots.acquire("p1", 2, lease_id="req-1") is not None
    assert await slots.acquire("p1", 2, lease_id="req-1") is not None
    assert await slots.in_flight("p1") == 1


async def test_counts_are_readable_by_everyone(make_client: MakeClient, prefix: str) -> None:
    a = Slots(make_client(), prefix, "node-a")
    b = Slots(make_client(), prefix, "node-b")
    await a.acquire("p1", 4)
    await b.acquire("p1", 4)
    await b.acquire("p2", 4)
    assert await a.in_flight_many(["p1", "p2", "p3"]) == {"p1": 2, "p2": 1, "p3": 0}
    await b.release_all()
    assert await a.in_flight_many(["p1", "p2"]) == {"p1": 1, "p2": 0}
    assert await a.acquire("p1", 0) is None  # a provider with no slots never takes one


async def test_a_cancel_during_a_command_is_never_lost(redis: Redis, prefix: str) -> None:
    """redis-py on Python 3.11 loses a cancel that lands as a command is written whenever the
    client has a socket_timeout (asyncio.wait_for, CPython gh-86296); the cluster's clients have
    none. A consumer hanging up mid-acquire must stop its request, every time."""
    slots = Slots(redis, prefix, "node-a")

    async def busy() -> None:
        while True:
            await slots.in_flight("p1")

    for trial in range(40):
        task = asyncio.create_task(busy())
        await asyncio.sleep(0.0005 * (trial % 20))
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=2)
        assert done and task.cancelled(), f"trial {trial}: the cancel was lost"
