"""A coordinator's cluster membership as a whole, and the wake-up notices between coordinators."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from darkbloom.coordinator.cluster import (
    Cluster,
    Keys,
    Notice,
    Notices,
    ProviderRecord,
    new_node_id,
    wake_delay,
)
from darkbloom.crypto import KeyPair
from tests.cluster.conftest import REDIS_URL, MakeClient


async def test_a_node_joins_serves_and_leaves_without_leftovers(redis: Redis, prefix: str) -> None:
    a = Cluster.from_url(REDIS_URL, prefix, "node-a")
    b = Cluster.from_url(REDIS_URL, prefix, "node-b")
    await a.start()
    await b.start()
    try:
        await a.presence.publish(ProviderRecord(
            provider_id="p1", node_id="node-a", models=("m1",), public_key_b64=KeyPair.generate().public_b64,
            max_concurrency=2, routable=True))
        assert [r.provider_id for r in await b.presence.for_model("m1")] == ["p1"]
        assert await b.slots.acquire("p1", 2) is not None
        assert await a.slots.in_flight("p1") == 1
        assert set(await a.presence.nodes()) == {"node-a", "node-b"}
    finally:
        await b.close()
        await a.close()
    keys = Keys(prefix)
    assert await redis.exists(keys.node("node-a"), keys.node("node-b"), keys.provider("p1")) == 0
    assert await redis.zcard(keys.slots("p1")) == 0
    assert await redis.zcard(keys.model("m1")) == 0
    assert await redis.zcard(keys.nodes) == 0


async def test_notices_reach_every_node(make_client: MakeClient, prefix: str) -> None:
    sender = Notices(make_client(), prefix, "node-a")
    listener = Notices(make_client(), prefix, "node-b")
    received: asyncio.Queue[Notice] = asyncio.Queue()

    async def listen() -> None:
        async for notice in listener.listen(retry_s=0.1):
            await received.put(notice)

    task = asyncio.create_task(listen())
    try:
        async with asyncio.timeout(10):
            while received.empty():  # the subscription starts asynchronously: say it until heard
                await sender.slot_freed(["m1", "m2"], "p1")
                await asyncio.sleep(0.05)
            notice = await received.get()
    finally:
        task.cancel()
    assert notice == Notice("slot", ("m1", "m2"), "node-a", "p1")


def test_older_waiters_retry_first() -> None:
    assert wake_delay(0, 120) == 0.02
    assert wake_delay(60, 120) == 0.01
    assert wake_delay(500, 120) == 0.0
    assert wake_delay(1, 0) == 0.0


def test_node_ids_are_new_per_run() -> None:
    first, second = new_node_id("coord-1"), new_node_id("coord-1")
    assert first != second and first.startswith("coord-1-")
    assert new_node_id(None).startswith("coordinator-")
    assert new_node_id("has space\n").startswith("hasspace-")
