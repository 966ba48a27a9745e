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
from typing import Literal

from darkbloom.coordinator.routing.registry import ProviderConn
from darkbloom.coordinator.routing.scheduler import Scheduler
from darkbloom.crypto import KeyPair, SealingError, SessionChannel
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
from darkbloom.protocol.sse import Transcript
from darkbloom.protocol.trust import SignedReceipt

log = logging.getLogger(__name__)

# Bounds on what one attempt may make the coordinator hold (protocol.md §9): the whole response,
# what waits for a slow consumer, and how long the response may take from dispatch to the end.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
MAX_BUFFERED_BYTES = 16 * 1024 * 1024
RESPONSE_DEADLINE_S = 30 * 60.0


@dataclass(frozen=True, slots=True)
class Event:
    kind: Literal["accepted", "chunk", "complete", "error"]
    data: bytes = b""
    usage: Usage | None = None
    receipt: SignedReceipt | None = None
    status_code: int = 0
    message: str = ""
    code: str | None = None
    param: str | None = None
    sealed_message: str | None = None  # consumer-blind refusal: the words, sealed to the consumer
    chunks: int = 0  # on "complete": how many chunks the provider relayed


@dataclass(eq=False)
class Attempt:
    request_id: str
    provider: ProviderConn
    channel: SessionChannel | None  # None: sealed by the consumer, the coordinator cannot open it
    stream: bool = False
    deadline: float = 0.0  # time.monotonic() by which the response must have ended
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    next_seq: int = 0
    done: bool = False
    received_bytes: int = 0
    buffered_bytes: int = 0
    transcript: Transcript | None = None  # standard mode: to check the provider's receipt

    async def next_event(self, wait_s: float) -> Event:
        """The next event within ``wait_s`` and the attempt's overall deadline (TimeoutError)."""
        remaining = min(wait_s, self.deadline - time.monotonic())
        if remaining <= 0:
            raise TimeoutError
        async with asyncio.timeout(remaining):
            event = await self.events.get()
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

    def send(self, provider: ProviderConn, body: bytes | Sealed, *, model: str, endpoint: Endpoint,
             stream: bool, max_tokens_cap: int, x_request_id: str | None = None) -> Attempt:
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
        attempt = Attempt(request_id=request_id, provider=provider, channel=channel, stream=stream,
                          deadline=time.monotonic() + self.deadline_s,
                          transcript=Transcript(stream) if channel else None)
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
        )
        if not provider.send(frame):
            self._fail(attempt, 502, "provider disconnected")
        return attempt

    def cancel(self, attempt: Attempt) -> None:
        """Consumer gone or attempt timed out: forget it first, so late frames are dropped."""
        if attempt.done:
            return
        self._finish(attempt)
        attempt.provider.send(Cancel(request_id=attempt.request_id))

    def provider_lost(self, provider: ProviderConn) -> None:
        for attempt in [a for a in self.pending.values() if a.provider is provider]:
            self._fail(attempt, 502, "provider disconnected")

    # --- frames from providers ---------------------------------------------------------

    def handle(self, provider: ProviderConn,
               frame: InferenceAccepted | InferenceResponseChunk | InferenceComplete | InferenceError
               ) -> None:
        attempt = self.pending.get(frame.request_id)
        if attempt is None or attempt.provider is not provider:
            # Late frame of a cancelled/timed-out attempt, or another provider's id: drop it.
            log.debug("dropping %s for unknown request", frame.type)
            return
        if isinstance(frame, InferenceAccepted):
            attempt.events.put_nowait(Event("accepted"))
        elif isinstance(frame, InferenceResponseChunk):
            self._chunk(attempt, frame)
        elif isinstance(frame, InferenceComplete):
            self._finish(attempt)
            provider.served += 1
            attempt.events.put_nowait(Event("complete", usage=frame.usage, chunks=attempt.next_seq,
                                            receipt=self._checked_receipt(attempt, frame.receipt)))
        else:
            # Our own cancel() forgets the attempt first, so a 499 echo never gets here; an
            # unprompted one still ends the attempt and frees the slot.
            self._fail(attempt, frame.status_code, frame.error, frame.code, frame.param,
                       frame.sealed_message if attempt.channel is None else None)

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
        if attempt.received_bytes > self.max_response_bytes:
            self._violation(attempt, f"response larger than {self.max_response_bytes} bytes")
            return
        if attempt.channel is None:  # consumer-blind: relay ciphertext we cannot open
            plaintext = sealed_event(attempt.request_id, frame.seq, ciphertext)
        else:
            try:
                plaintext = attempt.channel.open("response", attempt.request_id, frame.seq, ciphertext)
            except SealingError as exc:
                self._violation(attempt, f"chunk could not be opened: {exc}")
                return
            if attempt.transcript is not None:
                attempt.transcript.add(plaintext.decode("utf-8", "replace"))
        attempt.next_seq += 1
        if attempt.buffered_bytes + len(plaintext) > self.max_buffered_bytes:
            log.warning("request %s: consumer too slow, cancelling", attempt.request_id)
            self.cancel(attempt)
            attempt.events.put_nowait(Event("error", status_code=502,
                                            message="consumer too slow; response cancelled"))
            return
        attempt.buffered_bytes += len(plaintext)
        attempt.events.put_nowait(Event("chunk", data=plaintext))

    def _checked_receipt(self, attempt: Attempt, signed: SignedReceipt | None) -> SignedReceipt | None:
        """A receipt the consumer can rely on, or None: it must name this attempt, be signed by the
        provider's attested key and cover exactly the bytes relayed (standard mode)."""
        if signed is None or attempt.transcript is None:
            return None
        receipt = signed.receipt
        problem = ("names another request" if receipt.request_id != attempt.request_id
                   else "is not for the attested identity key"
                   if receipt.provider_key != attempt.provider.identity_key
                   else "does not cover the relayed bytes"
                   if receipt.response_sha256 != attempt.transcript.hexdigest()
                   else "has an invalid signature" if not signed.valid() else None)
        if problem is None:
            return signed
        log.warning("provider %s sent a receipt that %s on %s; dropped", attempt.provider.id,
                    problem, attempt.request_id)
        return None

    def _violation(self, attempt: Attempt, reason: str) -> None:
        log.warning("provider %s violated the protocol on %s: %s",
                    attempt.provider.id, attempt.request_id, reason)
        self.cancel(attempt)
        attempt.events.put_nowait(Event("error", status_code=502, message="invalid provider response"))

    def _fail(self, attempt: Attempt, status: int, message: str, code: str | None = None,
              param: str | None = None, sealed_message: str | None = None) -> None:
        if attempt.done:
            return
        self._finish(attempt)
        attempt.events.put_nowait(Event("error", status_code=status, message=message, code=code,
                                        param=param, sealed_message=sealed_message))

    def _finish(self, attempt: Attempt) -> None:
        if attempt.done:
            return
        attempt.done = True
        self.pending.pop(attempt.request_id, None)
        self.scheduler.release(attempt.provider)
