"""In-flight attempts: seal a request to one provider, then turn its frames into events.

An attempt is one dispatch to one provider under a fresh request id and a fresh ephemeral key
(protocol.md §6, §9). Its slot is released exactly once, whichever way it ends: complete,
error, cancel, or the provider's socket dropping.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from darkbloom.coordinator.routing.cost import Demand
from darkbloom.coordinator.routing.registry import ProviderConn
from darkbloom.coordinator.routing.scheduler import Scheduler
from darkbloom.crypto import KeyPair, SealingError, SessionChannel
from darkbloom.errors import DarkbloomError, ProviderFailed, from_frame
from darkbloom.logcontext import REQUEST_ID
from darkbloom.protocol.blind import sealed_event
from darkbloom.protocol.frames import (
    Cancel,
    Endpoint,
    InferenceAccepted,
    InferenceComplete,
    InferenceError,
    InferenceRequest,
    InferenceResponseChunk,
    Sealed,
    Usage,
)
from darkbloom.protocol.sse import (
    DATA,
    DONE,
    RECEIPT_COMMENT,
    Transcript,
    read_receipt_comment,
)
from darkbloom.protocol.trust import SignedReceipt

log = logging.getLogger(__name__)

# Bounds on what one attempt may make the coordinator hold (protocol.md §9): the whole response,
# what waits for a slow consumer, and how long the response may take from dispatch to the end.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
MAX_BUFFERED_BYTES = 16 * 1024 * 1024
RESPONSE_DEADLINE_S = 30 * 60.0
# The coordinator's own words for an attempt that failed (never a provider's).
DISCONNECTED = "provider disconnected"
INVALID_RESPONSE = "invalid provider response"
TOO_SLOW = "consumer too slow; response cancelled"


class PastDeadline(TimeoutError):
    """The attempt's overall response deadline ran out (not one wait's timer)."""


class ConsumerTooSlow(ProviderFailed):
    """The consumer read so slowly that the answer overfilled its buffer: the consumer's doing, so
    what it received is charged like a stream it cut (billing.md §4)."""


@runtime_checkable
class Verdicts(Protocol):
    """A provider held by another coordinator (cluster/link.py RemoteProvider) takes the verdict
    on a request it failed here, for its home to record."""

    def failed(self, request_id: str, timeout: bool = False) -> None: ...


@dataclass(frozen=True, slots=True)
class Event:
    kind: Literal["accepted", "chunk", "complete", "error", "progress"]
    data: bytes = b""
    usage: Usage | None = None
    receipt: SignedReceipt | None = None
    error: DarkbloomError | None = None  # on "error": ours (ProviderFailed) or the provider's
    chunks: int = 0  # on "complete": how many chunks the provider relayed


@dataclass(eq=False)
class Attempt:
    request_id: str
    provider: ProviderConn
    channel: SessionChannel | None  # None: sealed by the consumer, the coordinator cannot open it
    demand: Demand  # what its slot was taken for: released with the same figures
    stream: bool = False
    max_tokens_cap: int = 0  # the output budget the provider was given
    deadline: float = 0.0  # time.monotonic() by which the response must have ended
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    next_seq: int = 0
    done: bool = False
    received_bytes: int = 0
    buffered_bytes: int = 0
    transcript: Transcript | None = None  # standard mode: to check the provider's receipt
    receipt: SignedReceipt | None = None  # standard stream: the checked receipt it carried
    x_request_id: str | None = None  # the consumer's X-Request-ID, for log lines about it
    # A media answer (media.md): its chunks are pieces of one body (not events), in order; and
    # how its progress must read to count (unit, most work, least growth: prepare.MediaJob).
    media: tuple[str, float, float] | None = None
    progressed: float = 0.0  # the most work done a heartbeat reported (audio seconds, steps)
    accepted: bool = False
    max_response_bytes: int = 0  # of ciphertext; 0: the dispatcher's limit
    # Monotonic times, for the provider's reputation: dispatched, and its first chunk arrived.
    sent_at: float = field(default_factory=time.monotonic)
    first_chunk_at: float | None = None

    def ready(self) -> bool:
        """Whether an event is waiting: the relay writes what has gathered once none is."""
        return not self.events.empty()

    async def next_event(self, wait_s: float) -> Event:
        """The next event within ``wait_s`` (TimeoutError) and the attempt's overall deadline
        (PastDeadline). Which limit ran out is decided before waiting, never by reading the clock
        after: an event loop's timer may fire a little early by ``time.monotonic()``."""
        until_deadline = self.deadline - time.monotonic()
        if until_deadline <= 0:
            raise PastDeadline
        if not self.events.empty():  # no wait, so no timer
            event = self.events.get_nowait()
            self.buffered_bytes -= len(event.data)
            return event
        try:
            async with asyncio.timeout(min(wait_s, until_deadline)):
                event = await self.events.get()
        except TimeoutError:
            if until_deadline <= wait_s:
                raise PastDeadline from None
            raise
        self.buffered_bytes -= len(event.data)
        return event


class Dispatcher:
    def __init__(self, scheduler: Scheduler, *, max_response_bytes: int = MAX_RESPONSE_BYTES,
                 max_buffered_bytes: int = MAX_BUFFERED_BYTES,
                 deadline_s: float = RESPONSE_DEADLINE_S) -> None:
        self.scheduler = scheduler
        self.pending: dict[str, Attempt] = {}
        self.max_response_bytes = max_response_bytes
        self.max_buffered_bytes = max_buffered_bytes
        self.deadline_s = deadline_s

    def send(self, provider: ProviderConn, body: bytes | Sealed, *, demand: Demand, model: str,
             endpoint: Endpoint, stream: bool, max_tokens_cap: int,
             x_request_id: str | None = None, media: tuple[str, float, float] | None = None,
             max_response_bytes: int = 0, cache_scope: str | None = None) -> Attempt:
        """Seal ``body`` to the provider's key (or forward the consumer's own envelope unchanged)
        and queue it; the caller already holds a slot."""
        request_id = str(uuid.uuid4())
        channel: SessionChannel | None = None
        if isinstance(body, Sealed):
            envelope = body
        else:
            ephemeral = KeyPair.generate()
            channel = SessionChannel(ephemeral, provider.public_key, "requester")
            envelope = Sealed(ephemeral_public_key=ephemeral.public_b64,
                              ciphertext=channel.seal("request", "", 0, body))
        attempt = Attempt(request_id=request_id, provider=provider, channel=channel, demand=demand,
                          stream=stream, max_tokens_cap=max_tokens_cap,
                          deadline=time.monotonic() + self.deadline_s,
                          transcript=Transcript(stream) if channel else None,
                          x_request_id=x_request_id, media=media,
                          max_response_bytes=max(max_response_bytes, self.max_response_bytes))
        self.pending[attempt.request_id] = attempt
        frame = InferenceRequest(
            request_id=attempt.request_id,
            encrypted_body=envelope,
            model=model,
            endpoint=endpoint,
            stream=stream,
            max_tokens_cap=max_tokens_cap,
            sealed_by="coordinator" if channel else "consumer",
            x_request_id=x_request_id,
            cache_scope=cache_scope,
        )
        if not provider.send(frame):
            self._fail(attempt, ProviderFailed(DISCONNECTED))
        return attempt

    def timed_out(self, attempt: Attempt) -> None:
        """A timer of protocol.md §9 ran out on the provider: its failure, then a cancel."""
        if not attempt.done:
            self._failed(attempt.provider, timeout=True, request_id=attempt.request_id)
        self.cancel(attempt)

    def cancel(self, attempt: Attempt) -> None:
        """Consumer gone or attempt timed out: forget it first, so late frames are dropped."""
        if attempt.done:
            return
        self._finish(attempt)
        attempt.provider.send(Cancel(request_id=attempt.request_id))

    def provider_lost(self, provider: ProviderConn) -> None:
        for attempt in [a for a in self.pending.values() if a.provider is provider]:
            self._failed(provider)
            self._fail(attempt, ProviderFailed(DISCONNECTED))

    # --- frames from providers ---------------------------------------------------------

    def progress(self, provider: ProviderConn, jobs: list[tuple[str, str, float]]) -> None:
        """A heartbeat said these media jobs moved on (request id, unit, work done): each one's
        wait for its answer starts again, so a long image job is not cut by it. Only work that
        grew by a real amount, in the job's unit and within its size, counts: a stuck or lying
        job cannot keep itself alive past what it could be doing, and the response deadline
        holds whatever it says."""
        for request_id, unit, done in jobs:
            attempt = self.pending.get(request_id)
            if attempt is None or attempt.provider is not provider or attempt.media is None \
                    or not attempt.accepted:  # before its acceptance, a job has no progress
                continue
            wanted, most, least = attempt.media
            if unit != wanted or done > most or done < attempt.progressed + least:
                continue
            attempt.progressed = done
            attempt.events.put_nowait(Event("progress"))

    def handle(self, provider: ProviderConn,
               frame: InferenceAccepted | InferenceResponseChunk | InferenceComplete | InferenceError
               ) -> None:
        attempt = self.pending.get(frame.request_id)
        if attempt is None or attempt.provider is not provider:
            # Late frame of a cancelled/timed-out attempt, or another provider's id: drop it.
            log.debug("dropping %s for unknown request", frame.type)
            return
        # Frames arrive on the provider socket's task: log lines about them name the request.
        token = REQUEST_ID.set(attempt.x_request_id)
        try:
            self._handle(attempt, provider, frame)
        finally:
            REQUEST_ID.reset(token)

    def _handle(self, attempt: Attempt, provider: ProviderConn,
                frame: InferenceAccepted | InferenceResponseChunk | InferenceComplete | InferenceError
                ) -> None:
        if isinstance(frame, InferenceAccepted):
            if not attempt.accepted:  # once: a repeat would restart the wait for the answer
                attempt.accepted = True
                attempt.events.put_nowait(Event("accepted"))
        elif isinstance(frame, InferenceResponseChunk):
            self._chunk(attempt, frame)
        elif isinstance(frame, InferenceComplete):
            self._finish(attempt)
            provider.served += 1
            self._succeeded(attempt, frame.usage.completion_tokens)
            attempt.events.put_nowait(Event("complete", usage=frame.usage, chunks=attempt.next_seq,
                                            receipt=self._checked_receipt(attempt, frame.receipt)))
        else:
            # Our own cancel() forgets the attempt first, so a 499 echo never gets here; an
            # unprompted one still ends the attempt and frees the slot.
            error = from_frame(frame)
            if attempt.channel is not None:
                error.sealed_message = None  # only a consumer-sealed request has words sealed to it
            if attempt.channel is not None or not 400 <= error.status_code < 500:
                # A consumer-sealed request's 4xx may be the consumer's own doing; any other
                # refusal of a request we validated is the provider's failure.
                self._failed(provider)
            self._fail(attempt, error)

    def _chunk(self, attempt: Attempt, frame: InferenceResponseChunk) -> None:
        if frame.seq != attempt.next_seq:
            self._violation(attempt, f"chunk sequence gap (expected {attempt.next_seq})")
            return
        if frame.data or frame.encrypted_data is None:
            self._violation(attempt, "plaintext response chunk")
            return
        if frame.encrypted_data.ephemeral_public_key != attempt.provider.public_key_b64:
            self._violation(attempt, "chunk sealed by a key other than the provider's")
            return
        ciphertext = frame.encrypted_data.ciphertext
        attempt.received_bytes += len(ciphertext)
        if attempt.received_bytes > attempt.max_response_bytes:
            self._violation(attempt, f"response larger than {attempt.max_response_bytes} bytes")
            return
        if attempt.media is not None and attempt.channel is not None:  # a piece of the body
            try:
                plaintext = attempt.channel.open("response", attempt.request_id, frame.seq, ciphertext)
            except SealingError as exc:
                self._violation(attempt, f"chunk could not be opened: {type(exc).__name__}")
                return
            if attempt.transcript is not None:
                attempt.transcript.add_body(plaintext)
        elif attempt.channel is None:  # consumer-blind: relay ciphertext we cannot open
            plaintext = sealed_event(attempt.request_id, frame.seq, ciphertext)
        else:
            try:
                plaintext = attempt.channel.open("response", attempt.request_id, frame.seq, ciphertext)
                event = plaintext.decode("utf-8")
            except (SealingError, UnicodeDecodeError) as exc:
                self._violation(attempt, f"chunk could not be opened: {type(exc).__name__}")
                return
            if (problem := self._unrelayable(attempt, event)) is not None:
                self._violation(attempt, problem)
                return
            if attempt.stream and event.startswith(RECEIPT_COMMENT) \
                    and not self._relayed_receipt(attempt, event):
                attempt.next_seq += 1  # a receipt that does not hold is dropped, never passed on
                return
            if attempt.transcript is not None:
                attempt.transcript.add(event)
        attempt.next_seq += 1
        if attempt.first_chunk_at is None:
            attempt.first_chunk_at = time.monotonic()
        # A media body is collected whole by the coordinator itself (relay.collect), so its bound
        # is the answer's; a stream waits for the consumer, within the buffer's.
        buffer = attempt.max_response_bytes if attempt.media is not None else self.max_buffered_bytes
        if attempt.buffered_bytes + len(plaintext) > buffer:
            log.warning("request %s: consumer too slow, cancelling", attempt.request_id)
            self.cancel(attempt)
            attempt.events.put_nowait(Event("error", error=ConsumerTooSlow(TOO_SLOW)))
            return
        attempt.buffered_bytes += len(plaintext)
        attempt.events.put_nowait(Event("chunk", data=plaintext))

    def _unrelayable(self, attempt: Attempt, event: str) -> str | None:
        """Standard mode: why this chunk cannot be relayed as the provider's, or None. What the
        consumer gets must be what a receipt covers: a non-streamed body is one data event, and
        only ``[DONE]`` may follow a stream's receipt. (The event forms themselves are the
        consumer's check: ``protocol.sse.split_stream``.)"""
        if not attempt.stream:
            if attempt.next_seq or not event.startswith(DATA) or "\n" in event or "\r" in event:
                return "a non-streamed response must be one data event"
            return None
        if attempt.receipt is not None and event != DONE:
            return "an event after the receipt"
        return None

    def _relayed_receipt(self, attempt: Attempt, event: str) -> bool:
        """A stream's receipt comment is relayed only if it holds for every event before it:
        the consumer keeps that line, and `darkbloom verify` reads it."""
        signed = read_receipt_comment(event)
        problem = "is malformed" if signed is None else self._receipt_problem(attempt, signed)
        if problem is not None:
            log.warning("provider %s streamed a receipt that %s on %s; dropped", attempt.provider.id,
                        problem, attempt.request_id)
            return False
        attempt.receipt = signed
        return True

    def _receipt_problem(self, attempt: Attempt, signed: SignedReceipt) -> str | None:
        assert attempt.transcript is not None
        receipt = signed.receipt
        return ("names another request" if receipt.request_id != attempt.request_id
                else "is not for the attested identity key"
                if receipt.provider_key != attempt.provider.identity_key
                else "does not cover the relayed bytes"
                if receipt.response_sha256 != attempt.transcript.hexdigest()
                else "has an invalid signature" if not signed.valid() else None)

    def _checked_receipt(self, attempt: Attempt, signed: SignedReceipt | None) -> SignedReceipt | None:
        """A receipt the consumer can rely on, or None: it must name this attempt, be signed by the
        provider's attested key and cover exactly the bytes relayed (standard mode). A stream's is
        the one it carried (checked when relayed), whatever inference_complete repeats."""
        if attempt.stream or attempt.transcript is None:
            return attempt.receipt
        if signed is None:
            return None
        problem = self._receipt_problem(attempt, signed)
        if problem is None:
            return signed
        log.warning("provider %s sent a receipt that %s on %s; dropped", attempt.provider.id,
                    problem, attempt.request_id)
        return None

    def rejected(self, attempt: Attempt, reason: str) -> None:
        """A completed answer the coordinator will not relay (a media body not in its format):
        the provider's failure, on its record."""
        log.warning("provider %s answered %s with %s; refused", attempt.provider.id,
                    attempt.request_id, reason)
        self._failed(attempt.provider, request_id=attempt.request_id)

    def _failed(self, provider: ProviderConn, timeout: bool = False, request_id: str = "") -> None:
        """The provider's failure, on its record: here, or for a provider held by another
        coordinator, at its home (the verdict travels with the cancel that follows)."""
        if provider.home is None:
            self.scheduler.reputations.failed(provider, timeout)
        elif request_id and isinstance(provider, Verdicts):
            provider.failed(request_id, timeout)

    def _succeeded(self, attempt: Attempt, completion_tokens: int) -> None:
        """Reputation: time to first chunk, and the decode speed of the rest of the answer. Only a
        stream shows them: a non-streamed answer arrives as one chunk at the end."""
        if attempt.provider.home is not None:
            return  # its home coordinator keeps its record (coordinator/cluster/link.py)
        first = attempt.first_chunk_at
        if first is None or not attempt.stream:
            self.scheduler.reputations.succeeded(attempt.provider, None)
            return
        self.scheduler.reputations.succeeded(
            attempt.provider, (first - attempt.sent_at) * 1000,
            # The provider's own count, bounded by what it was allowed and by what it streamed
            # (a chunk carries a few tokens at most): an inflated count buys no speed.
            min(completion_tokens, attempt.max_tokens_cap, 4 * attempt.next_seq),
            time.monotonic() - first)

    def _violation(self, attempt: Attempt, reason: str) -> None:
        log.warning("provider %s violated the protocol on %s: %s",
                    attempt.provider.id, attempt.request_id, reason)
        if not attempt.done:
            self._failed(attempt.provider, request_id=attempt.request_id)
        self.cancel(attempt)
        attempt.events.put_nowait(Event("error", error=ProviderFailed(INVALID_RESPONSE)))

    def _fail(self, attempt: Attempt, error: DarkbloomError) -> None:
        if attempt.done:
            return
        self._finish(attempt)
        attempt.events.put_nowait(Event("error", error=error))

    def _finish(self, attempt: Attempt) -> None:
        if attempt.done:
            return
        attempt.done = True
        self.pending.pop(attempt.request_id, None)
        self.scheduler.release(attempt.provider, attempt.demand)
