"""How one coordinator takes part in a cluster (docs/scale-out.md): it publishes the providers it
holds, mirrors the providers others hold into its own scheduler, leases a slot in Redis for every
dispatch (so no provider is over-filled by several coordinators), and carries requests both ways.

    B (consumer's coordinator)                       A (provider's home)
    scheduler picks a RemoteProvider, leases a slot
    dispatcher seals to the provider's key
    RemoteProvider.send(request) ── bus ──▶ inbox → the provider's own socket, unchanged
    dispatcher.handle(remote, frame) ◀── bus ── provider frames for that request, unchanged
    RemoteProvider.send(cancel)   ── bus ──▶ inbox → cancel on the provider's socket

A never holds a key for the request: it forwards ciphertext both ways. B checks every frame as if
the provider were on its own socket (sequence, sender key, receipt). Money stays in PostgreSQL.

Nothing read from Redis is taken on a peer's word where it matters to consumers: B derives a
mirrored provider's trust level and identity key from the attestation in its record (the blob
must bind the X25519 key B seals to; ``hardware`` needs a chain to B's own roots), so whoever can
write to Redis cannot have B seal prompts to a key of their choosing at a trust level it never
proved. Malformed records, notices and frames are skipped, and no loop ends on one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from nacl.public import PublicKey
from redis.exceptions import RedisError

from darkbloom.coordinator.cluster.bus import BusError, NodeLost, Replies
from darkbloom.coordinator.cluster.node import Cluster
from darkbloom.coordinator.cluster.presence import ProviderRecord, RecordTooLarge
from darkbloom.coordinator.cluster.slots import Lease
from darkbloom.coordinator.routing.cost import Demand
from darkbloom.coordinator.routing.registry import ProviderConn
from darkbloom.coordinator.routing.scheduler import Scheduler
from darkbloom.crypto import SealingError, public_key_from_b64
from darkbloom.crypto.certificates import check_chain
from darkbloom.inference.capabilities import CAPABILITIES
from darkbloom.protocol import MalformedFrame, decode, encode
from darkbloom.protocol.frames import (
    CLOSE_EVICTED,
    CLOSE_REPLACED,
    COORDINATOR_FRAME_TYPES,
    PROVIDER_FRAME_TYPES,
    Cancel,
    InferenceAccepted,
    InferenceComplete,
    InferenceError,
    InferenceRequest,
    InferenceResponseChunk,
    coordinator_frame_adapter,
    provider_frame_adapter,
)
from darkbloom.protocol.trust import InvalidAttestation, at_least, open_attestation

log = logging.getLogger(__name__)
ProviderFrame = InferenceAccepted | InferenceResponseChunk | InferenceComplete | InferenceError

# How long the lease of a dispatch that ended waits for the next dispatch on this node before it
# goes back to the cluster: the scheduler hands the slot on within the same loop iteration.
HAND_OVER_S = 0.01
SYNC_S = 1.0  # how often the mirror of other coordinators' providers is refreshed
JOIN_RETRY_S = 2.0  # how often a coordinator that could not reach Redis at start tries again
CLUSTER_ERRORS = (RedisError, BusError, OSError, TimeoutError)
DISCONNECTED = "provider disconnected"
# How long this node carries a request for another before it gives up on it (the requester's
# response deadline, dispatch.RESPONSE_DEADLINE_S, plus a margin): if that coordinator's
# cancel was lost (a Redis outage as it was written), the provider's slot still comes back.
CARRY_DEADLINE_S = 30 * 60.0 + 60.0
VERIFY_BATCH = 32  # new mirrors whose attestation is checked before sync yields to the loop
MAX_VERDICT_CHARS = 256


@dataclass(slots=True)
class _Carried:
    """A request another coordinator sent one of this node's providers."""

    conn: ProviderConn
    demand: Demand
    sealed_by: str = "coordinator"
    started: float = field(default_factory=time.monotonic)
    first_chunk_ms: float | None = None


class RemoteProvider(ProviderConn):
    """A provider held by another coordinator (``home``), as this one routes to it. Frames sent to
    it go through the cluster bus; its frames come back through ``Link``."""

    link: Link
    # The trust level this coordinator verified from the record's attestation: the most the
    # home's published level is believed (it may go lower, never higher).
    proven: str = "none"
    attested: str | None = None  # the record's attestation_raw it was verified from

    def send(self, frame: object) -> bool:
        if self.closed:
            return False
        self.link.send_remote(self, frame)
        return True

    def failed(self, request_id: str, timeout: bool = False) -> None:
        """This coordinator saw the provider fail a request (a timer of protocol.md §9, or a
        protocol violation): its home keeps its record, so the verdict goes there with the
        cancel that follows."""
        self.link.failed(request_id, timeout)


def _record_of(conn: ProviderConn, scheduler: Scheduler, node_id: str,
               clock_offset_s: float = 0.0) -> ProviderRecord:
    """``clock_offset_s``: Redis's clock minus ours; ``routable_until`` is in Redis's time, so a
    reader whose clock disagrees with ours still ends the window when we would."""
    routable = scheduler.routable(conn)
    until = None
    if routable and conn.identity_key is not None and conn.last_pass is not None:
        until = (time.time() + clock_offset_s + scheduler.pass_window_s
                 - (time.monotonic() - conn.last_pass))
    return ProviderRecord(
        provider_id=conn.id, node_id=node_id, account_id=conn.account_id, models=tuple(sorted(conn.models)),
        public_key_b64=conn.public_key_b64, max_concurrency=conn.max_concurrency,
        trust_level=conn.trust_level,
        routable=routable, routable_until=until, identity_key=conn.identity_key, serial=conn.serial,
        backend=conn.backend, version=conn.version, hardware=conn.hardware, heartbeat=conn.heartbeat,
        reported_decode_tps=conn.reported_decode_tps, reported_prefill_tps=conn.reported_prefill_tps,
        measured_decode_tps=min(conn.measured_decode_tps, 100_000.0),
        reputation=scheduler.reputations.score(conn), served=conn.served,
        attestation_raw=conn.attestation_raw, attestation_signature=conn.attestation_signature,
        certificate_chain=tuple(conn.certificate_chain) if conn.certificate_chain else None,
        model_slots=conn.model_slots,
        model_capabilities={m: tuple(sorted(c)) for m, c in conn.model_capabilities.items()})


def _printable(text: str) -> str:
    return "".join(c for c in text if " " <= c <= "~")[:128]


def _lower(a: str, b: str) -> str:
    return a if at_least(b, a) else b


class Link:
    """This coordinator's side of the cluster: see the module docstring."""

    def __init__(self, cluster: Cluster, scheduler: Scheduler,
                 root_cas: list[x509.Certificate] | None = None,
                 carry_deadline_s: float = CARRY_DEADLINE_S,
                 accounts: Callable[[str], Awaitable[str | None]] | None = None) -> None:
        self.cluster = cluster
        # The account an identity key earns for, from PostgreSQL (None: trust the record; tests).
        self.accounts = accounts
        self.scheduler = scheduler
        self.node_id = cluster.node_id
        # This coordinator's trust roots (settings.trust_root_ca_files): a provider held elsewhere
        # is 'hardware' here only if its chain leads to one of them.
        self.root_cas: list[x509.Certificate] = list(root_cas or [])
        self.carry_deadline_s = carry_deadline_s
        self._verdicts: dict[str, bool] = {}  # B: request id -> timeout?, for the coming cancel
        # Dispatcher.handle, set by the app: frames of a remote provider's requests go there.
        self.on_frame: Callable[[ProviderConn, ProviderFrame], None] | None = None
        self._remote: dict[str, RemoteProvider] = {}
        self._replies: dict[str, tuple[RemoteProvider, Replies]] = {}  # B: requests we sent away
        self._forwarded: dict[str, _Carried] = {}  # A: requests we carry for others
        self._leases: dict[str, list[Lease]] = {}  # provider id -> leases this node holds
        self._spare: dict[str, list[Lease]] = {}  # ...and those of dispatches just ended
        self._synced_free: dict[str, int] = {}  # provider held elsewhere -> others' leases at the last sync
        # Provider id -> dispatches on it that hold no lease (taken while Redis was unreachable,
        # or before this node joined): their releases give back nothing. Leases are alike, so
        # whichever dispatch ends first, the count in Redis stays what is really in flight.
        self._unleased: dict[str, int] = {}
        self._outgoing: asyncio.Queue[tuple[str, RemoteProvider, str, str]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[object]] = set()
        self._sync_now = asyncio.Event()
        # Requests sent to providers other coordinators hold, and carried here for other
        # coordinators: how much crosses the bus (darkbloom_cluster_requests_total).
        self.requests_sent = 0
        self.requests_carried = 0

    async def start(self) -> None:
        """Join the cluster now, or keep trying in the background: until it has joined, this
        coordinator routes its own providers on its own counts, as if it stood alone."""
        try:
            await self.cluster.start()
        except CLUSTER_ERRORS as exc:
            log.error("could not join the cluster (%s); serving this coordinator's own providers "
                      "until Redis answers", type(exc).__name__)
            self._tasks = [asyncio.create_task(self._join_later(), name="link-join")]
            return
        self._joined()

    async def _join_later(self) -> None:
        while True:
            await asyncio.sleep(JOIN_RETRY_S)
            try:
                await self.cluster.start()
            except CLUSTER_ERRORS:
                continue
            log.warning("joined the cluster as node %s", self.node_id)
            self._joined()
            return

    def _joined(self) -> None:
        for conn in self.scheduler.providers.values():
            if conn.in_flight and not isinstance(conn, RemoteProvider):
                self._unleased[conn.id] = conn.in_flight  # dispatched before we joined
        self.scheduler.link = self
        for conn in list(self.scheduler.providers.values()):
            self.publish(conn, joined=True)
        self._tasks += [asyncio.create_task(self._send_loop(), name="link-send"),
                       asyncio.create_task(self._inbox_loop(), name="link-inbox"),
                       asyncio.create_task(self._notice_loop(), name="link-notices"),
                       asyncio.create_task(self._sync_loop(), name="link-sync")]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for background in list(self._background):
            background.cancel()
        with contextlib.suppress(*CLUSTER_ERRORS):
            async with asyncio.timeout(5):
                await self.cluster.close()

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        task: asyncio.Task[object] = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[object]) -> None:
        self._background.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("cluster call failed (%s)", type(exc).__name__)

    # --- slots: one count per provider across the cluster ------------------------------

    async def lease(self, provider: ProviderConn) -> bool:
        """Take one of the provider's slots in Redis. False: another coordinator holds them all.
        Redis unreachable: this coordinator's own providers are still served on its own count;
        another's are not (nobody could carry the request to them)."""
        if self._hand_over(provider):
            return True
        try:
            lease = await self.cluster.slots.acquire(provider.id, provider.max_concurrency)
        except CLUSTER_ERRORS as exc:
            log.warning("could not lease a slot (%s)", type(exc).__name__)
            if isinstance(provider, RemoteProvider):
                # Nobody could carry the request there: full until a sync reaches Redis again,
                # so the scheduler's next choice is one of this node's own.
                provider.cluster_in_flight = provider.max_concurrency
                return False
            self._unleased[provider.id] = self._unleased.get(provider.id, 0) + 1
            return True
        if lease is None:
            provider.cluster_in_flight = provider.max_concurrency  # full until the next sync
            return False
        self._leases.setdefault(provider.id, []).append(lease)
        return True

    def _hand_over(self, provider: ProviderConn) -> bool:
        """Take a lease a dispatch on the provider has just ended with, before it goes back:
        the waiter the freed slot was handed to keeps it, instead of racing its own give-back
        (and other coordinators woken by it) for the slot it was just given."""
        spare = self._spare.get(provider.id)
        while spare:
            lease = spare.pop()
            if not spare:
                del self._spare[provider.id]
            if lease.member in self.cluster.slots.held:  # not lapsed (a renewal drops those)
                self._leases.setdefault(provider.id, []).append(lease)
                return True
        return False

    def released(self, provider: ProviderConn) -> None:
        """A dispatch on the provider ended: give its lease back and tell the others."""
        if unleased := self._unleased.get(provider.id):
            if unleased > 1:
                self._unleased[provider.id] = unleased - 1
            else:
                del self._unleased[provider.id]
            return
        held = self._leases.get(provider.id)
        if held:
            lease = held.pop()
            if not held:
                del self._leases[provider.id]
            if provider.home is None:
                # One of this node's own: kept for HAND_OVER_S first, since the scheduler hands
                # the freed slot to this node's oldest waiter right after this call, and that
                # waiter's lease() takes it over.
                self._spare.setdefault(provider.id, []).append(lease)
                self._spawn(self._give_back(lease, tuple(provider.models), spare=True))
                return
            # Held elsewhere: the lease goes back at once and the slot stays taken here until
            # the home, whose waiters may take it first, says it is free (_notice).
            provider.cluster_in_flight += 1
            self._spawn(self._give_back(lease, tuple(provider.models)))

    async def _give_back(self, lease: Lease, models: tuple[str, ...], spare: bool = False) -> None:
        if spare:
            await asyncio.sleep(HAND_OVER_S)
            kept = self._spare.get(lease.provider_id)
            if kept is None or lease not in kept:
                return  # handed over to the next dispatch on this node
            kept.remove(lease)
            if not kept:
                del self._spare[lease.provider_id]
        await self.cluster.slots.release(lease)
        await self.cluster.notices.slot_freed(models, lease.provider_id)

    # --- this node's providers: presence, and requests other coordinators send them -----

    def publish(self, conn: ProviderConn, joined: bool = False) -> None:
        """(Re)publish a provider this node holds: at registration, on each heartbeat and
        whenever its routability changes."""
        if isinstance(conn, RemoteProvider) or conn.closed:
            return
        record = _record_of(conn, self.scheduler, self.node_id,
                            self.cluster.presence.clock_offset_s)
        self._spawn(self._publish(record, joined))

    async def _publish(self, record: ProviderRecord, joined: bool) -> None:
        try:
            await self.cluster.presence.publish(record)
        except RecordTooLarge:
            # Published without its proof, it is 'none' elsewhere, but still seen and counted.
            log.warning("provider %s's attestation does not fit a presence record; other "
                        "coordinators will list it untrusted", record.provider_id)
            await self.cluster.presence.publish(record.model_copy(update={
                "attestation_raw": None, "attestation_signature": None, "certificate_chain": None}))
        if joined:
            await self.cluster.notices.presence_changed(record.models, record.provider_id)

    def left(self, conn: ProviderConn) -> None:
        """A provider this node held is gone: withdraw it, and fail what others sent it."""
        if isinstance(conn, RemoteProvider):
            return
        self._spawn(self._leave(conn))
        for request_id, carried in list(self._forwarded.items()):
            if carried.conn is conn:
                del self._forwarded[request_id]
                conn.free_slot(carried.demand.model, carried.demand.max_tokens)
                self.scheduler.reputations.failed(conn)
                self._spawn(self._reply_error(request_id, 502, DISCONNECTED))

    async def _leave(self, conn: ProviderConn) -> None:
        await self.cluster.presence.remove(conn.id)
        await self.cluster.notices.presence_changed(tuple(conn.models), conn.id)

    async def _reply_error(self, request_id: str, status: int, message: str) -> None:
        origin = self.cluster.bus.origin_of(request_id)
        if origin is None:
            return
        frame = InferenceError(request_id=request_id, error=message, status_code=status)
        await self.cluster.bus.send_reply(origin, request_id, encode(frame), final=True)

    async def carried(self, conn: ProviderConn, frame: object, text: str) -> bool:
        """A frame from one of this node's providers: if it answers a request another coordinator
        sent, pass it back unchanged (True); else it is this node's own (False). The provider's
        record is kept here, its home: success, time to first chunk, failure."""
        request_id = getattr(frame, "request_id", "")
        held = self._forwarded.get(request_id)
        if held is None or held.conn is not conn:
            return False
        origin = self.cluster.bus.origin_of(request_id)
        final = isinstance(frame, (InferenceComplete, InferenceError))
        if isinstance(frame, InferenceResponseChunk) and held.first_chunk_ms is None:
            held.first_chunk_ms = (time.monotonic() - held.started) * 1000
        if final:
            del self._forwarded[request_id]
            conn.free_slot(held.demand.model, held.demand.max_tokens)
            # The origin holds the slot's lease until its give-back, whose notice frees the slot
            # here: this node's own waiters, the home's, then take it first (_notice).
            conn.cluster_in_flight += 1
            if isinstance(frame, InferenceComplete):
                self.scheduler.reputations.succeeded(conn, held.first_chunk_ms)
            elif isinstance(frame, InferenceError) and (
                    held.sealed_by == "coordinator" or not 400 <= frame.status_code < 500):
                # As Dispatcher counts it: a refusal of a request a coordinator validated is the
                # provider's failure; a consumer-sealed request's 4xx may be the consumer's.
                self.scheduler.reputations.failed(conn)
            self.scheduler.drain()
        if origin is not None:
            try:
                await self.cluster.bus.send_reply(origin, request_id, text, final=final)
            except CLUSTER_ERRORS as exc:
                log.warning("could not pass a frame back (%s)", type(exc).__name__)
        return True

    async def _inbox_loop(self) -> None:
        async for message in self.cluster.bus.inbox():
            try:
                await self._take(message.kind, message.request_id, message.provider_id,
                                 message.frame)
            except Exception as exc:
                log.warning("dropped a cluster message (%s)", type(exc).__name__)

    async def _take(self, kind: str, request_id: str, provider_id: str, frame_text: str) -> None:
        if kind == "cancel":
            self._cancelled(request_id, frame_text)
            return
        conn = self.scheduler.providers.get(provider_id)
        if conn is None or isinstance(conn, RemoteProvider) or conn.closed:
            if kind == "request":
                await self._reply_error(request_id, 502, DISCONNECTED)
            return
        if kind == "request":
            try:
                frame = decode(frame_text, coordinator_frame_adapter, COORDINATOR_FRAME_TYPES)
            except MalformedFrame:
                frame = None
            if not isinstance(frame, InferenceRequest) or frame.request_id != request_id:
                await self._reply_error(request_id, 502, "invalid forwarded request")
                return
            model = frame.model if frame.model in conn.models else next(iter(conn.models), "")
            demand = Demand(model, max_tokens=frame.max_tokens_cap)
            if (held := self._forwarded.pop(request_id, None)) is not None:  # a replayed id
                held.conn.free_slot(held.demand.model, held.demand.max_tokens)
            conn.take_slot(demand.model, demand.max_tokens)
            self.requests_carried += 1
            self._forwarded[request_id] = _Carried(conn, demand, frame.sealed_by)
            conn.outbox.put_nowait(frame_text)  # as the requesting coordinator sealed it
        elif kind == "control":
            try:
                payload = json.loads(frame_text) if len(frame_text) < 1024 else {}
            except ValueError:
                payload = {}
            code, reason = payload.get("close"), payload.get("reason")
            if code in (CLOSE_REPLACED, CLOSE_EVICTED) and isinstance(reason, str) \
                    and conn.kick is not None:
                conn.kick(code, reason[:120])

    def _cancelled(self, request_id: str, note: str) -> None:
        """The origin cancelled a request it sent here (or stopped beating). ``note``: the
        origin's verdict on the provider, if it saw it fail (``{"failed": true, "timeout": ..}``)."""
        held = self._forwarded.pop(request_id, None)
        self.cluster.bus.forget(request_id)
        if held is None:
            return
        held.conn.free_slot(held.demand.model, held.demand.max_tokens)
        held.conn.send(Cancel(request_id=request_id))
        verdict: object = None
        if note and len(note) <= MAX_VERDICT_CHARS:
            with contextlib.suppress(ValueError, RecursionError):
                verdict = json.loads(note)
        if isinstance(verdict, dict) and verdict.get("failed") is True:
            self.scheduler.reputations.failed(held.conn, timeout=verdict.get("timeout") is True)
        self.scheduler.drain()

    def _expire_carried(self) -> None:
        """Requests carried past ``carry_deadline_s``: the requester has given up on them by
        now, so the provider is told to stop and its slot comes back."""
        now = time.monotonic()
        for request_id, held in list(self._forwarded.items()):
            if now - held.started > self.carry_deadline_s:
                log.warning("request %s carried past %g s; cancelling it at provider %s",
                            request_id, self.carry_deadline_s, held.conn.id)
                del self._forwarded[request_id]
                held.conn.free_slot(held.demand.model, held.demand.max_tokens)
                held.conn.send(Cancel(request_id=request_id))
                self._spawn(self._reply_error(request_id, 504, "provider did not finish in time"))
                self.scheduler.drain()

    def resync(self) -> None:
        self._sync_now.set()

    def close_elsewhere(self, remote: ProviderConn, code: int, reason: str) -> None:
        """Have a provider's home close its session (a newer session of the same identity key
        proved itself here, or the key was quarantined here)."""
        if remote.home is not None:
            payload = json.dumps({"close": code, "reason": reason[:120]})
            self._spawn(self.cluster.bus.send_control(remote.home, remote.id, payload))

    # --- other coordinators' providers ---------------------------------------------------

    def send_remote(self, provider: RemoteProvider, frame: object) -> None:
        """RemoteProvider.send: a request opens its replies first, then goes in order with any
        cancel after it (one sender task)."""
        if isinstance(frame, InferenceRequest):
            try:
                replies = self.cluster.bus.replies(frame.request_id, provider.home or "")
            except ValueError:
                return
            self._replies[frame.request_id] = (provider, replies)
            self.requests_sent += 1
            self._spawn(self._pump(provider, frame.request_id, replies))
            self._outgoing.put_nowait(("request", provider, frame.request_id, encode(frame)))
        elif isinstance(frame, Cancel):
            sent = self._replies.pop(frame.request_id, None)
            if sent is not None:
                sent[1].close()
            self._cancel_at_home(provider, frame.request_id)

    def failed(self, request_id: str, timeout: bool = False) -> None:
        """RemoteProvider.failed: remember the verdict until the request's cancel goes out."""
        if request_id in self._replies:
            self._verdicts[request_id] = timeout

    def _cancel_at_home(self, provider: RemoteProvider, request_id: str) -> None:
        timeout = self._verdicts.pop(request_id, None)
        note = "" if timeout is None else json.dumps({"failed": True, "timeout": timeout})
        self._outgoing.put_nowait(("cancel", provider, request_id, note))

    async def _send_loop(self) -> None:
        """Hand requests and cancels to the bus in order, without waiting for each to be written:
        a write that is slow (or failing, for a dead Redis's 5 s) holds up nothing queued after
        it, and the bus writes what piles up in one batch."""
        bus = self.cluster.bus
        while True:
            kind, provider, request_id, text = await self._outgoing.get()
            try:
                written = await bus.post(provider.home or "", "request" if kind == "request"
                                         else "cancel", request_id, provider.id, text)
            except (*CLUSTER_ERRORS, ValueError) as exc:
                self._unsent(provider, request_id, exc)
            except Exception as exc:  # a bug: this request fails, the sender goes on
                log.exception("could not send request %s", request_id)
                self._unsent(provider, request_id, exc)
            else:
                written.add_done_callback(functools.partial(self._written, provider, request_id))

    def _written(self, provider: RemoteProvider, request_id: str, done: asyncio.Future[None]) -> None:
        if not done.cancelled() and (exc := done.exception()) is not None:
            self._unsent(provider, request_id, exc)

    def _unsent(self, provider: RemoteProvider, request_id: str, exc: BaseException) -> None:
        log.warning("could not send a message to coordinator %s (%s)", provider.home,
                    type(exc).__name__)
        self._lost(request_id)

    async def _pump(self, provider: RemoteProvider, request_id: str, replies: Replies) -> None:
        """Frames coming back for one request, handed to the dispatcher as if from a socket."""
        try:
            async for text in replies:
                try:
                    frame = decode(text, provider_frame_adapter, PROVIDER_FRAME_TYPES)
                except MalformedFrame:
                    self._lost(request_id)
                    return
                if getattr(frame, "request_id", None) != request_id:
                    log.warning("request %s: coordinator %s returned a frame of another request",
                                request_id, provider.home)
                    self._lost(request_id)
                    return
                if self.on_frame is not None and isinstance(frame, ProviderFrame):
                    self.on_frame(provider, frame)
                if isinstance(frame, (InferenceComplete, InferenceError)):
                    break
        except BusError as exc:
            log.warning("request %s to coordinator %s: %s", request_id, provider.home,
                        type(exc).__name__)
            self._lost(request_id, tell_home=not isinstance(exc, NodeLost))
        finally:
            self._replies.pop(request_id, None)
            self._verdicts.pop(request_id, None)

    def _lost(self, request_id: str, tell_home: bool = True) -> None:
        """The way to a remote provider broke for one request: it failed as a disconnect. The
        attempt's lease is given back, so the provider must stop too: its home gets a cancel
        (unless it is gone), else it would go on generating for nobody on a slot counted free."""
        sent = self._replies.pop(request_id, None)
        if sent is not None:
            sent[1].close()
            if tell_home:
                self._cancel_at_home(sent[0], request_id)
            if self.on_frame is not None:
                self.on_frame(sent[0], InferenceError(request_id=request_id, error=DISCONNECTED,
                                                      status_code=502))

    async def _notice_loop(self) -> None:
        while True:  # listen() ends only on a bug: hear again rather than never
            try:
                async for notice in self.cluster.notices.listen():
                    try:
                        self._notice(notice.node_id, notice.kind, notice.provider_id)
                    except Exception:
                        log.exception("could not act on a cluster notice")
            except Exception:
                log.exception("cluster notices stopped; listening again")
            await asyncio.sleep(SYNC_S)

    def _notice(self, node_id: str, kind: str, provider_id: str) -> None:
        if node_id == self.node_id:
            return
        if kind == "presence":
            self._sync_now.set()
        elif (provider := self.scheduler.providers.get(provider_id)) is not None:
            # A freed slot is its home's to hand out first: the home takes a slot another
            # coordinator gave back for its own waiters, and only what none of them wants is
            # announced again, by the home, for the others (who heed only the home's notices).
            if provider.home is None:
                self._slot_freed(provider)
                if provider.free_slots > 0:
                    self._spawn(self.cluster.notices.slot_freed(tuple(provider.models), provider.id))
            elif node_id == provider.home:
                self._slot_freed(provider)
            return
        self.scheduler.drain()

    def _slot_freed(self, provider: ProviderConn) -> None:
        provider.cluster_in_flight = max(0, provider.cluster_in_flight - 1)
        self.scheduler.drain()

    async def _sync_loop(self) -> None:
        while True:
            try:
                self._expire_carried()
            except Exception:
                log.exception("could not expire carried requests")
            try:
                await self.sync()
            except CLUSTER_ERRORS as exc:
                log.warning("could not read the cluster's providers (%s)", type(exc).__name__)
            except Exception:  # a bug or a record nobody foresaw: never stop mirroring
                log.exception("could not mirror the cluster's providers")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SYNC_S):
                    await self._sync_now.wait()
            self._sync_now.clear()

    async def sync(self) -> None:
        """Mirror the providers other coordinators hold, and every provider's leased slots."""
        try:
            await self._sync()
        except CLUSTER_ERRORS:
            # Redis unreachable: this node's own providers are served on its own count
            # (lease()), so slots it counted as held elsewhere are not kept from them.
            for provider in self.scheduler.providers.values():
                if provider.home is None:
                    provider.cluster_in_flight = 0
            self.scheduler.drain()
            raise

    async def _sync(self) -> None:
        # One live session per identity key (protocol.md §9): a session of it that proved itself
        # here supersedes another's copy (its home may be dead and not yet expired).
        proven_here = {p.identity_key for p in self.scheduler.providers.values()
                       if p.home is None and p.identity_key and self.scheduler.routable(p)}
        records = {r.provider_id: r for r in await self.cluster.presence.all()
                   if r.node_id != self.node_id and r.identity_key not in proven_here}
        for provider_id in [p for p in self._remote if p not in records]:
            self._drop(self._remote.pop(provider_id))
        verified = 0
        for record in records.values():
            remote = self._remote.get(record.provider_id)
            if remote is None and record.provider_id in self.scheduler.providers:
                continue  # one of this node's own sessions: a record naming it is not its own
            if remote is None or remote.home != record.node_id \
                    or remote.public_key_b64 != record.public_key_b64 \
                    or remote.attested != record.attestation_raw:
                if remote is not None:
                    self._remote.pop(record.provider_id)
                    self._drop(remote)
                made = self._mirror(record)
                if made is None:
                    continue
                made.account_id = await self._account_of(made, record)
                self._remote[record.provider_id] = made
                self.scheduler.add(made)
                verified += 1
                if verified % VERIFY_BATCH == 0:
                    await asyncio.sleep(0)  # signatures and chains: let the loop breathe
            else:
                self._update(remote, record)
                if remote.account_id is None and remote.identity_key and self.accounts is not None:
                    if (account := await self._account_of(remote, record)) is not None:
                        self.scheduler.set_account(remote, account)
        ids = list(self.scheduler.providers)
        counts = await self.cluster.slots.in_flight_many(ids)
        carried: dict[str, int] = {}
        for held in self._forwarded.values():
            carried[held.conn.id] = carried.get(held.conn.id, 0) + 1
        for provider_id, count in counts.items():
            provider = self.scheduler.providers.get(provider_id)
            if provider is not None:
                # Other coordinators' leases: ours are in_flight already, and so are the requests
                # this node carries for others (their leases are among the count).
                mine = len(self._leases.get(provider_id, ())) \
                    + len(self._spare.get(provider_id, ())) + carried.get(provider_id, 0)
                others = max(0, count - mine)
                if provider.home is not None:
                    # A slot free there at this instant is its home's to hand out first (it says
                    # so when none of its waiters wants it); one still free at the next sync
                    # (its notice was lost) is taken as free.
                    seen, self._synced_free[provider_id] = self._synced_free.get(provider_id), others
                    if others < provider.cluster_in_flight and seen is not None:
                        others = max(others, min(seen, provider.cluster_in_flight))
                provider.cluster_in_flight = others
        for gone in [p for p in self._synced_free if p not in counts]:
            del self._synced_free[gone]
        self.scheduler.drain()

    async def _account_of(self, remote: RemoteProvider, record: ProviderRecord) -> str | None:
        """Whom a provider held elsewhere earns for. From PostgreSQL, not from the record: the
        account its home wrote for its identity key once the key proved itself (a Redis writer
        cannot redirect earnings). Not there yet (the home writes it within seconds): None, so
        it takes only free work until it is."""
        if self.accounts is None:
            return record.account_id
        if remote.identity_key is None:
            return None
        try:
            return await self.accounts(remote.identity_key)
        except Exception as exc:
            log.warning("could not look up a provider's account (%s)", type(exc).__name__)
            return None

    def _mirror(self, record: ProviderRecord) -> RemoteProvider | None:
        try:
            key: PublicKey = public_key_from_b64(record.public_key_b64)
        except SealingError:
            return None
        level, identity_key, serial = self._proof(record)
        remote = RemoteProvider(
            id=record.provider_id, account_id=record.account_id,
            models=frozenset(record.models), public_key=key, public_key_b64=record.public_key_b64,
            max_concurrency=record.max_concurrency, hardware=record.hardware,
            backend=record.backend, version=record.version, trust_level=level,
            identity_key=identity_key, serial=serial, home=record.node_id,
            attestation_raw=record.attestation_raw if identity_key else None,
            attestation_signature=record.attestation_signature if identity_key else None,
            # Listed for consumers who check chains against roots they pin (client.blind), even
            # where this coordinator has no roots to check it against itself.
            certificate_chain=list(record.certificate_chain)
            if identity_key and record.certificate_chain else None)
        remote.model_slots = {m: min(n, record.max_concurrency)
                              for m, n in record.model_slots.items() if m in remote.models}
        remote.model_capabilities = {m: CAPABILITIES.intersection(c[:64])
                                     for m, c in record.model_capabilities.items() if m in remote.models}
        remote.link = self
        remote.proven, remote.attested = level, record.attestation_raw
        self._update(remote, record)
        return remote

    def _proof(self, record: ProviderRecord) -> tuple[str, str | None, str | None]:
        """The trust level, identity key and serial the record's attestation proves here (as
        provider_ws derives them at registration, less the blob's age: the home checked that
        when the session registered): a blob signed by its own key that binds the key B seals
        to, and for 'hardware' a chain to this coordinator's roots."""
        if record.trust_level == "none" or record.attestation_raw is None:
            return "none", None, None
        try:
            blob = open_attestation(record.attestation_raw, record.attestation_signature)
        except InvalidAttestation as exc:
            log.warning("provider %s of coordinator %s: attestation not accepted (%s)",
                        record.provider_id, record.node_id, exc)
            return "none", None, None
        if blob.encryptionPublicKey != record.public_key_b64:
            log.warning("provider %s of coordinator %s: attestation does not bind its key",
                        record.provider_id, record.node_id)
            return "none", None, None
        serial = _printable(blob.serialNumber or "") or None
        if record.trust_level == "hardware" and record.certificate_chain:
            refused = check_chain(list(record.certificate_chain), blob.publicKey, blob.serialNumber,
                                  self.root_cas)
            if refused is None:
                return "hardware", blob.publicKey, serial
            log.warning("provider %s of coordinator %s: certificate chain not accepted here (%s)",
                        record.provider_id, record.node_id, refused)
        return "self_signed", blob.publicKey, serial

    def _update(self, remote: RemoteProvider, record: ProviderRecord) -> None:
        remote.heartbeat = record.heartbeat
        remote.trust_level = _lower(record.trust_level, remote.proven)
        # The home wrote the window's end in Redis's time; ours differs by our offset.
        remote.routable_until = (None if not record.routable
                                 else record.routable_until - self.cluster.presence.clock_offset_s
                                 if record.routable_until is not None else float("inf"))
        remote.reported_decode_tps = record.reported_decode_tps
        remote.reported_prefill_tps = record.reported_prefill_tps
        remote.measured_decode_tps = min(record.measured_decode_tps, 500.0)
        remote.remote_reputation = record.reputation
        remote.served = record.served

    def _drop(self, remote: RemoteProvider) -> None:
        if self.scheduler.providers.get(remote.id) is not remote:
            remote.closed = True  # never take out whatever holds its id now
        else:
            self.scheduler.remove(remote)
        self.scheduler.reputations.detach(remote)
        for request_id, (provider, _) in list(self._replies.items()):
            if provider is remote:
                self._lost(request_id)
