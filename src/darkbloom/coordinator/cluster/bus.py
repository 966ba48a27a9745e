"""Frames between coordinators: a request reaching a provider held elsewhere, and its answer back.

    B (consumer's coordinator)                          A (provider's home coordinator)
    send_request(A, provider, id, frame) ── stream inbox:A ──▶ inbox() → provider's outbox
    cancel(A, id)                        ── stream inbox:A ──▶ inbox() (same stream: never
                                                               overtakes its request)
    replies(id, home=A)  ◀── stream replies:B ── send_reply(B, id, frame, final=...)

Both directions are Redis Streams, one per receiving node, read by that node alone with
``XREAD BLOCK`` and trimmed behind its reader: entries wait in Redis while the reader is briefly
away (pub/sub would drop them), arrive in the order they were written, and a slow reader only
lengthens the stream, up to MAXLEN, instead of being disconnected. Frames are opaque bytes here:
B sealed the request to the provider's key and opens its chunks; A only forwards them.

One writer task per node pipelines everything it sends, in call order, so a request's frames
(and a request and its cancel) keep their order; each reply carries a per-request number, so a
frame lost to trimming or an outage is noticed (RepliesLost) instead of skipped silently.
Liveness: a Replies whose home stops beating (two checks in a row) fails with NodeLost; a
forwarded request whose origin stops beating is cancelled through the home's own inbox (reason
``origin_lost``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

from redis.asyncio import Redis
from redis.exceptions import RedisError

from darkbloom.coordinator.cluster._aio import COMMAND_TIMEOUT_S, bounded, cancelling, stop
from darkbloom.coordinator.cluster.keys import Keys, check_id
from darkbloom.coordinator.cluster.presence import Presence
from darkbloom.protocol.frames import MAX_REQUEST_FRAME_BYTES

log = logging.getLogger(__name__)

# No protocol frame is larger, so no honest message is: a request carrying a whole audio upload
# (media.md) is the largest.
MAX_MESSAGE_BYTES = MAX_REQUEST_FRAME_BYTES
INBOX_MAXLEN = 2_000
REPLIES_MAXLEN = 20_000
STREAM_TTL_S = 60.0  # a stream nobody writes to (its node died) is gone this long after
BLOCK_MS = 1_000
READ_COUNT = 512
TRIM_EVERY = 512
WRITE_BATCH = 512
# Replies to one coordinator are packed into one stream entry per write batch, up to this size
# (a larger frame gets an entry of its own): Redis and the client then parse one entry, not one
# per frame, which is what the bus's throughput hangs on.
REPLY_ENTRY_BYTES = 256 * 1024
OUTBOX_MAX = 10_000  # messages queued for the writer before senders wait (backpressure)
# ...and bytes: 10,000 messages of up to 10 MiB would be 100 GB. A provider streaming faster
# than Redis takes it (or while Redis is slow) then waits on its own socket instead.
OUTBOX_MAX_BYTES = 64 * 1024 * 1024
INBOX_QUEUE_MAX = 4_096  # messages read but not yet taken by inbox() before the reader waits
MAX_PENDING_BYTES = 16 * 1024 * 1024  # per Replies: frames arrived but not yet iterated
LIVENESS_CHECK_S = 1.0
OUTAGE_GRACE_S = 5.0
_FIELDS_MAX = 8

InboxKind = Literal["request", "cancel", "control"]


class BusError(Exception):
    """Something about the cluster bus went wrong for one request or message."""


class MessageTooLarge(BusError, ValueError):
    """Refused before sending: larger than ``max_message_bytes``."""


class NodeLost(BusError):
    """The coordinator at the other end of a request stopped beating."""


class RepliesLost(BusError):
    """Frames of a request were lost (trimmed, overflowed, or an outage): the answer is broken."""


class ClusterUnavailable(BusError):
    """Redis could not be reached (long enough for in-flight requests to be given up)."""


@dataclass(frozen=True, slots=True)
class InboxMessage:
    """A message for a provider this node holds. ``frame``: the request frame JSON (request),
    a control payload (control) or ''. ``reason``: '' when sent by ``origin``; ``origin_lost``
    for a cancel this node made itself because the origin stopped beating."""

    kind: InboxKind
    origin: str
    request_id: str
    provider_id: str
    frame: str = ""
    reason: str = ""


@dataclass(slots=True)
class _Forwarded:
    origin: str
    provider_id: str
    next_n: int = 0


@dataclass(slots=True)
class _Out:
    key: str  # '' for a flush marker
    maxlen: int
    fields: dict[str, bytes | str] | None = None  # an inbox message: an entry of its own
    packed: bytes = b""  # a reply: packed with the others to the same coordinator
    done: asyncio.Future[None] | None = None
    size: int = 0  # bytes it holds, for the outbox's byte budget


def pack_reply(request_id: str, n: int, final: bool, frame: bytes) -> bytes:
    """One reply inside a replies entry: ``<request id> <n> <0|1> <length>\n`` then the frame."""
    return b"%s %d %d %d\n" % (request_id.encode(), n, final, len(frame)) + frame


def unpack_replies(payload: bytes, max_frame_bytes: int) -> list[tuple[str, int, bool, str]] | None:
    """The replies in one entry, or None if any part of it is malformed (then none is used)."""
    replies: list[tuple[str, int, bool, str]] = []
    pos = 0
    while pos < len(payload):
        end = payload.find(b"\n", pos, pos + 200)
        if end < 0:
            return None
        parts = payload[pos:end].split(b" ")
        if len(parts) != 4 or not all(p.isdigit() for p in parts[1:]) or parts[2] not in (b"0", b"1"):
            return None
        length = int(parts[3])
        if length > max_frame_bytes or end + 1 + length > len(payload) or len(parts[1]) > 12:
            return None
        try:
            request_id = parts[0].decode("ascii")
            frame = payload[end + 1:end + 1 + length].decode()
        except UnicodeDecodeError:
            return None
        replies.append((request_id, int(parts[1]), parts[2] == b"1", frame))
        pos = end + 1 + length
    return replies


class Replies:
    """The frames coming back for one request, in order, ending after the ``final`` one.

    Registered when made (before the request is sent, so no frame can arrive unclaimed);
    ``close`` (or leaving ``async with``) unregisters it, after which late frames are dropped.
    Iterating raises NodeLost, RepliesLost or ClusterUnavailable once no more frames can come;
    frames that arrived before the failure are yielded first."""

    def __init__(self, bus: Bus, request_id: str, home: str, max_pending_bytes: int) -> None:
        self._bus = bus
        self.request_id = request_id
        self.home = home
        self.max_pending_bytes = max_pending_bytes
        self.pending_bytes = 0
        self.next_n = 0
        self.closed = False  # no more frames will be accepted
        self._done = False  # the iterator has ended
        # Frames, then possibly an error; None: closed, the iterator ends.
        self._queue: asyncio.Queue[tuple[str, bool] | BusError | None] = asyncio.Queue()

    def __aiter__(self) -> Replies:
        return self

    async def __anext__(self) -> str:
        if self._done:
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is None:
            self._done = True
            raise StopAsyncIteration
        if isinstance(item, BusError):
            self._done = True
            self.close()
            raise item
        frame, final = item
        self.pending_bytes -= len(frame)
        if final:
            self._done = True
            self.close()
        return frame

    def close(self) -> None:
        """Stop taking frames; an iteration in progress ends after what already arrived."""
        if not self.closed:
            self.closed = True
            self._queue.put_nowait(None)
        if self._bus._replies.get(self.request_id) is self:
            del self._bus._replies[self.request_id]

    async def __aenter__(self) -> Replies:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.close()

    def _deliver(self, n: int, frame: str, final: bool) -> None:
        if self.closed:
            return
        if n != self.next_n:
            self._fail(RepliesLost(f"reply {self.next_n} of request {self.request_id} was lost"))
            return
        if self.pending_bytes + len(frame) > self.max_pending_bytes:
            self._fail(RepliesLost(f"request {self.request_id}: more than {self.max_pending_bytes} "
                                   "bytes of replies waiting to be read"))
            return
        self.next_n += 1
        self.pending_bytes += len(frame)
        self._queue.put_nowait((frame, final))
        if final:
            self.close()

    def _fail(self, error: BusError) -> None:
        if self.closed:
            return
        self._queue.put_nowait(error)
        self.close()


def _b(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _entries(response: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """XREAD's answer as (id, fields), whichever RESP version the client speaks: RESP2 is
    ``[[name, [entries]]]``, RESP3 ``{name: [[entries]]}``."""
    if not response:
        return []
    if isinstance(response, dict):
        streams = [v[0] if v and isinstance(v[0], list) else v for v in response.values()]
    else:
        streams = [stream[1] for stream in response]
    entries: list[tuple[bytes, dict[bytes, bytes]]] = []
    for batch in streams:
        for entry_id, fields in batch:
            if isinstance(fields, dict):
                entries.append((_b(entry_id), {_b(k): _b(v) for k, v in fields.items()}))
    return entries


class Bus:
    """This node's end of the bus: its inbox, the replies to requests it sent, and one writer."""

    def __init__(self, redis: Redis, prefix: str, node_id: str, *, liveness: Presence | None = None,
                 max_message_bytes: int = MAX_MESSAGE_BYTES, inbox_maxlen: int = INBOX_MAXLEN,
                 replies_maxlen: int = REPLIES_MAXLEN, stream_ttl_s: float = STREAM_TTL_S,
                 block_ms: int = BLOCK_MS, liveness_check_s: float = LIVENESS_CHECK_S,
                 max_pending_bytes: int = MAX_PENDING_BYTES, outage_grace_s: float = OUTAGE_GRACE_S,
                 outbox_max: int = OUTBOX_MAX, outbox_max_bytes: int = OUTBOX_MAX_BYTES,
                 command_timeout_s: float = COMMAND_TIMEOUT_S) -> None:
        self.redis = redis
        self.keys = Keys(prefix)
        self.node_id = check_id("node id", node_id)
        self.liveness = liveness
        self.max_message_bytes = max_message_bytes
        self.inbox_maxlen = inbox_maxlen
        self.replies_maxlen = replies_maxlen
        self.stream_ttl_ms = max(1, round(stream_ttl_s * 1000))
        self.block_ms = block_ms
        self.liveness_check_s = liveness_check_s
        self.max_pending_bytes = max_pending_bytes
        self.outage_grace_s = outage_grace_s
        self.timeout_s = command_timeout_s
        self._replies: dict[str, Replies] = {}  # requests this node sent, by request id
        self._forwarded: dict[str, _Forwarded] = {}  # requests this node received, by request id
        self._outbox: asyncio.Queue[_Out] = asyncio.Queue(maxsize=outbox_max)
        self.outbox_max_bytes = outbox_max_bytes
        self._outbox_bytes = 0  # queued and not yet written
        self._outbox_room = asyncio.Event()
        self._outbox_room.set()
        self._inbox: asyncio.Queue[InboxMessage] = asyncio.Queue(maxsize=INBOX_QUEUE_MAX)
        self._tasks: list[asyncio.Task[None]] = []
        self.dropped = 0  # frames for requests nobody waits for any more (late frames)
        self._suspects: set[str] = set()  # nodes whose beat the last liveness check missed

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        if self._tasks:
            return
        self._tasks = [asyncio.create_task(self._write_loop(), name="bus-writer"),
                       asyncio.create_task(self._read_loop(self.keys.inbox(self.node_id),
                                                           self._take_inbox), name="bus-inbox"),
                       asyncio.create_task(self._read_loop(self.keys.replies(self.node_id),
                                                           self._take_replies), name="bus-replies")]
        if self.liveness is not None:
            self._tasks.append(asyncio.create_task(self._watch(), name="bus-liveness"))

    async def close(self) -> None:
        """Write what is queued (for up to 2 s), stop reading and writing; open Replies fail
        with ClusterUnavailable."""
        if self._tasks and not self._tasks[0].done():
            try:
                async with asyncio.timeout(2.0):
                    await self.flush()
            except TimeoutError:
                log.warning("cluster bus closed with %d message(s) unwritten", self._outbox.qsize())
        tasks, self._tasks = self._tasks, []
        await stop(tasks)
        for replies in list(self._replies.values()):
            replies._fail(ClusterUnavailable("this coordinator's cluster bus closed"))

    async def flush(self) -> None:
        """Wait until everything queued so far has been written to Redis (tests, shutdown)."""
        self._check_started()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._outbox.put(_Out("", 0, done=done))
        await done

    # --- the requesting side (B) ---------------------------------------------------------

    def replies(self, request_id: str, home: str) -> Replies:
        """Register for a request's replies; do it before ``send_request``."""
        check_id("request id", request_id)
        check_id("node id", home)
        if request_id in self._replies:
            raise ValueError(f"replies for request {request_id} are already registered")
        replies = Replies(self, request_id, home, self.max_pending_bytes)
        self._replies[request_id] = replies
        return replies

    async def send_request(self, home: str, provider_id: str, request_id: str, frame_json: str) -> None:
        """Put a request for ``provider_id`` (held by ``home``) in ``home``'s inbox; returns once it
        is in Redis. Raises MessageTooLarge, BadName, or ClusterUnavailable."""
        await self._send_inbox(home, "request", request_id, provider_id, frame_json)

    async def cancel(self, home: str, request_id: str, provider_id: str = "", note: str = "") -> None:
        """Stop a request sent to ``home``: late replies are dropped here from now on, and the
        cancel reaches ``home`` after the request itself (same stream). ``note``: a short JSON
        word for ``home`` (the link's verdict on the provider), '' for none."""
        await self._send_inbox(home, "cancel", request_id, provider_id, note)

    async def send_control(self, home: str, provider_id: str, payload_json: str) -> None:
        """A message about a provider ``home`` holds that is no request (e.g. replace a session)."""
        await self._send_inbox(home, "control", "-", provider_id, payload_json)

    async def _send_inbox(self, home: str, kind: InboxKind, request_id: str, provider_id: str,
                          frame_json: str) -> None:
        await (await self.post(home, kind, request_id, provider_id, frame_json))

    async def post(self, home: str, kind: InboxKind, request_id: str, provider_id: str,
                   frame_json: str = "") -> asyncio.Future[None]:
        """Queue a message for ``home``'s inbox, in call order, without waiting for Redis: the
        future returned ends once it is written (or fails with ClusterUnavailable). A sender with
        many messages thus has them written in batches, and one slow write holds up no other.
        Raises MessageTooLarge, BadName, ClusterUnavailable; waits only while the writer is
        ``outbox_max`` messages behind. A cancel stops this node taking the request's replies."""
        check_id("node id", home)
        check_id("request id", request_id)
        if provider_id:
            check_id("provider id", provider_id)
        data = self._bounded(frame_json)
        self._check_started()
        if kind == "cancel" and (replies := self._replies.get(request_id)) is not None:
            replies.close()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._enqueue(_Out(self.keys.inbox(home), self.inbox_maxlen, fields={
            "k": kind, "o": self.node_id, "r": request_id, "p": provider_id, "f": data}, done=done,
            size=len(data)))
        return done

    # --- the provider's side (A) ---------------------------------------------------------

    async def inbox(self) -> AsyncIterator[InboxMessage]:
        """Messages for this node's providers, in arrival order, forever (one consumer)."""
        while True:
            yield await self._inbox.get()

    async def send_reply(self, origin: str, request_id: str, frame_json: str, *,
                         final: bool = False) -> bool:
        """Queue a provider's frame for the coordinator that sent the request, in call order.

        False (and nothing sent) if the request is not one this node is forwarding any more
        (cancelled, its origin gone, already final) or names another origin. Waits only while
        the writer is ``outbox_max`` messages behind (backpressure onto the provider's socket).
        ``final``: the request's last frame (complete or error); the request is forgotten."""
        forwarded = self._forwarded.get(request_id)
        if forwarded is None or forwarded.origin != origin:
            self.dropped += 1
            return False
        data = self._bounded(frame_json)
        self._check_started()
        n = forwarded.next_n
        forwarded.next_n += 1
        if final:
            del self._forwarded[request_id]
        packed = pack_reply(request_id, n, final, data)
        await self._enqueue(_Out(self.keys.replies(origin), self.replies_maxlen, packed=packed,
                                 size=len(packed)))
        return True

    def origin_of(self, request_id: str) -> str | None:
        """The coordinator that sent a request this node is forwarding, or None."""
        forwarded = self._forwarded.get(request_id)
        return forwarded.origin if forwarded is not None else None

    def forget(self, request_id: str) -> None:
        """Stop forwarding a request's frames (the provider session holding it ended)."""
        self._forwarded.pop(request_id, None)

    @property
    def forwarding(self) -> int:
        return len(self._forwarded)

    @property
    def waiting(self) -> int:
        return len(self._replies)

    async def _enqueue(self, out: _Out) -> None:
        """Queue for the writer, waiting while ``outbox_max_bytes`` are already queued (one
        message is always let through, however large, so nothing waits for ever)."""
        while self._outbox_bytes and self._outbox_bytes + out.size > self.outbox_max_bytes:
            self._outbox_room.clear()
            await self._outbox_room.wait()
        self._outbox_bytes += out.size
        try:
            await self._outbox.put(out)
        except BaseException:
            self._outbox_bytes -= out.size
            raise

    def _written(self, batch: list[_Out]) -> None:
        self._outbox_bytes -= sum(out.size for out in batch)
        self._outbox_room.set()

    def _check_started(self) -> None:
        if not self._tasks or self._tasks[0].done():
            raise ClusterUnavailable("the cluster bus is not running (start() it first)")

    def _bounded(self, frame_json: str) -> bytes:
        data = frame_json.encode()
        if len(data) > self.max_message_bytes:
            raise MessageTooLarge(f"message of {len(data)} bytes; the bus carries at most "
                                  f"{self.max_message_bytes}")
        return data

    # --- writing -------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._outbox.get()]
            while len(batch) < WRITE_BATCH and not self._outbox.empty():
                batch.append(self._outbox.get_nowait())
            writes = [out for out in batch if out.key]
            error: BaseException | None = None
            if writes:
                try:
                    pipe = self.redis.pipeline(transaction=False)
                    # replies key -> entries in order, each a list of packed replies and its size
                    packed: dict[str, list[tuple[list[bytes], int]]] = {}
                    for out in writes:
                        if out.fields is not None:
                            pipe.xadd(out.key, out.fields,  # type: ignore[arg-type]
                                      maxlen=out.maxlen, approximate=True)
                            continue
                        entries = packed.setdefault(out.key, [([], 0)])
                        parts, size = entries[-1]
                        if parts and size + len(out.packed) > REPLY_ENTRY_BYTES:
                            parts, size = [], 0
                            entries.append((parts, size))
                        parts.append(out.packed)
                        entries[-1] = (parts, size + len(out.packed))
                    for key, entries in packed.items():
                        for parts, _ in entries:
                            pipe.xadd(key, {"b": b"".join(parts)}, maxlen=self.replies_maxlen,
                                      approximate=True)
                    for key in dict.fromkeys(out.key for out in writes):
                        pipe.pexpire(key, self.stream_ttl_ms)
                    async with bounded(self.timeout_s):
                        await pipe.execute()
                except (RedisError, OSError) as exc:
                    if cancelling():
                        raise asyncio.CancelledError from exc
                    error = exc
                    log.warning("cluster bus could not write %d message(s) (%s)", len(writes),
                                type(exc).__name__)
                except Exception as exc:  # a bug: fail these messages, keep the writer alive
                    error = exc
                    log.exception("cluster bus writer failed on %d message(s)", len(writes))
            self._written(batch)
            for out in batch:
                if out.done is not None and not out.done.done():
                    if error is None or not out.key:
                        out.done.set_result(None)
                    else:
                        out.done.set_exception(ClusterUnavailable(
                            f"could not reach Redis ({type(error).__name__})"))

    # --- reading -------------------------------------------------------------------------

    async def _read_loop(self, key: str,
                         take: Callable[[dict[bytes, bytes]], Awaitable[None]]) -> None:
        """XREAD ``key`` forever, from its beginning (a node's streams are its own from birth),
        handing each entry to ``take`` and trimming what was read (every ``TRIM_EVERY``
        entries or second: a trim per read would add a round trip to every frame's latency)."""
        last = b"0-0"
        down_since: float | None = None
        backoff = 0.05
        untrimmed, trimmed_at = 0, time.monotonic()
        while True:
            try:
                async with bounded(self.block_ms / 1000 + self.timeout_s):
                    response = await self.redis.xread({key: last}, count=READ_COUNT,
                                                      block=self.block_ms)
            except (RedisError, OSError) as exc:
                if cancelling():
                    raise asyncio.CancelledError from exc
                now = time.monotonic()
                if down_since is None:
                    down_since = now
                    log.warning("cluster bus cannot read %s (%s); retrying", key, type(exc).__name__)
                elif now - down_since > self.outage_grace_s:
                    self._outage()
                await asyncio.sleep(backoff)
                backoff = min(1.0, backoff * 2)
                continue
            if down_since is not None:
                log.info("cluster bus reading %s again", key)
                down_since, backoff = None, 0.05
            try:
                entries = _entries(response)
            except (TypeError, ValueError) as exc:  # not XREAD's shape: skip it, keep reading
                log.warning("cluster bus got an unreadable reply from %s (%s)", key, type(exc).__name__)
                entries = []
            for entry_id, fields in entries:
                last = entry_id
                try:
                    await take(fields)
                except Exception:  # one entry must never stop the reader (every later one is lost)
                    log.exception("cluster bus dropped an entry of %s", key)
            untrimmed += len(entries)
            if untrimmed and (untrimmed >= TRIM_EVERY or time.monotonic() - trimmed_at >= 1.0):
                try:
                    async with bounded(self.timeout_s):
                        await self.redis.xtrim(key, minid=last.decode(), approximate=False)
                    untrimmed, trimmed_at = 0, time.monotonic()
                except (RedisError, OSError) as exc:
                    if cancelling():
                        raise asyncio.CancelledError from exc

    def _outage(self) -> None:
        if self._replies:
            log.warning("failing %d cross-coordinator request(s): Redis unreachable for over %g s",
                        len(self._replies), self.outage_grace_s)
        for replies in list(self._replies.values()):
            replies._fail(ClusterUnavailable("Redis unreachable; the answer cannot arrive"))

    def _text(self, fields: dict[bytes, bytes], name: bytes, limit: int) -> str | None:
        value = fields.get(name)
        if value is None or len(value) > limit:
            return None
        try:
            return value.decode()
        except UnicodeDecodeError:
            return None

    async def _take_inbox(self, fields: dict[bytes, bytes]) -> None:
        message = self._inbox_message(fields)
        if message is None:
            log.warning("cluster bus dropped a malformed inbox message")
            return
        if message.kind == "request":
            self._forwarded[message.request_id] = _Forwarded(message.origin, message.provider_id)
        elif message.kind == "cancel":
            self._forwarded.pop(message.request_id, None)
        await self._inbox.put(message)

    def _inbox_message(self, fields: dict[bytes, bytes]) -> InboxMessage | None:
        if len(fields) > _FIELDS_MAX:
            return None
        kind = self._text(fields, b"k", 16)
        origin = self._text(fields, b"o", 128)
        request_id = self._text(fields, b"r", 128)
        provider_id = self._text(fields, b"p", 128)
        frame = self._text(fields, b"f", self.max_message_bytes)
        if kind not in ("request", "cancel", "control") or not origin or not request_id \
                or provider_id is None or frame is None:
            return None
        return InboxMessage(kind, origin, request_id, provider_id, frame)  # type: ignore[arg-type]

    async def _take_replies(self, fields: dict[bytes, bytes]) -> None:
        payload = fields.get(b"b")
        batch = None
        if payload is not None and len(fields) == 1 \
                and len(payload) <= self.max_message_bytes + REPLY_ENTRY_BYTES + 256:
            batch = unpack_replies(payload, self.max_message_bytes)
        if batch is None:
            log.warning("cluster bus dropped a malformed replies entry")
            return
        for request_id, n, final, frame in batch:
            replies = self._replies.get(request_id)
            if replies is None:
                self.dropped += 1  # a late frame of a request this node gave up on
                continue
            replies._deliver(n, frame, final)

    # --- liveness ------------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.liveness_check_s)
            try:
                await self._check_liveness()
            except Exception:  # a bug must not stop the watch: lost nodes would go unnoticed
                log.exception("cluster bus could not check liveness")

    async def _check_liveness(self) -> None:
        assert self.liveness is not None
        homes = {r.home for r in self._replies.values()}
        origins = {f.origin for f in self._forwarded.values()}
        if not homes and not origins:
            self._suspects = set()
            return
        try:
            alive = await self.liveness.alive(homes | origins)
        except (RedisError, OSError) as exc:
            if cancelling():
                raise asyncio.CancelledError from exc
            return  # an outage is the readers' to judge
        # A node is lost only when two checks in a row miss its beat: one missed read (a beat
        # delayed on a loaded machine) must not fail a healthy node's requests.
        missing = (homes | origins) - alive
        lost, self._suspects = missing & self._suspects, missing
        for replies in [r for r in self._replies.values() if r.home in lost]:
            replies._fail(NodeLost(f"coordinator {replies.home} holding the provider of request "
                                   f"{replies.request_id} stopped"))
        await self._cancel_orphans(origins & lost)

    async def _cancel_orphans(self, lost: Iterable[str]) -> None:
        lost = set(lost)
        if not lost:
            return
        for request_id, forwarded in list(self._forwarded.items()):
            if forwarded.origin in lost:
                del self._forwarded[request_id]
                await self._inbox.put(InboxMessage("cancel", forwarded.origin, request_id,
                                                   forwarded.provider_id, reason="origin_lost"))
