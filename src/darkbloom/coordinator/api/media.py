"""The media routes (media.md, api.md §4): read the upload or the JSON into a Call, then answer it
through the same pipeline as text: sealed to a provider, routed, charged, receipted.

Bodies sealed by the sender or the consumer are for text routes only: a media upload arrives in
the clear over TLS, like a text prompt in standard mode, and is sealed here to the provider.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from darkbloom.coordinator.api.bodies import read_body
from darkbloom.coordinator.api.errors import error_response
from darkbloom.coordinator.api.inference import answer, route_self, strictest
from darkbloom.coordinator.api.ratelimit import InferenceKeyDep, with_rate_headers
from darkbloom.coordinator.pipeline import Call
from darkbloom.coordinator.store.credentials import KeyIdentity
from darkbloom.errors import DarkbloomError, InvalidRequest
from darkbloom.inference.media_request import (
    IMAGES,
    MAX_AUDIO_BYTES,
    TRANSCRIPTIONS,
    ImageRequest,
    MediaEndpoint,
    TranscriptionRequest,
    image_request,
    transcription_from_form,
)
from darkbloom.inference.request import parse_json_body

router = APIRouter()

MAX_FORM_BYTES = MAX_AUDIO_BYTES + 1024 * 1024  # the file, and room for the form's other fields
MAX_FORM_FIELDS = 32
MAX_FIELD_BYTES = 64 * 1024
MAX_IMAGE_BODY_BYTES = 64 * 1024


async def _replay(body: bytes) -> AsyncGenerator[bytes, None]:
    yield body


async def read_transcription(request: Request) -> TranscriptionRequest:
    """The multipart form as a validated request. The whole body is read first, within a bound
    (413 past it), and parsed from memory: the parser never waits on the client."""
    content_type = request.headers.get("content-type", "")
    if content_type.partition(";")[0].strip().lower() != "multipart/form-data":
        raise InvalidRequest("file is required: send the audio as multipart/form-data with a "
                             "'file' field", param="file")
    body = await read_body(request, MAX_FORM_BYTES)
    parser = MultiPartParser(Headers({"content-type": content_type}), _replay(body),
                             max_files=1, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_FIELD_BYTES)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise InvalidRequest(f"the multipart form could not be read: {str(exc)[:200]}") from None
    fields: dict[str, list[str]] = {}
    upload: UploadFile | None = None
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key != "file":
                    raise InvalidRequest(f"unexpected file field {key[:64]!r}: send the audio as "
                                         "'file'", param=key[:64])
                upload = value
            else:
                fields.setdefault(key, []).append(value)
        audio = await upload.read() if upload is not None else None
        return transcription_from_form(fields, upload.filename if upload else None, audio)
    finally:
        await form.close()


async def read_image(request: Request) -> tuple[bytes, ImageRequest]:
    """The JSON body, validated; the bytes go to the provider as sent (the receipt's request
    hash is then the hash of what the consumer sent)."""
    raw = await read_body(request, MAX_IMAGE_BODY_BYTES)
    return raw, image_request(parse_json_body(raw))


async def _serve(request: Request, endpoint: MediaEndpoint, identity: KeyIdentity) -> Response:
    try:
        media: TranscriptionRequest | ImageRequest
        if endpoint == TRANSCRIPTIONS:
            media = await read_transcription(request)
            body = media.to_body()
        else:
            body, media = await read_image(request)
        call = Call(endpoint, body, identity,
                    strictest(request.headers.get("x-min-trust-level"), identity.min_trust_level),
                    route_self=route_self(request), x_request_id=request.scope["state"].get("request_id"),
                    media=media)
    except DarkbloomError as exc:
        return error_response(exc, endpoint)
    return await answer(request, call)


@router.post("/v1/audio/transcriptions")
async def transcriptions(request: Request, identity: InferenceKeyDep) -> Response:
    return with_rate_headers(request, await _serve(request, TRANSCRIPTIONS, identity))


@router.post("/v1/images/generations")
async def images(request: Request, identity: InferenceKeyDep) -> Response:
    return with_rate_headers(request, await _serve(request, IMAGES, identity))
