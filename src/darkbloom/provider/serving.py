"""Serve one inference_request: open the sealed body, check it, generate, seal every chunk back.

The response bytes are made here (protocol.md §9), in the OpenAI shape, so the coordinator only
relays them. Errors carry a status and never any prompt or completion text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from pydantic import BaseModel

from darkbloom.crypto import KeyPair, SealingError, SessionChannel, public_key_from_b64
from darkbloom.crypto.signing import IdentityKey
from darkbloom.errors import DarkbloomError, InvalidRequest, to_frame
from darkbloom.inference.dialects import ENDPOINTS, INLINE_BYTES, parse_request_off_loop
from darkbloom.inference.media_request import MEDIA_ENDPOINTS
from darkbloom.inference.request import GenerationRequest
from darkbloom.protocol.blind import CONSUMER_SEALED
from darkbloom.protocol.frames import (
    InferenceAccepted,
    InferenceComplete,
    InferenceRequest,
    InferenceResponseChunk,
    Sealed,
    Usage,
)
from darkbloom.protocol.sse import DONE, receipt_comment
from darkbloom.provider.assembly import ResponseAssembler
from darkbloom.provider.engines.base import Engine, Finished, Started
from darkbloom.provider.media_serving import ProgressBoard, serve_media
from darkbloom.provider.receipts import ReceiptWriter

log = logging.getLogger(__name__)

Send = Callable[[BaseModel], Awaitable[None]]
REPLAY_WINDOW_S = 15 * 60
MAX_REMEMBERED_KEYS = 100_000  # the replay guard's bound: ~10 MB at most
MAX_SEALED_WORDS = 4096  # characters of a refusal's message sealed to the consumer


def _refused(status: int, message: str, code: str | None = None,
             param: str | None = None) -> DarkbloomError:
    """A refusal: its code is the provider's (or none), never a default type name."""
    error = DarkbloomError(message, status_code=status, param=param)
    error.code = code
    return error


class _Sealable(Exception):
    """A refusal found after the body opened: in consumer-blind mode its words are sealed."""

    def __init__(self, channel: SessionChannel, refused: DarkbloomError) -> None:
        super().__init__(refused.message)
        self.channel, self.refused = channel, refused


def _open(frame: InferenceRequest, keys: KeyPair) -> tuple[SessionChannel, bytes]:
    """Decrypt the body (a large one in a worker thread: up to a frame's worth of ciphertext)."""
    try:
        channel = SessionChannel(keys, public_key_from_b64(frame.encrypted_body.ephemeral_public_key),
                                 "provider")
        sealer = CONSUMER_SEALED if frame.sealed_by == "consumer" else ""
        return channel, channel.open("request", sealer, 0, frame.encrypted_body.ciphertext)
    except SealingError as exc:
        raise _refused(400, f"request body could not be decrypted: {exc}") from None


async def _parse(frame: InferenceRequest, body: bytes, channel: SessionChannel) -> GenerationRequest:
    """Validate the opened body, off the event loop when it is large or carries schemas."""
    try:
        if frame.endpoint not in ENDPOINTS:
            raise _refused(400, f"endpoint {frame.endpoint} is not served by this provider")
        request = await parse_request_off_loop(frame.endpoint, body)
    except InvalidRequest as exc:
        raise _Sealable(channel, _refused(400, exc.message, exc.code, exc.param)) from None
    if request.model != frame.model or request.stream != frame.stream:
        raise _Sealable(channel, _refused(
            400, "sealed body does not match the request's model or stream fields"))
    return request


class ReplayGuard:
    """trust.md §9: a consumer's ephemeral key is good for one request within 15 minutes.

    Bounded: keys are remembered in arrival order and forgotten after the window; only keys
    whose envelope opened are remembered (whether or not its body is then refused), so garbage
    cannot fill it. When it is full of live keys, new blind requests are refused (503) rather
    than forgetting a key early. Keys are remembered as text: ``public_key_from_b64`` admits one
    spelling per key, so a respelled key is no way around it.
    """

    def __init__(self, window_s: float = REPLAY_WINDOW_S, limit: int = MAX_REMEMBERED_KEYS) -> None:
        self._window, self._limit = window_s, limit
        self._seen: OrderedDict[str, float] = OrderedDict()

    def admit(self, key: str) -> None:
        now = time.monotonic()
        while self._seen and now - next(iter(self._seen.values())) >= self._window:
            self._seen.popitem(last=False)
        if key in self._seen:
            raise _refused(409, "replayed sealed request", code="replayed_request")
        if len(self._seen) >= self._limit:
            raise _refused(503, "too many recent sealed requests; retry shortly", code="busy")
        self._seen[key] = now


class RequestServer:
    """Turns engine events into sealed, sequenced chunks on the socket."""

    def __init__(self, engine: Engine, keys: KeyPair, send: Send,
                 identity: IdentityKey | None = None) -> None:
        self.engine = engine
        self.keys = keys
        self.identity = identity or IdentityKey.generate()
        self.replays = ReplayGuard()
        self.progress = ProgressBoard()  # running media jobs, for the heartbeat
        self.send = send
        self.requests_served = 0
        self.tokens_generated = 0

    async def serve(self, frame: InferenceRequest, cancel: threading.Event) -> None:
        """Answer the request whatever happens: an exception escaping here would leave the
        coordinator waiting for a reply that never comes."""
        try:
            await self._serve(frame, cancel)
        except Exception as exc:
            log.error("failure serving %s: %s", frame.request_id, type(exc).__name__)
            await self.send(to_frame(DarkbloomError("provider failure"), frame.request_id))

    async def _serve(self, frame: InferenceRequest, cancel: threading.Event) -> None:
        rid = frame.request_id
        blind = frame.sealed_by == "consumer"
        try:
            if len(frame.encrypted_body.ciphertext) > INLINE_BYTES:
                channel, body = await asyncio.to_thread(_open, frame, self.keys)
            else:
                channel, body = _open(frame, self.keys)
            if blind:  # remembered once it opens, whatever becomes of it; checked before parsing
                self.replays.admit(frame.encrypted_body.ephemeral_public_key)  # canonical: one spelling
            if frame.endpoint in MEDIA_ENDPOINTS:
                await serve_media(self, frame, body, channel, cancel)
                return
            request = await _parse(frame, body, channel)
            if not self.engine.serves(request.model):
                raise _refused(404, f"model {request.model!r} is not served by this provider")
        except _Sealable as sealable:
            await self._refuse(rid, sealable.refused, sealable.channel if blind else None)
            return
        except DarkbloomError as refused:
            await self._refuse(rid, refused, None)
            return
        await self.send(InferenceAccepted(request_id=rid))
        served = self.engine.model_info(request.model)
        receipts = ReceiptWriter(
            self.identity, request_id=rid, model=request.model, endpoint=frame.endpoint,
            encryption_key=self.keys.public_b64, weight_hash=served.weight_hash if served else None,
            quantization=served.quantization if served else None, request_body=body,
            stream=request.stream)
        del body
        sealer = channel if blind else None
        try:
            # Consumer-blind: the coordinator must not choose whose cache a request may read (it
            # could time its own probes against a blind consumer's prefix), so nothing is reused.
            await self._generate(rid, channel, request, frame.max_tokens_cap, cancel, receipts, blind,
                                 None if blind else frame.cache_scope)
        except InvalidRequest as exc:
            await self._refuse(rid, exc, sealer)
        except DarkbloomError as exc:
            await self._refuse(rid, _refused(exc.status_code, exc.message), sealer)
        except Exception as exc:
            # Type only: an engine exception message could quote the prompt.
            log.error("engine failure on %s: %s", rid, type(exc).__name__)
            await self.send(to_frame(DarkbloomError("engine failure"), rid))

    async def refuse(self, rid: str, refused: DarkbloomError) -> None:
        """Report a refusal of a request the coordinator sealed (its words travel as they are)."""
        await self._refuse(rid, _refused(refused.status_code, refused.message, refused.code,
                                         refused.param), None)

    async def _refuse(self, rid: str, refused: DarkbloomError, blind: SessionChannel | None) -> None:
        """Report a refusal. In consumer-blind mode only status and code travel in the clear: the
        message and param may quote the request, so they are sealed to the consumer."""
        log.info("refused request %s: %s %s", rid, refused.status_code, refused.code or "")
        if blind is None:
            await self.send(to_frame(refused, rid))
            return
        # Bounded: the words may quote the request, and the sealed message must fit its frame.
        words = json.dumps({"message": refused.message[:MAX_SEALED_WORDS],
                            "param": refused.param[:256] if refused.param else None}).encode()
        await self.send(to_frame(refused, rid, sealed_message=blind.seal("error", rid, 0, words)))

    async def _generate(self, rid: str, channel: SessionChannel, request: GenerationRequest, cap: int,
                        cancel: threading.Event, receipts: ReceiptWriter, blind: bool,
                        cache_scope: str | None) -> None:
        seq = 0

        async def chunk(payloads: list[str], record: bool = True) -> None:
            nonlocal seq
            for payload in payloads:
                if record:
                    receipts.add(payload)
                sealed = Sealed(ephemeral_public_key=self.keys.public_b64,
                                ciphertext=channel.seal("response", rid, seq, payload.encode("utf-8")))
                await self.send(InferenceResponseChunk(request_id=rid, seq=seq, encrypted_data=sealed))
                seq += 1

        assembler = ResponseAssembler(request)
        async for event in self.engine.generate(request, cap, cancel, cache_scope):
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
            await self.send(to_frame(DarkbloomError("cancelled", status_code=499), rid))
            return
        final = assembler.finish(event)
        for payload in final:
            receipts.add(payload)
        signed = receipts.sign(event.prompt_tokens, event.completion_tokens)
        if blind and not request.stream:
            # The coordinator must not see even the receipt's hashes (short answers are
            # guessable): it travels sealed to the consumer, after the body.
            final.append(receipt_comment(signed))
        elif request.stream:
            # The receipt comment covers every data event before it: it goes just ahead of
            # [DONE] (chat, completions) or last (Messages, Responses).
            at = final.index(DONE) if DONE in final else len(final)
            final.insert(at, receipt_comment(signed))
        await chunk(final, record=False)
        self.requests_served += 1
        self.tokens_generated += event.completion_tokens
        await self.send(InferenceComplete(
            request_id=rid, finish_reason=event.finish_reason, receipt=None if blind else signed,
            usage=Usage(prompt_tokens=event.prompt_tokens,
                        completion_tokens=event.completion_tokens)))
