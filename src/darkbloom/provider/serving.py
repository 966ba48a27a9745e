"""Serve one inference_request: open the sealed body, check it, generate, seal every chunk back.

The response bytes are made here (protocol.md §9), in the OpenAI shape, so the coordinator only
relays them. Errors carry a status and never any prompt or completion text.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable

from pydantic import BaseModel

from darkbloom.crypto import Channel, KeyPair, SealingError, public_key_from_b64
from darkbloom.crypto.signing import IdentityKey
from darkbloom.errors import DarkbloomError, InvalidRequest
from darkbloom.inference.dialects import ENDPOINTS, parse_request
from darkbloom.inference.request import GenerationRequest, parse_json_body
from darkbloom.protocol.frames import (
    InferenceAccepted,
    InferenceComplete,
    InferenceError,
    InferenceRequest,
    InferenceResponseChunk,
    Sealed,
    Usage,
)
from darkbloom.provider.assembly import ResponseAssembler
from darkbloom.provider.engines.base import Engine, Finished, Started
from darkbloom.provider.receipts import DONE, ReceiptWriter, comment

log = logging.getLogger(__name__)

Send = Callable[[BaseModel], Awaitable[None]]
REPLAY_WINDOW_S = 15 * 60


class _Refused(Exception):
    def __init__(self, status: int, message: str, code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def _open(frame: InferenceRequest, keys: KeyPair) -> tuple[Channel, GenerationRequest, bytes]:
    try:
        channel = Channel(keys, public_key_from_b64(frame.encrypted_body.ephemeral_public_key))
        body = channel.open(frame.encrypted_body.ciphertext)
    except SealingError as exc:
        raise _Refused(400, f"request body could not be decrypted: {exc}") from None
    try:
        if frame.endpoint not in ENDPOINTS:
            raise _Refused(400, f"endpoint {frame.endpoint} is not served by this provider")
        request = parse_request(frame.endpoint, parse_json_body(body))
    except InvalidRequest as exc:
        raise _Refused(400, exc.message, exc.code, exc.param) from None
    if request.model != frame.model or request.stream != frame.stream:
        raise _Refused(400, "sealed body does not match the request's model or stream fields")
    return channel, request, body


class RequestServer:
    """Turns engine events into sealed, sequenced chunks on the socket."""

    def __init__(self, engine: Engine, keys: KeyPair, send: Send,
                 identity: IdentityKey | None = None) -> None:
        self.engine = engine
        self.keys = keys
        self.identity = identity or IdentityKey.generate()
        self._seen_consumer_keys: dict[str, float] = {}  # replay guard for consumer-sealed bodies
        self.send = send
        self.requests_served = 0
        self.tokens_generated = 0

    async def serve(self, frame: InferenceRequest, cancel: threading.Event) -> None:
        rid = frame.request_id
        try:
            if frame.sealed_by == "consumer":
                self._refuse_replay(frame.encrypted_body.ephemeral_public_key)
            channel, request, body = _open(frame, self.keys)
            if not self.engine.serves(request.model):
                raise _Refused(404, f"model {request.model!r} is not served by this provider")
        except _Refused as refused:
            log.info("refused request %s: %s", rid, refused.status)
            await self.send(InferenceError(request_id=rid, error=refused.message,
                                           status_code=refused.status, code=refused.code,
                                           param=refused.param))
            return
        await self.send(InferenceAccepted(request_id=rid))
        receipts = self._receipt_writer(frame, request, body)
        del body
        try:
            await self._generate(rid, channel, request, frame.max_tokens_cap, cancel, receipts,
                                 frame.sealed_by)
        except InvalidRequest as exc:
            await self.send(InferenceError(request_id=rid, error=exc.message, status_code=400,
                                           code=exc.code, param=exc.param))
        except DarkbloomError as exc:
            await self.send(InferenceError(request_id=rid, error=exc.message,
                                           status_code=exc.status_code))
        except Exception as exc:
            # Type only: an engine exception message could quote the prompt.
            log.error("engine failure on %s: %s", rid, type(exc).__name__)
            await self.send(InferenceError(request_id=rid, error="engine failure",
                                           status_code=500))

    def _refuse_replay(self, ephemeral_key: str) -> None:
        """trust.md §9: a consumer's ephemeral key is good for one request within 15 minutes."""
        now = time.monotonic()
        self._seen_consumer_keys = {k: t for k, t in self._seen_consumer_keys.items()
                                    if now - t < REPLAY_WINDOW_S}
        if ephemeral_key in self._seen_consumer_keys:
            raise _Refused(409, "replayed sealed request")
        self._seen_consumer_keys[ephemeral_key] = now

    def _receipt_writer(self, frame: InferenceRequest, request: GenerationRequest,
                        body: bytes) -> ReceiptWriter:
        served = next((m for m in self.engine.models() if self.engine.serves(m.id)), None)
        fields = {
            "request_id": frame.request_id, "model": request.model, "endpoint": frame.endpoint,
            "provider_key": self.identity.public_b64, "encryption_key": self.keys.public_b64,
            "weight_hash": served.weight_hash if served else None,
            "quantization": served.quantization if served else None,
        }
        return ReceiptWriter(self.identity, fields, body, request.stream)

    async def _generate(self, rid: str, channel: Channel, request: GenerationRequest, cap: int,
                        cancel: threading.Event, receipts: ReceiptWriter, sealed_by: str) -> None:
        seq = 0

        async def chunk(payloads: list[str], record: bool = True) -> None:
            nonlocal seq
            for payload in payloads:
                if record:
                    receipts.add(payload)
                sealed = Sealed(**channel.seal(payload.encode("utf-8")))
                await self.send(InferenceResponseChunk(request_id=rid, seq=seq, encrypted_data=sealed))
                seq += 1

        assembler = ResponseAssembler(request)
        async for event in self.engine.generate(request, cap, cancel):
            if isinstance(event, Finished):
                break
            if isinstance(event, Started):
                assembler.started(event.prompt_tokens)
            elif payloads := assembler.text(event.text, event.logprobs):
                await chunk(payloads)
        else:
            raise DarkbloomError("engine ended without finishing", status_code=500)
        assert isinstance(event, Finished)
        if event.finish_reason == "cancelled":
            log.info("request %s cancelled after %d token(s)", rid, event.completion_tokens)
            await self.send(InferenceError(request_id=rid, error="cancelled", status_code=499))
            return
        final = assembler.finish(event)
        for payload in final:
            receipts.add(payload)
        receipt, signature = receipts.sign(event.prompt_tokens, event.completion_tokens)
        blind = sealed_by == "consumer"
        if blind and not request.stream:
            # The coordinator must not see even the receipt's hashes (short answers are
            # guessable): it travels sealed to the consumer, after the body.
            final.append(comment(receipt, signature))
        elif request.stream:
            # The receipt comment covers every data event before it: it goes just ahead of
            # [DONE] (chat, completions) or last (Messages, Responses).
            at = final.index(DONE) if DONE in final else len(final)
            final.insert(at, comment(receipt, signature))
        await chunk(final, record=False)
        self.requests_served += 1
        self.tokens_generated += event.completion_tokens
        await self.send(InferenceComplete(
            request_id=rid, finish_reason=event.finish_reason,
            receipt=None if blind else {"receipt": receipt, "signature": signature},
            response_hash=None if blind else str(receipt["response_sha256"]),
            se_signature=None if blind else signature,
            usage=Usage(prompt_tokens=event.prompt_tokens,
                        completion_tokens=event.completion_tokens)))
