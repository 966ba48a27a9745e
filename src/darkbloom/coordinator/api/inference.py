"""POST /v1/chat/completions and /v1/completions: read, prepare, commit, then relay."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.types import Receive, Scope, Send

from darkbloom.coordinator.api.auth import ApiKeyDep
from darkbloom.coordinator.api.errors import error_response, stream_error_event
from darkbloom.coordinator.inference import MAX_SEALED_PROVIDERS, Committed, Finished, InferenceService
from darkbloom.coordinator.recorder import Recorder
from darkbloom.coordinator.sender_sealing import is_sealed, open_envelope, seal_body, seal_event
from darkbloom.coordinator.store.credentials import KeyIdentity, now
from darkbloom.coordinator.store.requests_log import RequestOutcome, find_receipt
from darkbloom.coordinator.trust.attestation import LEVELS, at_least
from darkbloom.coordinator.usage import completion_floor
from darkbloom.crypto import Channel
from darkbloom.crypto.signing import key_id
from darkbloom.errors import DarkbloomError, NotFound, ProviderFailed, RequestTooLarge
from darkbloom.logcontext import sanitize
from darkbloom.protocol.blind import MEDIA_TYPE as PROVIDER_SEALED
from darkbloom.protocol.blind import sealed_body
from darkbloom.protocol.frames import Endpoint
from darkbloom.protocol.sse import RECEIPT_COMMENT
from darkbloom.protocol.trust import SignedReceipt

router = APIRouter()
T = TypeVar("T")
RECEIPT_MARK = RECEIPT_COMMENT.encode()
_COMPLETE_GRACE_S = 5.0  # how long a finished stream waits for inference_complete after a hang-up


class ClientGone(Exception):
    """The consumer disconnected before its response was ready."""


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"request body exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"request body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """Run ``work``, cancelling it (and so its provider attempt) if the consumer hangs up."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise ClientGone
    return task.result()


def provider_headers(committed: Committed) -> dict[str, str]:
    provider = committed.attempt.provider
    headers = {
        "x-inference-job-id": committed.attempt.request_id,
        "x-provider-id": provider.id,
        "x-provider-attested": "true" if provider.trust_level != "none" else "false",
        "x-provider-trust-level": provider.trust_level,
        "x-provider-chip": provider.hardware.chip_name,
        "x-provider-model": provider.hardware.machine_model,
        "x-provider-encrypted": "true",
        "x-provider-secure-enclave": "false",
    }
    if provider.identity_key:
        headers["x-attestation-se-public-key"] = provider.identity_key
    if provider.serial:
        headers["x-provider-serial"] = headers["x-attestation-device-serial"] = provider.serial
    elif provider.identity_key:  # no readable hardware serial: the identity key's id stands in
        headers["x-provider-serial"] = key_id(provider.identity_key)
    return headers


def receipt_headers(signed: SignedReceipt | None) -> dict[str, str]:
    """trust.md §5: a non-streamed body's receipt travels in headers (the body is untouched)."""
    if signed is None:
        return {}
    return {
        "x-response-hash": signed.receipt.response_sha256,
        "x-se-signature": signed.signature,
        "x-darkbloom-receipt": base64.b64encode(signed.receipt.canonical()).decode("ascii"),
    }


def keep_receipt(outcome: RequestOutcome, signed: SignedReceipt | None) -> None:
    """Record the receipt for GET /v1/receipts/{id}: hashes and counts, never text."""
    if signed is not None:
        outcome.receipt = signed.receipt.canonical().decode("ascii")
        outcome.receipt_signature = signed.signature


def _elapsed_ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)


class SSERelay(Response):
    """Relays a committed stream chunk by chunk and cancels the provider if the consumer leaves."""

    media_type = "text/event-stream"

    def __init__(self, service: InferenceService, committed: Committed, outcome: RequestOutcome,
                 recorder: Recorder, headers: dict[str, str], started: float,
                 reply_channel: Channel | None = None) -> None:
        self.reply_channel = reply_channel  # sender-sealed request: every event goes back sealed
        # No super().__init__: Response would add `content-length: 0` for the empty body.
        self.status_code = 200
        self.background = None
        self.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in {
            **headers, "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-cache", "x-accel-buffering": "no"}.items()]
        self.service = service
        self.committed = committed
        self.outcome = outcome
        self.recorder = recorder
        self.started = started
        # Set once the receipt comment (the end of the content) has been relayed: a consumer
        # that hangs up after that has its whole response, so it is not a cancel.
        self.content_done = False
        self.relayed = 0  # events sent to the consumer, for the record of a stream cut short

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        pump = asyncio.ensure_future(self._pump(send))
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            await asyncio.wait({pump, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not pump.done() and self.content_done:
                await asyncio.wait({pump}, timeout=_COMPLETE_GRACE_S)
        finally:
            watcher.cancel()
            if not pump.done():
                pump.cancel()
                self.outcome.status, self.outcome.status_code = "cancelled", 499
            await asyncio.gather(pump, return_exceptions=True)
            if self.outcome.status != "completed":  # the consumer still got what was relayed
                self.outcome.completion_tokens = completion_floor(
                    self.relayed, self.committed.prepared.max_tokens_cap)
            self.outcome.duration_ms = _elapsed_ms(self.started)
            self.recorder.submit(self.outcome)

    def _event(self, payload: bytes) -> bytes:
        if self.reply_channel is not None:
            payload = seal_event(self.reply_channel, payload)
        return payload + b"\n\n"

    async def _pump(self, send: Send) -> None:
        outcome = self.outcome
        finished = False
        try:
            first = self._event(self.committed.first_chunk)
            outcome.bytes_out += len(first)
            await send({"type": "http.response.body", "body": first, "more_body": True})
            # Committed: from here a crash leaves an in_progress row (marked interrupted). Written
            # after the first chunk is out, so the database write is not in time to first token.
            self.recorder.begin(outcome)
            self.relayed += 1
            async for item in self.service.relay(self.committed):
                if isinstance(item, Finished):
                    finished = True
                    keep_receipt(outcome, item.receipt)
                    outcome.prompt_tokens = item.usage.prompt_tokens
                    outcome.completion_tokens = item.usage.completion_tokens
                    outcome.status, outcome.status_code = "completed", 200
                    break
                if item.startswith(RECEIPT_MARK):
                    self.content_done = True
                data = self._event(item)
                outcome.bytes_out += len(data)
                await send({"type": "http.response.body", "body": data, "more_body": True})
                self.relayed += 1
        except DarkbloomError as exc:
            # Status is already 200: report in-band, then end without [DONE] (api.md §2).
            outcome.status, outcome.status_code, outcome.error_code = "failed", exc.status_code, exc.code
            await send({"type": "http.response.body", "more_body": True,
                        "body": self._event(stream_error_event(exc, self.outcome.endpoint)[:-2])})
        finally:
            if not finished:
                self.service.dispatcher.cancel(self.committed.attempt)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _collect(service: InferenceService, committed: Committed) -> tuple[bytes, Finished]:
    if not committed.first_chunk.startswith(b"data: "):
        service.dispatcher.cancel(committed.attempt)
        raise ProviderFailed("invalid provider response")
    async for item in service.relay(committed):
        if isinstance(item, Finished):
            return committed.first_chunk[len(b"data: "):], item
    raise ProviderFailed("provider ended the response without completing it")


async def _collect_sealed(service: InferenceService, committed: Committed) -> tuple[bytes, Finished]:
    """Consumer-blind, not streamed: every sealed chunk in order, for the consumer to open."""
    chunks = [committed.first_chunk]
    async for item in service.relay(committed):
        if isinstance(item, Finished):
            sealed = [str(json.loads(c[len(b"data: "):])["sealed"]) for c in chunks]
            return sealed_body(committed.attempt.request_id, sealed), item
        chunks.append(item)
    raise ProviderFailed("provider ended the response without completing it")


def strictest(header: str | None, key_setting: str | None) -> str | None:
    """The request's minimum trust: the header or the key's setting, whichever asks more."""
    if header is None or key_setting is None:
        return header or key_setting
    if header not in LEVELS:
        return header  # let validation name the bad header
    return header if at_least(header, key_setting) else key_setting


def is_provider_sealed(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower() == PROVIDER_SEALED


async def _read_request(request: Request, state: Any) -> tuple[bytes, Channel | None]:
    """The plaintext body, opening a sender-sealed one (trust.md §6) and keeping its channel."""
    limit = state.settings.max_body_bytes
    if not is_sealed(request.headers.get("content-type")):
        return await read_body(request, limit), None
    envelope = await read_body(request, limit * 4 // 3 + 4096)  # base64 inflates the body
    # Off the loop: parsing and opening up to 5.6 MiB of envelope takes a while.
    raw, channel = await asyncio.to_thread(open_envelope, envelope, state.sender_keys)
    if len(raw) > limit:
        raise RequestTooLarge(f"request body exceeds {limit} bytes")
    return raw, channel


async def serve(request: Request, endpoint: Endpoint, identity: KeyIdentity) -> Response:
    state = request.app.state
    service: InferenceService = state.inference
    recorder: Recorder = state.recorder
    started = time.perf_counter()
    outcome = RequestOutcome(id=uuid.uuid4().hex, endpoint=endpoint, model="", stream=False,
                             created_at=now(), api_key_id=identity.key_id,
                             account_id=identity.account_id,
                             x_request_id=request.scope["state"].get("request_id"))
    relay_records = False  # a streaming relay records the outcome itself when the stream ends
    try:
        min_trust = strictest(request.headers.get("x-min-trust-level"), identity.min_trust_level)
        blind = is_provider_sealed(request.headers.get("content-type"))
        if blind:  # consumer-blind: the body stays sealed to providers end to end
            raw = await read_body(request, service.blind_entry_limit * MAX_SEALED_PROVIDERS + 65536)
            reply_channel = None
            # Off the loop: an envelope of up to ~16 MiB takes a while to parse and validate.
            prepared = await asyncio.to_thread(service.prepare_blind, endpoint, raw, min_trust)
        else:
            raw, reply_channel = await _read_request(request, state)
            prepared = await service.prepare(endpoint, raw, min_trust)
        outcome.model, outcome.stream = prepared.model.id, prepared.request.stream
        outcome.prompt_tokens = prepared.prompt_tokens or 0
        committed = await until_disconnect(request.receive, service.commit(prepared))
        outcome.ttft_ms = _elapsed_ms(started)
        outcome.provider_id = committed.attempt.provider.id
        outcome.attempts = committed.attempts
        headers = provider_headers(committed)
        if prepared.request.stream:
            relay_records = True  # the relay writes the in_progress row once the first chunk is out
            return SSERelay(service, committed, outcome, recorder, headers, started, reply_channel)
        recorder.begin(outcome)  # from here a crash leaves an in_progress row, marked interrupted
        collect = _collect_sealed if blind else _collect
        try:
            body, finished = await until_disconnect(request.receive, collect(service, committed))
        finally:
            service.dispatcher.cancel(committed.attempt)  # no-op once complete
        outcome.prompt_tokens = finished.usage.prompt_tokens
        outcome.completion_tokens = finished.usage.completion_tokens
        outcome.status, outcome.status_code, outcome.bytes_out = "completed", 200, len(body)
        if blind:  # the receipt is inside the sealed body
            return Response(body, media_type=PROVIDER_SEALED, headers=headers)
        keep_receipt(outcome, finished.receipt)
        if reply_channel is not None:
            return Response(seal_body(reply_channel, state.sender_kid, body),
                            media_type="application/darkbloom-sealed+json",
                            headers={**headers, **receipt_headers(finished.receipt)})
        return Response(body, media_type="application/json",
                        headers={**headers, **receipt_headers(finished.receipt)})
    except ClientGone:
        outcome.status, outcome.status_code = "cancelled", 499
        return Response(status_code=499)
    except DarkbloomError as exc:
        outcome.status_code, outcome.error_code = exc.status_code, exc.code
        return error_response(exc, endpoint)
    finally:
        if not relay_records:
            outcome.duration_ms = _elapsed_ms(started)
            recorder.submit(outcome)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, identity: ApiKeyDep) -> Response:
    return await serve(request, "/v1/chat/completions", identity)


@router.post("/v1/completions")
async def completions(request: Request, identity: ApiKeyDep) -> Response:
    return await serve(request, "/v1/completions", identity)


@router.post("/v1/responses")
async def responses(request: Request, identity: ApiKeyDep) -> Response:
    return await serve(request, "/v1/responses", identity)


@router.get("/v1/receipts/{request_id}")
async def get_receipt(request: Request, request_id: str, identity: ApiKeyDep) -> dict[str, object]:
    """trust.md §5: a receipt by the response's X-Request-ID, for the same account only. Receipts
    are stored only under sane ids (logcontext.sanitize), so any other id matches nothing."""
    found = None
    if sanitize(request_id) is not None:
        found = await find_receipt(request.app.state.sessions, request_id, identity.account_id)
    if found is None:
        raise NotFound("no receipt for that request id on this account")
    receipt, signature = found
    return {"receipt": json.loads(receipt), "signature": signature}


@router.post("/v1/messages/count_tokens")
async def count_tokens(request: Request, identity: ApiKeyDep) -> dict[str, int]:
    """Anthropic's token counter: no generation, no provider, nothing recorded."""
    state = request.app.state
    raw = await read_body(request, state.settings.max_body_bytes)
    return {"input_tokens": await state.inference.count_tokens(raw)}


@router.post("/v1/messages")
async def messages(request: Request, identity: ApiKeyDep) -> Response:
    """Anthropic Messages; `anthropic-version` and `anthropic-beta` are accepted and ignored."""
    return await serve(request, "/v1/messages", identity)
