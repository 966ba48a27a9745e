"""Hostile review of scale-out (issue 10): two coordinators' Links in one process on the machine's
real Redis, with a hostile peer or Redis writer, a hostile provider, and consumers who leave.

Each Link is wired as app.py wires it (Scheduler + Dispatcher + Link on its own Redis client); a
provider of node A is a ProviderConn whose outbox the test reads and whose frames it hands to
``Link.carried`` exactly as api/provider_ws.py does. Findings in files the lead is editing are
pinned as strict xfails with the fix they need."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from darkbloom.coordinator.api.providers import _entry
from darkbloom.coordinator.cluster import Bus, Cluster, Keys, Presence, ProviderRecord, Slots
from darkbloom.coordinator.cluster import link as link_module
from darkbloom.coordinator.cluster import presence as presence_module
from darkbloom.coordinator.cluster.bus import pack_reply
from darkbloom.coordinator.cluster.link import Link, RemoteProvider
from darkbloom.coordinator.dispatch import Attempt, Dispatcher
from darkbloom.coordinator.routing.cost import Demand
from darkbloom.coordinator.routing.registry import ProviderConn
from darkbloom.coordinator.routing.scheduler import Scheduler
from darkbloom.crypto import KeyPair
from darkbloom.crypto.signing import IdentityKey
from darkbloom.errors import NoProviderAvailable
from darkbloom.protocol import decode, encode
from darkbloom.protocol.frames import (
    COORDINATOR_FRAME_TYPES,
    Cancel,
    Hardware,
    InferenceComplete,
    InferenceError,
    InferenceRequest,
    Usage,
    coordinator_frame_adapter,
)
from darkbloom.provider.attestation import build
from tests.ca import CA
from tests.cluster.conftest import REDIS_URL, MakeClient

MODEL = "m"


@dataclass
class Node:
    name: str
    link: Link
    scheduler: Scheduler
    dispatcher: Dispatcher


MakeNode = Callable[..., Awaitable[Node]]


@pytest.fixture
async def nodes(make_client: object, prefix: str) -> AsyncIterator[MakeNode]:
    """Coordinators as app.py makes them (``make_client`` is only there to clean the prefix)."""
    made: list[Node] = []

    async def make(name: str, min_trust: str = "none", queue_timeout_s: float = 2.0) -> Node:
        scheduler = Scheduler(10, queue_timeout_s, min_trust)
        dispatcher = Dispatcher(scheduler)
        link = Link(Cluster.from_url(REDIS_URL, prefix, name), scheduler)
        link.on_frame = dispatcher.handle
        scheduler.link = link
        await link.start()
        node = Node(name, link, scheduler, dispatcher)
        made.append(node)
        return node

    try:
        yield make
    finally:
        for node in made:
            await node.link.close()


def provider_conn(keys: KeyPair, slots: int = 1, **fields: object) -> ProviderConn:
    return ProviderConn(id=str(uuid.uuid4()), account_id=None, models=frozenset({MODEL}),
                        public_key=keys.public, public_key_b64=keys.public_b64,
                        max_concurrency=slots, hardware=Hardware(), backend="llama.cpp",
                        version="1", **fields)  # type: ignore[arg-type]


async def home(node: Node, conn: ProviderConn, *seen_by: Node) -> None:
    """Register ``conn`` at ``node`` (as provider_ws does) and wait until ``seen_by`` mirror it."""
    node.scheduler.add(conn)
    node.link.publish(conn, joined=True)
    await seen(*seen_by, conn=conn)


async def seen(*nodes: Node, conn: ProviderConn) -> None:
    async with asyncio.timeout(10):
        for node in nodes:
            while conn.id not in node.scheduler.providers:
                await node.link.sync()
                await asyncio.sleep(0.02)


async def dispatch(node: Node) -> Attempt:
    """A consumer of ``node``: a slot (leased), then a coordinator-sealed request."""
    demand = Demand(MODEL, max_tokens=16)
    provider = await node.scheduler.acquire(demand)
    return node.dispatcher.send(provider, b'{"messages": []}', demand=demand, model=MODEL,
                                endpoint="/v1/chat/completions", stream=True, max_tokens_cap=16)


async def received(conn: ProviderConn) -> object:
    async with asyncio.timeout(5):
        return decode(await conn.outbox.get(), coordinator_frame_adapter, COORDINATOR_FRAME_TYPES)


async def eventually(check: Callable[[], bool]) -> None:
    for _ in range(250):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("not within 5 s")


async def forge(redis: Redis, prefix: str, record: dict[str, object], member: str | None = None) -> None:
    """Write a presence record as a hostile peer or anyone with the Redis password could: straight
    to the keys, past Presence.publish's checks, with its node looking alive."""
    keys = Keys(prefix)
    member = member or str(record["provider_id"])
    await Presence(redis, prefix, str(record["node_id"])).beat()
    far = int(time.time() * 1000) + 60_000
    await redis.set(keys.provider(member), json.dumps(record), px=60_000)
    await redis.zadd(keys.providers, {member: far})
    await redis.zadd(keys.model(MODEL), {member: far})


# --- a hostile peer coordinator / Redis writer ---------------------------------------------


async def test_a_deeply_nested_notice_does_not_stop_the_notice_loop(
        nodes: MakeNode, redis: Redis, prefix: str) -> None:
    """json.loads raises RecursionError (not ValueError) on 5,000 nested brackets: it escaped
    notices._decode and Notices.listen, and Link._notice_loop ended for good on every node (no
    wake-ups after a slot is freed elsewhere, until restart)."""
    a = await nodes("node-a")
    [notices] = [t for t in a.link._tasks if t.get_name() == "link-notices"]
    channel = Keys(prefix).notices
    for _ in range(250):  # until A's subscription is up
        if await redis.publish(channel, "{}"):
            break
        await asyncio.sleep(0.02)
    await redis.publish(channel, "[" * 5000)
    handled = asyncio.Event()
    drain = a.scheduler.drain

    def spy() -> None:
        if asyncio.current_task() is notices:
            handled.set()
        drain()

    a.scheduler.drain = spy  # type: ignore[method-assign]
    async with asyncio.timeout(5):
        while not handled.is_set():
            assert not notices.done(), "the notice loop died"
            await redis.publish(channel, json.dumps({"k": "slot", "m": [MODEL], "n": "node-x"}))
            await asyncio.sleep(0.05)


async def test_a_record_with_an_unusable_id_is_not_routed_to(
        nodes: MakeNode, redis: Redis, prefix: str) -> None:
    """A record's provider_id was never checked on read: one with a space got mirrored and
    routed, then Slots.acquire raised BadName (a ValueError) out of Scheduler.acquire, i.e. a
    500 for every consumer the cost model sent there."""
    b = await nodes("node-b")
    await forge(redis, prefix, {
        "provider_id": "evil provider", "node_id": "node-x", "models": [MODEL],
        "public_key_b64": KeyPair.generate().public_b64, "max_concurrency": 4, "routable": True},
        member="evil")
    await b.link.sync()
    with pytest.raises(NoProviderAvailable):
        await b.scheduler.acquire(Demand(MODEL), may_queue=False)


async def test_a_record_naming_a_local_provider_does_not_displace_it(
        nodes: MakeNode, redis: Redis, prefix: str) -> None:
    """A record under another node's name with the id of one of this node's own sessions replaced
    that session in the scheduler with a mirror (requests for it went to the forger), and when
    the real record came back the mirror's removal took the local session out of routing."""
    a = await nodes("node-a")
    conn = provider_conn(KeyPair.generate())
    a.scheduler.add(conn)
    await forge(redis, prefix, {
        "provider_id": conn.id, "node_id": "node-x", "models": [MODEL],
        "public_key_b64": KeyPair.generate().public_b64, "max_concurrency": 4, "routable": True})
    await a.link.sync()
    assert a.scheduler.providers.get(conn.id) is conn


async def test_a_record_cannot_claim_a_trust_level_its_attestation_does_not_prove(
        nodes: MakeNode, redis: Redis, prefix: str) -> None:
    """B took trust_level and identity_key from the record on the home's word: anyone able to
    write the prefix listed its own X25519 key at 'hardware' and B sealed consumers' prompts to
    it (routing to an attacker key, plaintext to the attacker)."""
    b = await nodes("node-b", min_trust="self_signed")
    attacker = KeyPair.generate()
    someone = IdentityKey.generate()  # a real blob, but for another key than the one listed
    blob = build(someone, KeyPair.generate().public_b64, Hardware(), "llama.cpp")
    await forge(redis, prefix, {
        "provider_id": "p-evil", "node_id": "node-x", "models": [MODEL],
        "public_key_b64": attacker.public_b64, "max_concurrency": 4, "routable": True,
        "trust_level": "hardware", "identity_key": someone.public_b64,
        "attestation_raw": blob["attestation_raw"], "attestation_signature": blob["signature"]})
    await b.link.sync()
    assert not b.scheduler.serving(MODEL)
    mirrored = b.scheduler.providers.get("p-evil")
    assert mirrored is None or mirrored.trust_level == "none"
    await b.link.sync()  # and it stays mirrored as it is (no drop and re-add at every sync)
    assert b.scheduler.providers.get("p-evil") is mirrored


async def test_a_self_signed_blob_does_not_earn_hardware(
        nodes: MakeNode, redis: Redis, prefix: str) -> None:
    """Anyone can self-sign a blob for their own key; only a chain to this coordinator's roots
    earns 'hardware' (and this one has none configured)."""
    b = await nodes("node-b", min_trust="hardware")
    keys, identity = KeyPair.generate(), IdentityKey.generate()
    blob = build(identity, keys.public_b64, Hardware(), "llama.cpp")
    await forge(redis, prefix, {
        "provider_id": "p-self", "node_id": "node-x", "models": [MODEL],
        "public_key_b64": keys.public_b64, "max_concurrency": 4, "routable": True,
        "trust_level": "hardware", "identity_key": identity.public_b64,
        "attestation_raw": blob["attestation_raw"], "attestation_signature": blob["signature"],
        "certificate_chain": ["AAAA"]})
    await b.link.sync()
    assert not b.scheduler.serving(MODEL)
    assert b.scheduler.providers["p-self"].trust_level == "self_signed"


async def test_a_chain_to_this_coordinators_roots_earns_hardware(
        nodes: MakeNode, redis: Redis, prefix: str) -> None:
    """The other side of the check above: a provider whose chain leads to this coordinator's
    roots is 'hardware' here too, and its chain is listed for consumers to check themselves."""
    b = await nodes("node-b", min_trust="hardware")
    root = CA()
    b.link.root_cas = [root.cert]
    private = ec.generate_private_key(ec.SECP256R1())
    keys, identity = KeyPair.generate(), IdentityKey(private)
    blob = build(identity, keys.public_b64, Hardware(), "llama.cpp")
    inter = root.intermediate()
    chain = [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode()
             for c in (inter.leaf(private.public_key()), inter.cert)]
    await forge(redis, prefix, {
        "provider_id": "p-hw", "node_id": "node-x", "models": [MODEL],
        "public_key_b64": keys.public_b64, "max_concurrency": 4, "routable": True,
        "trust_level": "hardware", "identity_key": identity.public_b64,
        "attestation_raw": blob["attestation_raw"], "attestation_signature": blob["signature"],
        "certificate_chain": chain})
    await b.link.sync()
    remote = b.scheduler.providers["p-hw"]
    assert remote.trust_level == "hardware" and b.scheduler.serving(MODEL) == [remote]
    assert _entry(remote, True, {})["certificate_chain"] == chain


async def test_a_remote_provider_is_listed_with_its_attestation(nodes: MakeNode) -> None:
    """B's /v1/providers/attestation listed A's providers without attestation_raw/signature, so a
    consumer-blind client of B (client.blind.eligible checks each blob itself) could never seal
    to a provider held by another coordinator: blind mode did not scale out."""
    a, b = await nodes("node-a", min_trust="self_signed"), await nodes("node-b", min_trust="self_signed")
    keys, identity = KeyPair.generate(), IdentityKey.generate()
    blob = build(identity, keys.public_b64, Hardware(), "llama.cpp")
    conn = provider_conn(keys, trust_level="self_signed", identity_key=identity.public_b64,
                         attestation_raw=blob["attestation_raw"],
                         attestation_signature=blob["signature"], last_pass=time.monotonic())
    await home(a, conn, b)
    remote = b.scheduler.providers[conn.id]
    assert remote.trust_level == "self_signed" and b.scheduler.serving(MODEL) == [remote]
    entry = _entry(remote, True, {})
    assert entry["attestation_raw"] == blob["attestation_raw"]
    assert entry["attestation_signature"] == blob["signature"]
    assert entry["identity_public_key"] == identity.public_b64


class _Clock:
    """The ``time`` module as a machine whose wall clock is ``by`` seconds off sees it."""

    def __init__(self, by: float) -> None:
        self.by = by

    def time(self) -> float:
        return time.time() + self.by

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


async def test_a_home_whose_clock_is_behind_does_not_close_challenge_windows_early(
        nodes: MakeNode, monkeypatch: pytest.MonkeyPatch) -> None:
    """routable_until was the home's wall clock, read against B's: with A's clock 400 s behind
    B's, a provider that passed its challenge a moment ago was already past its window (360 s)
    on B, and B never routed to it; with A ahead, B routed past the window. Deadlines that cross
    coordinators are now in Redis's time."""
    a, b = await nodes("node-a", min_trust="self_signed"), await nodes("node-b", min_trust="self_signed")
    keys, identity = KeyPair.generate(), IdentityKey.generate()
    blob = build(identity, keys.public_b64, Hardware(), "llama.cpp")
    conn = provider_conn(keys, trust_level="self_signed", identity_key=identity.public_b64,
                         attestation_raw=blob["attestation_raw"],
                         attestation_signature=blob["signature"], last_pass=time.monotonic())
    with monkeypatch.context() as skewed:  # A's process, its clock 400 s behind
        skewed.setattr(link_module, "time", _Clock(-400))
        skewed.setattr(presence_module, "time", _Clock(-400))
        await asyncio.sleep(0.3)  # a refresh begun by the true clock ends first
        await a.link.cluster.presence.beat()
        a.scheduler.add(conn)
        a.link.publish(conn, joined=True)  # the record is made now, by A's clock
    # Both nodes share the patched module here: B measures its own offset again by a true clock
    # (one of its beats may have straddled the patch).
    await asyncio.sleep(0.3)
    await b.link.cluster.presence.beat()
    await seen(b, conn=conn)
    await b.link.sync()
    remote = b.scheduler.providers[conn.id]
    assert b.scheduler.serving(MODEL) == [remote]
    assert remote.routable_until is not None
    assert 300 < remote.routable_until - time.time() <= 361


async def test_a_write_on_its_way_when_a_session_ends_does_not_bring_it_back(
        redis: Redis, prefix: str) -> None:
    """Link.publish spawns a write per heartbeat and Link.left spawns the removal; a write that
    reached Redis after the removal (it waited for a pool connection, or a refresh's pipeline
    was in flight) put the record back: every coordinator routed to a gone session for up to
    15 s (each try a 502 and a failover), and the home never refreshed or removed it again."""
    home_node, reader = Presence(redis, prefix, "node-a"), Presence(redis, prefix, "node-b")
    await home_node.beat()
    record = ProviderRecord(provider_id="p1", node_id="node-a", models=(MODEL,),
                            public_key_b64=KeyPair.generate().public_b64, max_concurrency=1,
                            routable=True)
    await home_node.publish(record)
    late = home_node.publish(record)  # a heartbeat's write, on its way...
    await home_node.remove("p1")
    await late  # ...lands after the session ended
    assert await reader.all() == []
    assert home_node.own == []


# --- the way back breaks: the provider must stop too --------------------------------------


async def test_replies_lost_at_b_cancels_the_request_at_a(
        nodes: MakeNode, redis: Redis, prefix: str) -> None:
    """When B gave up on a remote request (RepliesLost, ClusterUnavailable, a frame that did not
    decode, a request write that timed out after Redis took it), Link._lost failed the attempt and
    B released its lease, but nothing told A: the provider went on generating for nobody, on a
    slot the cluster now counted free (over max_concurrency), until it finished on its own."""
    a, b = await nodes("node-a"), await nodes("node-b")
    conn = provider_conn(KeyPair.generate())
    await home(a, conn, b)
    attempt = await dispatch(b)
    request = await received(conn)
    assert isinstance(request, InferenceRequest)
    # Reply number 5 arrives first: 0-4 were lost (trimmed, or in a Redis restart).
    await redis.xadd(Keys(prefix).replies("node-b"),
                     {"b": pack_reply(request.request_id, 5, False, b"{}")})
    await eventually(lambda: attempt.done)
    cancel = await received(conn)
    assert isinstance(cancel, Cancel) and cancel.request_id == request.request_id
    assert conn.in_flight == 0


async def test_a_reply_for_another_request_is_not_delivered(
        nodes: MakeNode, redis: Redis, prefix: str) -> None:
    """B fed whatever frame arrived in request X's replies to the dispatcher, whatever request id
    it named: a peer could end request Y (same provider) with X's stream, and X's pump stopped."""
    a, b = await nodes("node-a"), await nodes("node-b")
    conn = provider_conn(KeyPair.generate(), slots=2)
    await home(a, conn, b)
    x, y = await dispatch(b), await dispatch(b)
    forged = encode(InferenceComplete(request_id=y.request_id,
                                      usage=Usage(prompt_tokens=1, completion_tokens=1)))
    await redis.xadd(Keys(prefix).replies("node-b"),
                     {"b": pack_reply(x.request_id, 0, True, forged.encode())})
    await eventually(lambda: x.done)  # X's way back is broken: X fails
    assert not y.done


async def test_a_slow_write_holds_up_no_other_request(
        nodes: MakeNode, monkeypatch: pytest.MonkeyPatch) -> None:
    """Link._send_loop awaited each message's write before taking the next: one request to
    Redis at a time, and while a write hung (a partitioned Redis: 5 s per message) every request
    and cancel queued behind it waited, including those to coordinators that were fine."""
    a, b = await nodes("node-a"), await nodes("node-b")
    conn = provider_conn(KeyPair.generate(), slots=2)
    await home(a, conn, b)
    gate = hold_writes(monkeypatch, b.link.cluster.bus.redis)
    b.link.cluster.bus.timeout_s = 30.0  # the hung write does not time out during the test
    await dispatch(b)
    await dispatch(b)
    try:
        await eventually(lambda: b.link._outgoing.empty())  # both are with the bus writer
    finally:
        gate.set()
    assert isinstance(await received(conn), InferenceRequest)
    assert isinstance(await received(conn), InferenceRequest)


async def test_a_carried_request_whose_cancel_was_lost_ends_at_its_deadline(
        nodes: MakeNode) -> None:
    """A cancel from B lost to a Redis outage left the request in A's carried map for the
    session's life: the provider's slot stayed taken at A (and a provider that never answers
    held it forever)."""
    a, b = await nodes("node-a"), await nodes("node-b")
    a.link.carry_deadline_s = 0.5
    conn = provider_conn(KeyPair.generate())
    await home(a, conn, b)
    attempt = await dispatch(b)
    request = await received(conn)
    assert isinstance(request, InferenceRequest)
    cancel = await received(conn)  # no answer, no cancel from B: A gives up at the deadline
    assert isinstance(cancel, Cancel) and cancel.request_id == request.request_id
    assert conn.in_flight == 0
    await eventually(lambda: attempt.done)  # and B hears it failed, if it still waits


def hold_writes(monkeypatch: pytest.MonkeyPatch, redis: Redis) -> asyncio.Event:
    """Every pipeline of ``redis`` (the bus writer's) waits for the returned event: a write that
    hangs, as to a partitioned Redis."""
    gate = asyncio.Event()
    pipeline = redis.pipeline

    def held(*args: object, **kwargs: object) -> object:
        pipe = pipeline(*args, **kwargs)  # type: ignore[arg-type]
        execute = pipe.execute

        async def later(*a: object, **k: object) -> object:
            await gate.wait()
            return await execute(*a, **k)  # type: ignore[arg-type]

        pipe.execute = later  # type: ignore[method-assign]
        return pipe

    monkeypatch.setattr(redis, "pipeline", held)
    return gate


async def test_the_bus_holds_a_bounded_number_of_bytes_for_redis(
        make_client: MakeClient, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer's queue was bounded by count alone (10,000 messages of up to 10 MiB): a
    provider streaming big frames faster than Redis took them, or while a write hung, made its
    home hold up to 100 GB. Past ``outbox_max_bytes`` send_reply now waits (and with it the
    provider's socket)."""
    home_bus = Bus(make_client(), prefix, "node-a", outbox_max_bytes=1024 * 1024,
                   command_timeout_s=30)
    origin = Bus(make_client(), prefix, "node-b")
    await home_bus.start()
    await origin.start()
    try:
        await origin.send_request("node-a", "prov-1", "req-1", "{}")
        async with asyncio.timeout(5):
            assert (await anext(aiter(home_bus.inbox()))).kind == "request"
        gate = hold_writes(monkeypatch, home_bus.redis)
        frame = "x" * (400 * 1024)
        assert await home_bus.send_reply("node-b", "req-1", frame)  # the writer takes it, hangs
        await asyncio.sleep(0.1)
        assert await home_bus.send_reply("node-b", "req-1", frame)  # 800 KiB queued: fits
        third = asyncio.ensure_future(home_bus.send_reply("node-b", "req-1", frame))
        await asyncio.sleep(0.5)
        assert not third.done()  # 1.2 MiB would be over the budget: it waits
        gate.set()
        async with asyncio.timeout(10):
            assert await third
    finally:
        await home_bus.close()
        await origin.close()


# --- a hostile provider at A serving B's consumers --------------------------------------------


async def test_a_refused_coordinator_sealed_request_counts_against_the_provider_at_home(
        nodes: MakeNode) -> None:
    """Dispatcher counts any refusal of a coordinator-sealed request as the provider's failure
    (the coordinator validated it). For a request carried for B, the home counted only a 5xx:
    a provider refusing every cross-coordinator request with a 400 kept a spotless record."""
    a, b = await nodes("node-a"), await nodes("node-b")
    conn = provider_conn(KeyPair.generate())
    await home(a, conn, b)
    attempt = await dispatch(b)
    request = await received(conn)
    assert isinstance(request, InferenceRequest) and request.sealed_by == "coordinator"
    refusal = InferenceError(request_id=request.request_id, error="no", status_code=400)
    assert await a.link.carried(conn, refusal, encode(refusal))
    await eventually(lambda: attempt.done)
    assert a.scheduler.reputations.of(conn).jobs_failed == 1


async def test_a_provider_ignoring_requests_from_b_loses_reputation_at_home(nodes: MakeNode) -> None:
    a, b = await nodes("node-a"), await nodes("node-b")
    conn = provider_conn(KeyPair.generate())
    await home(a, conn, b)
    attempt = await dispatch(b)
    assert isinstance(await received(conn), InferenceRequest)
    b.dispatcher.timed_out(attempt)  # the first-response timer ran out (commit._first_chunk)
    assert isinstance(await received(conn), Cancel)
    record = a.scheduler.reputations.of(conn)
    assert (record.jobs_failed, record.timeouts) == (1, 1)


# --- consumers, queues and slots ------------------------------------------------------------


async def test_a_grant_landing_with_the_queue_timeout_does_not_leak_the_slot() -> None:
    """A grant (drain sets the waiter's future) and the queue timeout in one event-loop turn:
    asyncio.timeout turns the cancel into TimeoutError, and the slot drain took must come back
    (found in this review; fixed in scheduler.py by 5ca82e4)."""
    scheduler = Scheduler(10, 0.2)
    conn = provider_conn(KeyPair.generate())
    scheduler.add(conn)
    demand = Demand(MODEL, max_tokens=16)
    conn.take_slot(MODEL, 16)  # busy
    waiter = asyncio.create_task(scheduler.acquire(demand))
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    # Hold the loop past the timeout, then let the grant and the timeout run in one turn, grant
    # first (timers run in deadline order).
    loop.call_later(0.05, time.sleep, 0.3)
    loop.call_later(0.1, scheduler.release, conn, demand)
    with pytest.raises(NoProviderAvailable):
        await waiter
    assert conn.in_flight == 0


async def test_a_lease_taken_for_a_provider_of_b_is_counted_at_a(
        nodes: MakeNode, redis: Redis, prefix: str) -> None:
    """Sanity: a lease another node holds makes the provider full at its home."""
    a = await nodes("node-a")
    conn = provider_conn(KeyPair.generate())
    a.scheduler.add(conn)
    assert await Slots(redis, prefix, "node-x").acquire(conn.id, 1) is not None
    await a.link.sync()
    assert conn.free_slots == 0
    assert isinstance(a.scheduler.providers[conn.id], ProviderConn)
    assert not isinstance(a.scheduler.providers[conn.id], RemoteProvider)


async def test_a_dispatch_without_a_lease_does_not_give_back_anothers(
        nodes: MakeNode, redis: Redis, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Link.released gave back the provider's last lease whichever dispatch ended. A dispatch
    that took none (made before this node joined the cluster, or while Redis was unreachable)
    ending first gave back a lease another dispatch still used: Redis counted the provider free
    while it was busy, and other coordinators filled it past max_concurrency."""
    a = await nodes("node-a")
    conn = provider_conn(KeyPair.generate(), slots=2)
    a.scheduler.add(conn)
    demand = Demand(MODEL, max_tokens=16)
    acquire = a.link.cluster.slots.acquire

    async def unreachable(*args: object, **kwargs: object) -> object:
        raise RedisConnectionError("Redis went away")

    monkeypatch.setattr(a.link.cluster.slots, "acquire", unreachable)
    early = await a.scheduler.acquire(demand)  # served on the local count, no lease
    monkeypatch.setattr(a.link.cluster.slots, "acquire", acquire)
    late = await a.scheduler.acquire(demand)  # Redis is back: leased
    slots = Slots(redis, prefix, "node-x")
    assert await slots.in_flight(conn.id) == 1
    a.scheduler.release(early, demand)  # the lease-less one ends first
    await asyncio.sleep(0.2)
    assert await slots.in_flight(conn.id) == 1  # the late one still holds its slot
    a.scheduler.release(late, demand)
    await eventually(lambda: not a.link._leases)
    await asyncio.sleep(0.2)
    assert await slots.in_flight(conn.id) == 0


async def test_with_redis_unreachable_a_consumer_is_served_by_a_local_provider(
        nodes: MakeNode, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/scale-out.md: when Redis fails, route locally. But Link.lease only said False for a
    remote provider, which stayed the cost model's favourite: the scheduler chose it 8 times
    running and the consumer got a 503 while this node's own provider sat idle."""
    a, b = await nodes("node-a"), await nodes("node-b")
    fast = provider_conn(KeyPair.generate(), measured_decode_tps=200.0)
    await home(a, fast, b)
    slow = provider_conn(KeyPair.generate(), measured_decode_tps=1.0)
    b.scheduler.add(slow)

    async def unreachable(*args: object, **kwargs: object) -> object:
        raise RedisConnectionError("Redis went away")

    monkeypatch.setattr(b.link.cluster.slots, "acquire", unreachable)
    assert await b.scheduler.acquire(Demand(MODEL, max_tokens=16), may_queue=False) is slow


def test_ci_run_is_valid_bash() -> None:
    """`.ci/run` must start Redis and run `make test` (issue 10). Found in this review: the Redis
    start had landed inside the header comment, a syntax error (fixed by 9101926)."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(["bash", "-n", str(root / ".ci" / "run")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

