"""The media routes (media.md, api.md §4): read the upload or the JSON into a Call, then answer it
through the same pipeline as text: sealed to a provider, routed, charged, receipted.

Bodies sealed by the sender or the consumer are for text routes only: a media upload arrives in
the clear over TLS, like a text prompt in standard mode, and is sealed here to the provider.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from python_multipart.multipart import parse_options_header
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from darkbloom.coordinator.api.bodies import body_chunks, read_body
from darkbloom.coordinator.api.errors import error_response
from darkbloom.coordinator.api.inference import answer, make_call
from darkbloom.coordinator.api.ratelimit import InferenceKeyDep, with_rate_headers
from darkbloom.coordinator.store.credentials import KeyIdentity
from darkbloom.errors import DarkbloomError, InvalidRequest, NoProviderAvailable, TooManyRequests
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
_NO_FILENAME = ("send the audio as a file part with a filename (curl: -F file=@audio.wav; the "
                "extension names the format)")


MAX_UPLOADS_PER_ACCOUNT = 8  # uploads one account may have arriving at once
UPLOAD_IDLE_S = 30.0  # an upload that sends nothing for this long is ended (408)
# What read uploads may hold at once, counted as each audio's size times the copies a request
# keeps while it is measured, sealed and sent (the audio, its base64 JSON, the sealed frame).
UPLOAD_MEMORY_BUDGET = 1024 * 1024 * 1024
COPIES_HELD = 5


class MediaGate:
    """Bounds what uploads can make the coordinator hold (media.md): a 25 MiB upload is ~125 MB
    while it is sealed and sent (its share is taken once it is read, before it is measured). An
    account may have a few arriving at once (429 past that), and read uploads are worked on
    within a memory budget in all (503 past it); a slow upload holds only its own account's place
    while it arrives."""

    def __init__(self, budget: int = UPLOAD_MEMORY_BUDGET) -> None:
        self.uploading: dict[str, int] = {}
        self.budget = budget
        self.held = 0

    def arriving(self, account_id: str) -> None:
        if self.uploading.get(account_id, 0) >= MAX_UPLOADS_PER_ACCOUNT:
            raise TooManyRequests(f"at most {MAX_UPLOADS_PER_ACCOUNT} uploads may arrive at once "
                                  "per account; wait for one to finish", code="too_many_uploads")
        self.uploading[account_id] = self.uploading.get(account_id, 0) + 1

    def arrived(self, account_id: str) -> None:
        left = self.uploading.pop(account_id, 1) - 1
        if left > 0:
            self.uploading[account_id] = left

    def take(self, audio_bytes: int) -> int:
        """Room for one read upload (its share of the budget, to give back), or 503."""
        share = audio_bytes * COPIES_HELD
        if self.held and self.held + share > self.budget:
            raise NoProviderAvailable("the coordinator is busy with other uploads; retry shortly",
                                      code="busy", headers={"Retry-After": "1"})
        self.held += share
        return share

    def give_back(self, share: int) -> None:
        self.held -= share


def _gate(request: Request) -> MediaGate:
    state = request.app.state
    if not hasattr(state, "media_gate"):
        state.media_gate = MediaGate()
    gate: MediaGate = state.media_gate
    return gate


class _FormParser(MultiPartParser):
    """Starlette's parser, refusing a field as it grows past MAX_FIELD_BYTES, so no field is held
    whole first, with an error that names the field (the parser's own part limit names none)."""

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._current_part
        if part.file is None and len(part.data) + end - start > MAX_FIELD_BYTES:
            name = part.field_name[:64]
            if name == "file":  # a part without a filename is a plain field to the parser
                raise InvalidRequest(_NO_FILENAME, param="file")
            raise InvalidRequest(f"form field {name!r} is over {MAX_FIELD_BYTES // 1024} KiB",
                                 param=name)
        super().on_part_data(data, start, end)


async def read_transcription(request: Request) -> TranscriptionRequest:
    """The multipart form as a validated request, parsed as it arrives within a bound (413 past
    it): the file part is spooled to disk past 1 MiB and other fields are refused past 64 KiB,
    so an upload is held in memory once, as the audio read back out of the form."""
    content_type = request.headers.get("content-type", "")
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        raise InvalidRequest("file is required: send the audio as multipart/form-data with a "
                             "'file' field", param="file")
    # The parser decodes fields in any codec Python has ("punycode" raised past its handler,
    # "unicode_escape" made lone surrogates): fields are UTF-8, as every SDK sends them.
    if options.get(b"charset", b"utf-8").lower() not in (b"utf-8", b"utf8", b"us-ascii"):
        raise InvalidRequest("the form's charset must be utf-8")
    parser = _FormParser(Headers({"content-type": content_type}),
                         body_chunks(request, MAX_FORM_BYTES, idle_s=UPLOAD_IDLE_S),
                         max_files=1, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_FIELD_BYTES)
    try:
        form = await parser.parse()
    except TimeoutError:
        raise InvalidRequest(f"the upload sent nothing for {UPLOAD_IDLE_S:g} s", status_code=408,
                             code="upload_timeout") from None
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
            elif key == "file":  # a part without a filename is a plain field to the parser
                raise InvalidRequest(_NO_FILENAME, param="file")
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
    gate = _gate(request)
    share = 0
    try:
        media: TranscriptionRequest | ImageRequest
        if endpoint == TRANSCRIPTIONS:
            gate.arriving(identity.account_id)
            try:
                media = await read_transcription(request)
            finally:
                gate.arrived(identity.account_id)
            share = gate.take(len(media.audio))
            body = b""  # built once the audio is measured (Preparer.prepare_media)
        else:
            body, media = await read_image(request)
        return await answer(request, make_call(request, endpoint, body, identity, media=media))
    except DarkbloomError as exc:
        return error_response(exc, endpoint)
    finally:
        gate.give_back(share)


@router.post("/v1/audio/transcriptions")
async def transcriptions(request: Request, identity: InferenceKeyDep) -> Response:
    return with_rate_headers(request, await _serve(request, TRANSCRIPTIONS, identity))


@router.post("/v1/images/generations")
async def images(request: Request, identity: InferenceKeyDep) -> Response:
    return with_rate_headers(request, await _serve(request, IMAGES, identity))
