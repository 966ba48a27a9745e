"""The bus between two coordinators on one real Redis: requests, ordered replies, cancels, bounds,
and what happens when the other end dies."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis

from darkbloom.coordinator.cluster import (
    BadName,
    Bus,
    ClusterUnavailable,
    InboxMessage,
    Keys,
    MessageTooLarge,
    NodeLost,
    Presence,
    RepliesLost,
)
from darkbloom.coordinator.cluster.bus import pack_reply, unpack_replies
from darkbloom.crypto import KeyPair, SessionChannel, public_key_from_b64
from darkbloom.protocol import encode
from darkbloom.protocol.frames import (
    InferenceComplete,
    InferenceRequest,
    InferenceResponseChunk,
    Sealed,
    Usage,
)
from tests.cluster.conftest import MakeClient


@dataclass
class Node:
    presence: Presence
    bus: Bus


MakeNode = Callable[..., Awaitable[Node]]


@pytest.fixture
async def nodes(make_client: MakeClient, prefix: str) -> AsyncIterator[MakeNode]:
    """Coordinators as the bus sees them: a client of their own, a liveness key, a started bus."""
    made: list[Node] = []

    async def make(node_id: str, node_ttl_s: float = 5.0, **bus_options: object) -> Node:
        client = make_client()
        presence = Presence(client, prefix, node_id, node_ttl_s=node_ttl_s)
        await presence.beat()
        options: dict[str, object] = {"block_ms": 200, "liveness_check_s": 0.1, **bus_options}
        bus = Bus(client, prefix, node_id, liveness=presence, **options)  # type: ignore[arg-type]
        await bus.start()
        node = Node(presence, bus)
        made.append(node)
        return node

    try:
        yield make
    finally:
        for node in made:
            await node.bus.close()


async def next_message(bus: Bus, within_s: float = 5.0) -> InboxMessage:
    async with asyncio.timeout(within_s):
        return await anext(aiter(bus.inbox()))


def request_frame(request_id: str, provider_public_b64: str, body: bytes) -> tuple[str, SessionChannel]:
    """What coordinator B's dispatcher makes today: the body sealed to the provider's key."""
    ephemeral = KeyPair.generate()
    channel = SessionChannel(ephemeral, public_key_from_b64(provider_public_b64), "requester")
    frame = InferenceRequest(
        request_id=request_id, model="m1", endpoint="/v1/chat/completions", stream=True,
        max_tokens_cap=64, encrypted_body=Sealed(ephemeral_public_key=ephemeral.public_b64,
                                                 ciphertext=channel.seal("request", "", 0, body)))
    return encode(frame), channel


async def test_a_sealed_request_and_1000_chunks_cross_in_order(nodes: MakeNode) -> None:
    """B seals to the provider's key, A forwards bytes it cannot open, the provider's sealed chunks
    come back through A unchanged and in order, and only B opens them."""
    a = await nodes("node-a")
    b = await nodes("node-b")
    provider = KeyPair.generate()
    body = json.dumps({"model": "m1", "messages": [{"role": "user", "content": "hi"}]}).encode()
    frame_json, channel = request_frame("req-1", provider.public_b64, body)

    replies = b.bus.replies("req-1", home="node-a")
    await b.bus.send_request("node-a", "prov-1", "req-1", frame_json)
    message = await next_message(a.bus)
    assert (message.kind, message.origin, message.request_id, message.provider_id) == (
        "request", "node-b", "req-1", "prov-1")
    assert message.frame == frame_json  # byte for byte

    # The provider (held by A) opens the request and seals 1,000 chunks back.
    request = InferenceRequest.model_validate_json(message.frame)
    mine = SessionChannel(provider, public_key_from_b64(request.encrypted_body.ephemeral_public_key),
                          "provider")
    assert mine.open("request", "", 0, request.encrypted_body.ciphertext) == body

    async def home_side() -> None:
        for seq in range(1000):
            chunk = InferenceResponseChunk(request_id="req-1", seq=seq, encrypted_data=Sealed(
                ephemeral_public_key=provider.public_b64,
                ciphertext=mine.seal("response", "req-1", seq, f"data: {seq}".encode())))
            assert await a.bus.send_reply(message.origin, "req-1", encode(chunk))
        done = InferenceComplete(request_id="req-1", usage=Usage(prompt_tokens=1,
                                                                 completion_tokens=1000))
        assert await a.bus.send_reply(message.origin, "req-1", encode(done), final=True)

    sender = asyncio.create_task(home_side())
    got: list[str] = []
    async with asyncio.timeout(30):
        async for text in replies:
            got.append(text)
    await sender
    assert len(got) == 1001
    for seq, text in enumerate(got[:-1]):
        chunk = InferenceResponseChunk.model_validate_json(text)
        assert chunk.seq == seq
        assert chunk.encrypted_data is not None
        assert channel.open("response", "req-1", seq, chunk.encrypted_data.ciphertext) == \
            f"data: {seq}".encode()
    assert json.loads(got[-1])["type"] == "inference_complete"
    assert b.bus.waiting == 0 and a.bus.forwarding == 0
    # After the final frame nothing more is forwarded for the request.
    assert not await a.bus.send_reply("node-b", "req-1", "{}")


async def test_many_requests_interleave_without_mixing(nodes: MakeNode) -> None:
    a = await nodes("node-a")
    b = await nodes("node-b")
    ids = [f"req-{i}" for i in range(20)]
    streams = {rid: b.bus.replies(rid, home="node-a") for rid in ids}
    for rid in ids:
        await b.bus.send_request("node-a", "prov-1", rid, "{}")
    for _ in ids:
        await next_message(a.bus)

    async def reply(rid: str) -> None:
        for n in range(50):
            await a.bus.send_reply("node-b", rid, json.dumps({"rid": rid, "n": n}), final=n == 49)

    async def read(rid: str) -> list[int]:
        return [json.loads(text)["n"] async for text in streams[rid]
                if json.loads(text)["rid"] == rid]

    async with asyncio.timeout(30):
        results = await asyncio.gather(*(read(rid) for rid in ids), *(reply(rid) for rid in ids))
    for got in results[:len(ids)]:
        assert got == list(range(50))


async def test_a_cancel_follows_its_request_and_stops_the_replies(nodes: MakeNode) -> None:
    a = await nodes("node-a")
    b = await nodes("node-b")
    replies = b.bus.replies("req-1", home="node-a")
    await b.bus.send_request("node-a", "prov-1", "req-1", "{}")
    await b.bus.cancel("node-a", "req-1", "prov-1")
    first = await next_message(a.bus)
    second = await next_message(a.bus)
    assert (first.kind, second.kind) == ("request", "cancel")
    assert (second.origin, second.request_id, second.provider_id, second.reason) == (
        "node-b", "req-1", "prov-1", "")
    assert replies.closed and b.bus.waiting == 0
    # The home forgot it: a late frame from the provider goes nowhere.
    assert not await a.bus.send_reply("node-b", "req-1", "{}")


async def test_control_messages_reach_the_home(nodes: MakeNode) -> None:
    a = await nodes("node-a")
    b = await nodes("node-b")
    await b.bus.send_control("node-a", "prov-1", '{"kick": 4000}')
    message = await next_message(a.bus)
    assert (message.kind, message.provider_id, message.frame) == ("control", "prov-1", '{"kick": 4000}')


async def test_sizes_and_names_are_bounded(nodes: MakeNode, redis: Redis,
                                           prefix: str) -> None:
    a = await nodes("node-a", max_message_bytes=1024)
    b = await nodes("node-b", max_message_bytes=1024)
    with pytest.raises(MessageTooLarge):
        await b.bus.send_request("node-a", "prov-1", "req-1", "x" * 1025)
    with pytest.raises(BadName):
        await b.bus.send_request("node a", "prov-1", "req-1", "{}")
    with pytest.raises(BadName):
        b.bus.replies("x" * 200, home="node-a")
    await b.bus.send_request("node-a", "prov-1", "req-1", "{}")
    assert (await next_message(a.bus)).request_id == "req-1"
    with pytest.raises(MessageTooLarge):
        await a.bus.send_reply("node-b", "req-1", "x" * 1025)
    # A peer's oversized or malformed entries are dropped; the reader carries on.
    inbox = Keys(prefix).inbox("node-a")
    await redis.xadd(inbox, {"k": "request", "o": "node-b", "r": "big", "p": "p", "f": "x" * 2000})
    await redis.xadd(inbox, {"k": "nonsense"})
    await redis.xadd(inbox, {"k": "request", "o": "node-b", "r": "req-2", "p": "p", "f": "{}"})
    assert (await next_message(a.bus)).request_id == "req-2"
    # Streams are capped and expire: MAXLEN on every write, a TTL refreshed by writes.
    assert 0 < await redis.pttl(Keys(prefix).inbox("node-a")) <= 60_000


async def test_malformed_replies_entries_are_dropped_whole(nodes: MakeNode, redis: Redis,
                                                          prefix: str) -> None:
    b = await nodes("node-b")
    replies = b.bus.replies("req-1", home="node-b")
    stream = Keys(prefix).replies("node-b")
    good = pack_reply("req-1", 0, False, b"zero")
    for bad in (good + b"req-1 1 0 999\nshort", good + b"no newline", b"req-1 x 0 1\na",
                b"req-1 1 2 1\na", pack_reply("req-1", 1, False, b"\xff\xfe")):
        await redis.xadd(stream, {"b": bad})
    await redis.xadd(stream, {"r": "req-1", "f": "old shape"})
    await redis.xadd(stream, {"b": good + pack_reply("req-1", 1, True, b"one")})
    async with asyncio.timeout(5):
        assert [frame async for frame in replies] == ["zero", "one"]
    assert unpack_replies(pack_reply("r", 0, False, b"x" * 10), max_frame_bytes=9) is None


async def test_the_inbox_stream_is_capped(make_client: MakeClient, prefix: str) -> None:
    """Nobody reads node-c's inbox (it died): the stream stays near MAXLEN, and expires."""
    b = Bus(make_client(), prefix, "node-b", inbox_maxlen=100, stream_ttl_s=2)
    await b.start()
    try:
        for i in range(1000):
            await b.send_request("node-c", "prov-1", f"req-{i}", "{}")
        redis = make_client()
        length = await redis.xlen(Keys(prefix).inbox("node-c"))
        assert 100 <= length < 300  # approximate trimming works in whole nodes of entries
        assert 0 < await redis.pttl(Keys(prefix).inbox("node-c")) <= 2000
    finally:
        await b.close()


async def test_a_lost_reply_is_noticed_not_skipped(nodes: MakeNode, redis: Redis,
                                                   prefix: str) -> None:
    b = await nodes("node-b")
    replies = b.bus.replies("req-1", home="node-b")
    stream = Keys(prefix).replies("node-b")
    await redis.xadd(stream, {"b": pack_reply("req-1", 0, False, b"first")})
    await redis.xadd(stream, {"b": pack_reply("req-1", 2, False, b"third")})  # 1 was trimmed
    async with asyncio.timeout(5):
        assert await anext(replies) == "first"
        with pytest.raises(RepliesLost):
            await anext(replies)


async def test_replies_nobody_reads_are_bounded(nodes: MakeNode) -> None:
    a = await nodes("node-a")
    b = await nodes("node-b", max_pending_bytes=10_000)
    replies = b.bus.replies("req-1", home="node-a")
    await b.bus.send_request("node-a", "prov-1", "req-1", "{}")
    await next_message(a.bus)
    for _ in range(20):
        await a.bus.send_reply("node-b", "req-1", "y" * 1000)
    await a.bus.flush()
    async with asyncio.timeout(5):
        while not replies.closed:  # noqa: ASYNC110 (nobody reads: the overflow closes it)
            await asyncio.sleep(0.01)
    got = 0
    with pytest.raises(RepliesLost):
        async with asyncio.timeout(5):
            async for _ in replies:
                got += 1
    assert got == 10  # what fitted is still delivered, then the failure


async def test_the_requester_learns_when_the_home_dies(nodes: MakeNode) -> None:
    a = await nodes("node-a", node_ttl_s=0.3)
    b = await nodes("node-b")
    replies = b.bus.replies("req-1", home="node-a")
    await b.bus.send_request("node-a", "prov-1", "req-1", "{}")
    await next_message(a.bus)
    await a.bus.send_reply("node-b", "req-1", "chunk-0")
    await a.bus.close()  # node-a dies: no more beats, no more frames
    async with asyncio.timeout(5):
        assert await anext(replies) == "chunk-0"
        with pytest.raises(NodeLost):
            await anext(replies)


async def test_the_home_cancels_requests_whose_origin_died(nodes: MakeNode) -> None:
    a = await nodes("node-a")
    b = await nodes("node-b", node_ttl_s=0.3)
    b.bus.replies("req-1", home="node-a")
    await b.bus.send_request("node-a", "prov-1", "req-1", "{}")
    assert (await next_message(a.bus)).kind == "request"
    await b.bus.close()  # node-b dies with the request in flight
    message = await next_message(a.bus)
    assert (message.kind, message.request_id, message.provider_id, message.reason) == (
        "cancel", "req-1", "prov-1", "origin_lost")
    assert a.bus.forwarding == 0
    assert not await a.bus.send_reply("node-b", "req-1", "late")


async def test_an_unreachable_redis_fails_sends_cleanly() -> None:
    client = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    bus = Bus(client, "dbtest-down:", "node-b", block_ms=50, outage_grace_s=0.2)
    await bus.start()
    try:
        replies = bus.replies("req-1", home="node-a")
        with pytest.raises(ClusterUnavailable):
            async with asyncio.timeout(10):
                await bus.send_request("node-a", "prov-1", "req-1", "{}")
        with pytest.raises(ClusterUnavailable):
            async with asyncio.timeout(10):
                await anext(replies)
    finally:
        await bus.close()
        await client.aclose()


async def test_cancelling_ends_an_iteration_in_progress(nodes: MakeNode) -> None:
    """The task pumping a request's replies must not hang when another path cancels it."""
    a = await nodes("node-a")
    b = await nodes("node-b")
    replies = b.bus.replies("req-1", home="node-a")
    await b.bus.send_request("node-a", "prov-1", "req-1", "{}")
    await next_message(a.bus)
    await a.bus.send_reply("node-b", "req-1", "chunk-0")

    async def pump() -> list[str]:
        return [frame async for frame in replies]

    pumping = asyncio.create_task(pump())
    async with asyncio.timeout(5):
        while replies.next_n == 0:  # noqa: ASYNC110 (wait for chunk-0 to arrive)
            await asyncio.sleep(0.01)
    await b.bus.cancel("node-a", "req-1")
    async with asyncio.timeout(5):
        assert await pumping == ["chunk-0"]
