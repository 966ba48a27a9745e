"""Provider presence across coordinators: published by the home, seen by all, gone by TTL."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import ValidationError
from redis.asyncio import Redis

from darkbloom.coordinator.cluster import BadName, Keys, Presence, ProviderRecord, RecordTooLarge
from darkbloom.crypto import KeyPair
from darkbloom.protocol.frames import Hardware, Heartbeat, SystemMetrics
from tests.cluster.conftest import MakeClient


def record(pid: str, node: str, models: tuple[str, ...] = ("m1",), **fields: object) -> ProviderRecord:
    values: dict[str, object] = {
        "provider_id": pid, "node_id": node, "models": models,
        "public_key_b64": KeyPair.generate().public_b64, "max_concurrency": 4,
        "trust_level": "self_signed", "routable": True, "hardware": Hardware(memory_gb=64),
        **fields}
    return ProviderRecord.model_validate(values)


async def test_a_record_published_on_one_node_is_seen_on_another(make_client: MakeClient,
                                                                  prefix: str) -> None:
    a = Presence(make_client(), prefix, "node-a")
    b = Presence(make_client(), prefix, "node-b")
    await a.beat()
    await b.beat()
    beat = Heartbeat(status="serving", warm_models=["m1"],
                     system_metrics=SystemMetrics(memory_pressure=0.25, thermal_state="fair"))
    mine = record("p1", "node-a", ("m1", "m2"), heartbeat=beat, reported_decode_tps=42.0,
                  reputation=0.7, extra={"pending": 3})
    await a.publish(mine)
    await a.publish(record("p2", "node-a", ("m2",)))

    seen = await b.get("p1")
    assert seen == mine  # every routing input round-trips, nested heartbeat included
    assert {r.provider_id for r in await b.for_model("m1")} == {"p1"}
    assert {r.provider_id for r in await b.for_model("m2")} == {"p1", "p2"}
    assert await b.for_model("unknown") == []
    assert {r.provider_id for r in await b.all()} == {"p1", "p2"}
    assert set(await b.nodes()) == {"node-a", "node-b"}


async def test_a_record_that_is_not_refreshed_expires(redis: Redis, prefix: str) -> None:
    presence = Presence(redis, prefix, "node-a", ttl_s=0.3, node_ttl_s=5)
    await presence.beat()
    await presence.publish(record("p1", "node-a"))
    assert len(await presence.for_model("m1")) == 1
    await asyncio.sleep(0.45)
    assert await presence.for_model("m1") == []
    assert await presence.get("p1") is None
    assert await presence.all() == []


async def test_the_refresh_loop_keeps_records_and_liveness_alive(make_client: MakeClient,
                                                                 prefix: str) -> None:
    home = Presence(make_client(), prefix, "node-a", ttl_s=0.3, node_ttl_s=0.3)
    reader = Presence(make_client(), prefix, "node-b")
    await home.publish(record("p1", "node-a"))
    loop = asyncio.create_task(home.run(every_s=0.1))
    try:
        await asyncio.sleep(0.8)
        assert [r.provider_id for r in await reader.for_model("m1")] == ["p1"]
        assert await reader.alive(["node-a", "node-x"]) == {"node-a"}
    finally:
        loop.cancel()
    await asyncio.sleep(0.45)  # the home "died": nothing refreshes any more
    assert await reader.for_model("m1") == []
    assert await reader.alive(["node-a"]) == set()


async def test_records_of_a_dead_node_are_hidden_before_their_own_ttl(make_client: MakeClient,
                                                                       prefix: str) -> None:
    home = Presence(make_client(), prefix, "node-a", ttl_s=30, node_ttl_s=0.3)
    reader = Presence(make_client(), prefix, "node-b")
    await home.beat()
    await home.publish(record("p1", "node-a"))
    assert await reader.get("p1") is not None
    await asyncio.sleep(0.45)
    assert await reader.get("p1") is None
    assert await reader.for_model("m1") == []
    assert await reader.nodes() == []


async def test_changing_models_moves_the_record_between_indexes(redis: Redis, prefix: str) -> None:
    presence = Presence(redis, prefix, "node-a")
    await presence.beat()
    await presence.publish(record("p1", "node-a", ("m1", "m2")))
    await presence.publish(record("p1", "node-a", ("m2", "m3")))
    assert await presence.for_model("m1") == []
    assert [r.models for r in await presence.for_model("m3")] == [("m2", "m3")]
    assert await redis.zrange(Keys(prefix).model("m1"), 0, -1) == []


async def test_remove_and_leave_take_effect_at_once(make_client: MakeClient, prefix: str) -> None:
    home = Presence(make_client(), prefix, "node-a")
    reader = Presence(make_client(), prefix, "node-b")
    await home.beat()
    await home.publish(record("p1", "node-a"))
    await home.publish(record("p2", "node-a"))
    await home.remove("p1")
    assert [r.provider_id for r in await reader.all()] == ["p2"]
    await home.leave()
    assert await reader.all() == []
    assert await reader.alive(["node-a"]) == set()


async def test_refresh_restores_what_redis_lost(redis: Redis, prefix: str) -> None:
    """A Redis restarted empty gets every record back at the home's next refresh."""
    presence = Presence(redis, prefix, "node-a")
    await presence.publish(record("p1", "node-a"))
    await presence.beat()
    keys = [key async for key in redis.scan_iter(match=f"{prefix}*")]
    await redis.delete(*keys)
    assert await presence.for_model("m1") == []
    await presence.refresh()
    assert [r.provider_id for r in await presence.for_model("m1")] == ["p1"]


async def test_routable_until_ends_routability_without_a_republish() -> None:
    now = time.time()
    assert record("p", "n", routable_until=now + 60).is_routable(now)
    assert not record("p", "n", routable_until=now - 1).is_routable(now)
    assert not record("p", "n", routable=False).is_routable(now)
    assert record("p", "n", routable_until=None).is_routable(now)


async def test_records_are_bounded_both_ways(redis: Redis, prefix: str) -> None:
    presence = Presence(redis, prefix, "node-a", max_record_bytes=4096)
    await presence.beat()
    with pytest.raises(RecordTooLarge):
        await presence.publish(record("p1", "node-a", extra={"x": "y" * 5000}))
    with pytest.raises(BadName):
        await presence.publish(record("p1", "node-a", ("has space",)))
    with pytest.raises(ValueError):
        await presence.publish(record("p1", "node-other"))  # only the home publishes
    # A reader skips what it cannot trust: oversized or malformed values under a listed id.
    keys = Keys(prefix)
    await presence.publish(record("good", "node-a"))
    for pid, value in (("huge", b"{" + b" " * 5000 + b"}"), ("junk", b"not json"),
                       ("wrong", b'{"provider_id": 5}')):
        await redis.set(keys.provider(pid), value, px=10_000)
        await redis.zadd(keys.model("m1"), {pid: time.time() * 1000 + 10_000})
    assert [r.provider_id for r in await presence.for_model("m1")] == ["good"]
    assert await presence.for_model("x" * 300) == []


def test_prefixes_and_ids_are_checked() -> None:
    assert Keys("app").prefix == "app:"
    assert Keys("").prefix == ""
    with pytest.raises(BadName):
        Keys("has space")
    with pytest.raises(BadName):
        Presence(Redis(), "p:", "bad id")


def test_per_model_slots_and_capabilities_travel_bounded() -> None:
    """A provider's per-model slots and capabilities reach the other coordinators; a record with
    a zero slot count, an endless capability name or too many models is refused."""
    r = record("p", "n", ("m1", "m2"), model_slots={"m1": 1, "m2": 2},
               model_capabilities={"m1": ("stop_sequences",), "m2": ("logprobs", "tools")})
    again = ProviderRecord.model_validate_json(r.encode())
    assert again.model_slots == {"m1": 1, "m2": 2}
    assert again.model_capabilities["m2"] == ("logprobs", "tools")
    for bad in ({"model_slots": {"m1": 0}}, {"model_capabilities": {"m1": ("x" * 33,)}},
                {"model_slots": {f"m{i}": 1 for i in range(65)}}):
        with pytest.raises(ValidationError):
            record("p", "n", **bad)
