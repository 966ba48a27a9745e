"""In-flight attempts: seal a request to one provider, then turn its frames into events.

An attempt is one dispatch to one provider under a fresh request id and a fresh ephemeral key
(protocol.md §6, §9). Its slot is released exactly once, whichever way it ends: complete,
error, cancel, or the provider's socket dropping.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Literal

from darkbloom.coordinator.routing.registry import ProviderConn
from darkbloom.coordinator.routing.scheduler import Scheduler
from darkbloom.crypto import Channel, KeyPair, SealingError
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

log = logging.getLogger(__name__)

# A consumer this far behind is cancelled rather than buffered without bound (protocol.md §9).
MAX_BUFFERED_EVENTS = 4096


@dataclass(frozen=True, slots=True)
class Event:
    kind: Literal["accepted", "chunk", "complete", "error"]
    data: bytes = b""
    usage: Usage | None = None
    receipt: dict[str, object] | None = None
    status_code: int = 0
    message: str = ""
    code: str | None = None
    param: str | None = None


@dataclass(eq=False)
class Attempt:
    request_id: str
    provider: ProviderConn
    channel: Channel | None  # None: sealed by the consumer, the coordinator cannot open it
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    next_seq: int = 0
    done: bool = False


class Dispatcher:
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.pending: dict[str, Attempt] = {}

    def send(self, provider: ProviderConn, body: bytes | Sealed, *, model: str, endpoint: Endpoint,
             stream: bool, max_tokens_cap: int) -> Attempt:
        """Seal ``body`` to the provider's key (or forward the consumer's own envelope unchanged)
        and queue it; the caller already holds a slot."""
        channel: Channel | None = None
        if isinstance(body, Sealed):
            envelope = body
        else:
            channel = Channel(KeyPair.generate(), provider.public_key)
            envelope = Sealed(**channel.seal(body))
        attempt = Attempt(request_id=str(uuid.uuid4()), provider=provider, channel=channel)
        self.pending[attempt.request_id] = attempt
        frame = InferenceRequest(
            request_id=attempt.request_id,
            encrypted_body=envelope,
            model=model,
            endpoint=endpoint,
            stream=stream,
            max_tokens_cap=max_tokens_cap,
            sealed_by="coordinator" if channel else "consumer",
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
            attempt.events.put_nowait(Event("complete", usage=frame.usage, receipt=frame.receipt))
        else:
            # Our own cancel() forgets the attempt first, so a 499 echo never gets here; an
            # unprompted one still ends the attempt and frees the slot.
            self._fail(attempt, frame.status_code, frame.error, frame.code, frame.param)

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
        if attempt.channel is None:  # consumer-blind: relay ciphertext we cannot open
            plaintext = b"data: " + json.dumps(
                {"sealed": frame.encrypted_data.ciphertext, "seq": frame.seq}).encode()
        else:
            try:
                plaintext = attempt.channel.open(frame.encrypted_data.ciphertext)
            except SealingError as exc:
                self._violation(attempt, f"chunk could not be opened: {exc}")
                return
        attempt.next_seq += 1
        if attempt.events.qsize() >= MAX_BUFFERED_EVENTS:
            log.warning("request %s: consumer too slow, cancelling", attempt.request_id)
            self.cancel(attempt)
            attempt.events.put_nowait(Event("error", status_code=502,
                                            message="consumer too slow; response cancelled"))
            return
        attempt.events.put_nowait(Event("chunk", data=plaintext))

    def _violation(self, attempt: Attempt, reason: str) -> None:
        log.warning("provider %s violated the protocol on %s: %s",
                    attempt.provider.id, attempt.request_id, reason)
        self.cancel(attempt)
        attempt.events.put_nowait(Event("error", status_code=502, message="invalid provider response"))

    def _fail(self, attempt: Attempt, status: int, message: str, code: str | None = None,
              param: str | None = None) -> None:
        if attempt.done:
            return
        self._finish(attempt)
        attempt.events.put_nowait(Event("error", status_code=status, message=message, code=code,
                                        param=param))

    def _finish(self, attempt: Attempt) -> None:
        if attempt.done:
            return
        attempt.done = True
        self.pending.pop(attempt.request_id, None)
        self.scheduler.release(attempt.provider)
