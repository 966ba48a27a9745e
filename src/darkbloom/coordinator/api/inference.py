"""The inference routes: read the HTTP request into a Call, run the pipeline, write the response.

Everything about a request's life (validation, money, routing, retries, settlement, records) is in
coordinator/pipeline.py; the bytes of a committed answer move in coordinator/relay.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from darkbloom.coordinator.api.auth import ApiKeyDep
from darkbloom.coordinator.api.bodies import read_body
from darkbloom.coordinator.api.errors import error_response
from darkbloom.coordinator.api.ratelimit import InferenceKeyDep, with_rate_headers
from darkbloom.coordinator.pipeline import Call, Opened, Pipeline
from darkbloom.coordinator.prepare import MAX_SEALED_PROVIDERS
from darkbloom.coordinator.relay import ClientGone, SSERelay, collect, until_disconnect
from darkbloom.coordinator.sender_sealing import is_sealed, open_envelope, seal_body
from darkbloom.coordinator.store.credentials import KeyIdentity
from darkbloom.coordinator.store.requests_log import find_receipt
from darkbloom.coordinator.trust.attestation import LEVELS, at_least
from darkbloom.crypto import Channel
from darkbloom.crypto.signing import key_id
from darkbloom.errors import DarkbloomError, InvalidRequest, NotFound, RequestTooLarge
from darkbloom.logcontext import sanitize
from darkbloom.protocol.blind import MEDIA_TYPE as PROVIDER_SEALED
from darkbloom.protocol.frames import Endpoint
from darkbloom.protocol.trust import SignedReceipt

router = APIRouter()
ROUTE_HEADER = "x-darkbloom-route"


def provider_headers(opened: Opened) -> dict[str, str]:
    attempt = opened.committed.attempt
    provider = attempt.provider
    headers = {
        "x-inference-job-id": attempt.request_id,
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


def strictest(header: str | None, key_setting: str | None) -> str | None:
    """The request's minimum trust: the header or the key's setting, whichever asks more."""
    if header is None or key_setting is None:
        return header or key_setting
    if header not in LEVELS:
        return header  # let validation name the bad header
    return header if at_least(header, key_setting) else key_setting


def is_provider_sealed(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower() == PROVIDER_SEALED


def route_self(request: Request) -> bool:
    """X-Darkbloom-Route: ``self`` (only the caller's own providers, free) or absent."""
    value = request.headers.get(ROUTE_HEADER)
    if value is None:
        return False
    if value.strip().lower() != "self":
        raise InvalidRequest("X-Darkbloom-Route must be 'self' when present", param=ROUTE_HEADER)
    return True


async def _read_call(request: Request, endpoint: Endpoint, identity: KeyIdentity
                     ) -> tuple[Call, Channel | None]:
    """The Call, opening a sender-sealed body (trust.md §6) and keeping its reply channel."""
    state = request.app.state
    limit = state.settings.max_body_bytes
    content_type = request.headers.get("content-type")
    reply_channel: Channel | None = None
    blind = is_provider_sealed(content_type)
    if blind:  # consumer-blind: the body stays sealed to providers end to end
        body = await read_body(request, state.pipeline.preparer.blind_entry_limit * MAX_SEALED_PROVIDERS
                               + 65536)
    elif is_sealed(content_type):
        envelope = await read_body(request, limit * 4 // 3 + 4096)  # base64 inflates the body
        # Off the loop: parsing and opening up to 5.6 MiB of envelope takes a while.
        body, reply_channel = await asyncio.to_thread(open_envelope, envelope, state.sender_keys)
        if len(body) > limit:
            raise RequestTooLarge(f"request body exceeds {limit} bytes")
    else:
        body = await read_body(request, limit)
    return make_call(request, endpoint, body, identity, blind=blind), reply_channel


def make_call(request: Request, endpoint: Endpoint, body: bytes, identity: KeyIdentity,
              **kind: Any) -> Call:
    """The Call for a body a route has read: the request's trust floor, route and id with it."""
    return Call(endpoint, body, identity,
                strictest(request.headers.get("x-min-trust-level"), identity.min_trust_level),
                route_self=route_self(request), x_request_id=request.scope["state"].get("request_id"),
                **kind)


async def serve(request: Request, endpoint: Endpoint, identity: KeyIdentity) -> Response:
    try:
        call, reply_channel = await _read_call(request, endpoint, identity)
    except DarkbloomError as exc:
        return error_response(exc, endpoint)
    return await answer(request, call, reply_channel)


async def answer(request: Request, call: Call, reply_channel: Channel | None = None) -> Response:
    """Run a Call through the pipeline and write its answer: a stream, or the whole body with its
    receipt in headers."""
    pipeline: Pipeline = request.app.state.pipeline
    endpoint = call.endpoint
    try:
        opened = await until_disconnect(request.receive, pipeline.open(call))
    except ClientGone:
        return Response(status_code=499)
    except DarkbloomError as exc:
        return error_response(exc, endpoint)
    headers = provider_headers(opened)
    if opened.prepared.request.stream:
        return SSERelay(pipeline, opened, headers, reply_channel)
    pipeline.begin(opened)
    try:
        body, finished = await collect(pipeline, opened)
    except DarkbloomError as exc:
        pipeline.close(opened, None, exc, 1)
        return error_response(exc, endpoint)
    except BaseException:
        pipeline.close(opened, None, None, 0)
        raise
    finally:
        pipeline.committer.dispatcher.cancel(opened.committed.attempt)  # no-op once complete
    opened.outcome.bytes_out = len(body)
    if call.blind:  # the receipt is inside the sealed body
        pipeline.close(opened, finished, None, 1)
        return Response(body, media_type=PROVIDER_SEALED, headers=headers)
    opened.outcome.keep_receipt(finished.receipt)
    pipeline.close(opened, finished, None, 1)
    headers.update(receipt_headers(finished.receipt))
    if reply_channel is not None:
        return Response(seal_body(reply_channel, request.app.state.sender_kid, body),
                        media_type="application/darkbloom-sealed+json", headers=headers)
    media = opened.prepared.media
    return Response(body, media_type=media.content_type if media else "application/json",
                    headers=headers)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, identity: InferenceKeyDep) -> Response:
    return with_rate_headers(request, await serve(request, "/v1/chat/completions", identity))


@router.post("/v1/completions")
async def completions(request: Request, identity: InferenceKeyDep) -> Response:
    return with_rate_headers(request, await serve(request, "/v1/completions", identity))


@router.post("/v1/responses")
async def responses(request: Request, identity: InferenceKeyDep) -> Response:
    return with_rate_headers(request, await serve(request, "/v1/responses", identity))


@router.post("/v1/messages")
async def messages(request: Request, identity: InferenceKeyDep) -> Response:
    """Anthropic Messages; `anthropic-version` and `anthropic-beta` are accepted and ignored."""
    return with_rate_headers(request, await serve(request, "/v1/messages", identity))


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
async def count_tokens(request: Request, identity: InferenceKeyDep) -> dict[str, int]:
    """Anthropic's token counter: no generation, no provider, nothing recorded. It tokenizes up to
    the body limit on the tokenizers inference uses, so it spends the inference allowance."""
    state = request.app.state
    raw = await read_body(request, state.settings.max_body_bytes)
    return {"input_tokens": await state.pipeline.preparer.count_tokens(raw)}
