"""Serve one media inference_request (media.md): open the sealed upload or prompt, check it again,
run the blocking job in a worker thread, and send the whole answer body back in sealed pieces with
a receipt that carries what the request is priced by (audio milliseconds, images).

Progress (audio seconds done, denoising steps) is kept here for the heartbeat, which keeps the
coordinator's wait for the answer from timing out on a long job. Cancel is seen by the job between
segments or steps.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar, cast, runtime_checkable

from darkbloom.crypto import SessionChannel
from darkbloom.errors import DarkbloomError, InvalidRequest, to_frame
from darkbloom.inference.image_format import render_images
from darkbloom.inference.media_request import (
    MODEL_TYPE,
    PIECE_BYTES,
    TRANSCRIPTIONS,
    ImageRequest,
    TranscriptionRequest,
    parse_image_body,
    parse_transcription_body,
)
from darkbloom.inference.transcription_format import render
from darkbloom.protocol.frames import (
    InferenceAccepted,
    InferenceComplete,
    InferenceRequest,
    InferenceResponseChunk,
    JobProgress,
    Sealed,
    Usage,
)
from darkbloom.provider.engines.base import (
    Cancelled,
    LoadedImageModel,
    LoadedTranscriber,
    MediaModel,
)
from darkbloom.provider.receipts import ReceiptWriter

if TYPE_CHECKING:
    from darkbloom.provider.serving import RequestServer

log = logging.getLogger(__name__)
T = TypeVar("T")



@runtime_checkable
class MediaHost(Protocol):
    """An engine that runs media jobs (provider/models.py ModelHost)."""

    async def run_media(self, model: str, model_type: str, job: Callable[[MediaModel], T]) -> T: ...


class ProgressBoard:
    """Each running media job's latest progress, written from worker threads (one assignment of
    an immutable value per call) and read by the heartbeat. A job's reporter stops writing once
    the job is done: a worker thread that outlives its request cannot put it back."""

    def __init__(self) -> None:
        self._jobs: dict[str, JobProgress] = {}
        self._ended: set[str] = set()

    def reporter(self, request_id: str, unit: str) -> Callable[[float, float], None]:
        self._ended.discard(request_id)

        def report(done: float, total: float) -> None:
            if request_id in self._ended:
                return
            self._jobs[request_id] = JobProgress(
                request_id=request_id, unit="audio_seconds" if unit == "audio_ms" else "steps",
                done=min(max(done, 0.0), 1e9), total=min(max(total, 0.0), 1e9))
        return report

    def done(self, request_id: str) -> None:
        self._ended.add(request_id)
        self._jobs.pop(request_id, None)
        if len(self._ended) > 4096:  # bounded; ModelHost.run_media waits out a cancelled job's
            self._ended.clear()        # thread, so an ended id is rarely written to again

    def snapshot(self) -> list[JobProgress]:
        return list(self._jobs.values())[:256]


async def serve_media(server: RequestServer, frame: InferenceRequest, body: bytes,
                      channel: SessionChannel, cancel: threading.Event) -> None:
    """Answer a media request whose body has opened; refusals go back as error frames."""
    rid = frame.request_id
    engine = server.engine
    try:
        request = await asyncio.to_thread(_parse, frame, body)
        served = engine.model_info(request.model)
        if served is None or not isinstance(engine, MediaHost):
            raise DarkbloomError(f"model {request.model!r} is not served by this provider",
                                 status_code=404)
        if served.model_type != MODEL_TYPE[frame.endpoint]:
            raise InvalidRequest(f"model {request.model!r} is a {served.model_type} model")
    except DarkbloomError as refused:
        await server.refuse(rid, refused)
        return
    await server.send(InferenceAccepted(request_id=rid))
    # The request hash covers what the consumer sent and can hash again: the audio file itself
    # (the coordinator made the JSON around it), or the image request's JSON body as sent.
    receipts = ReceiptWriter(
        server.identity, request_id=rid, model=request.model, endpoint=frame.endpoint,
        encryption_key=server.keys.public_b64, weight_hash=served.weight_hash,
        quantization=served.quantization, stream=False,
        request_body=request.audio if isinstance(request, TranscriptionRequest) else body)
    del body
    unit = "audio_ms" if isinstance(request, TranscriptionRequest) else "images"
    progress = server.progress.reporter(rid, unit)
    try:
        if isinstance(request, TranscriptionRequest):
            transcript = await engine.run_media(
                request.model, served.model_type,
                lambda m: cast(LoadedTranscriber, m).transcribe(request, cancel, progress))
            answer, units = render(transcript, request)[0], transcript.duration_ms
        else:
            images = await engine.run_media(
                request.model, served.model_type,
                lambda m: cast(LoadedImageModel, m).generate_images(request, cancel, progress))
            answer, units = await asyncio.to_thread(render_images, images, request), len(images)
    except Cancelled:
        log.info("request %s cancelled", rid)
        await server.send(to_frame(DarkbloomError("cancelled", status_code=499), rid))
        return
    except InvalidRequest as exc:  # audio that does not decode: the consumer's error
        await server.refuse(rid, exc)
        return
    finally:
        server.progress.done(rid)
    for seq, start in enumerate(range(0, len(answer), PIECE_BYTES)):
        piece = answer[start:start + PIECE_BYTES]
        receipts.add_body(piece)
        sealed = Sealed(ephemeral_public_key=server.keys.public_b64,
                        ciphertext=channel.seal("response", rid, seq, piece))
        await server.send(InferenceResponseChunk(request_id=rid, seq=seq, encrypted_data=sealed))
    signed = receipts.sign(0, 0, **{unit: units})
    server.requests_served += 1
    await server.send(InferenceComplete(request_id=rid, finish_reason="stop", receipt=signed,
                                        usage=Usage(prompt_tokens=0, completion_tokens=0,
                                                    **{unit: units})))


def _parse(frame: InferenceRequest, body: bytes) -> TranscriptionRequest | ImageRequest:
    """The provider's own reading of the body (base64 audio decodes here, off the loop)."""
    if frame.sealed_by == "consumer":
        raise InvalidRequest("media requests are sealed by the coordinator, not the consumer")
    request = (parse_transcription_body(body) if frame.endpoint == TRANSCRIPTIONS
               else parse_image_body(body))
    if request.model != frame.model or frame.stream:
        raise InvalidRequest("sealed body does not match the request's model or stream fields")
    return request
