"""Transcription and image generation end to end (media.md): a real coordinator and a real provider
process serving Whisper tiny.en on faster-whisper (from its wheel) and a tiny random-weight
Stable-Diffusion-shaped pipeline on diffusers. That pipeline is a TEST DOUBLE: built by
tests/media/tiny_pipeline.py, registered only in this module's catalog file, never advertised
anywhere else. Speech is made here with espeak-ng; every call is the stock OpenAI SDK's.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from darkbloom.coordinator.money import media_cost
from tests.e2e.harness import Coordinator, Provider
from tests.media.speech import encode, speak, word_error_rate
from tests.media.stack import WHISPER, media_stack
from tests.media.tiny_pipeline import TEST_DOUBLE_ID as TEST_DOUBLE

SENTENCE = "Open the window and let the fresh air in. The weather is warm and sunny today."
MAX_WER = 0.25  # Whisper tiny.en hears espeak-ng's en-us voice say this word for word here
PNG = b"\x89PNG\r\n\x1a\n"


class MediaStack:
    def __init__(self, coordinator: Coordinator, provider: Provider, speech: Path) -> None:
        self.coordinator, self.provider, self.speech = coordinator, provider, speech
        self.client = coordinator.client()

    def balance(self) -> int:
        answer = httpx.get(f"{self.coordinator.base_url}/v1/payments/balance", timeout=10,
                           headers={"Authorization": f"Bearer {self.coordinator.api_key}"})
        assert answer.status_code == 200, answer.text
        return int(answer.json()["balance_micro_usd"])

    def settled(self, before: int, timeout: float = 20) -> int:
        """The balance once a settlement moved it from ``before`` (settling runs after the
        response)."""
        deadline = time.monotonic() + timeout
        while (now := self.balance()) == before and time.monotonic() < deadline:
            time.sleep(0.1)
        return now

    def transcribe_raw(self, files: dict[str, Any], data: dict[str, Any] | None = None,
                       **headers: str) -> httpx.Response:
        return httpx.post(f"{self.coordinator.base_url}/v1/audio/transcriptions", files=files,
                          data={"model": WHISPER} if data is None else data, timeout=120,
                          headers={"Authorization": f"Bearer {self.coordinator.api_key}", **headers})

    def images_raw(self, body: dict[str, Any], timeout: float = 120) -> httpx.Response:
        return httpx.post(f"{self.coordinator.base_url}/v1/images/generations", json=body,
                          timeout=timeout,
                          headers={"Authorization": f"Bearer {self.coordinator.api_key}"})


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MediaStack]:
    work = tmp_path_factory.mktemp("media")
    # Short waits: a job longer than accepted_timeout_s lives only by the progress heartbeats
    # carry (once a second here).
    with media_stack(work, heartbeat_interval_s=1, accepted_timeout_s=5) as (coordinator, provider):
        yield MediaStack(coordinator, provider, speak(SENTENCE, work / "speech.wav"))


# --- models and routing ------------------------------------------------------------------------

def test_models_list_model_types(media: MediaStack) -> None:
    models = {m.id: m for m in media.client.models.list().data}
    meta = {name: (models[name].model_extra or {})["metadata"] for name in (WHISPER, TEST_DOUBLE)}
    assert meta[WHISPER]["model_type"] == "transcription"
    assert meta[WHISPER]["price_unit"] == "audio minute" and meta[WHISPER]["input_price"] == 1_000
    assert meta[TEST_DOUBLE]["model_type"] == "image"
    assert meta[TEST_DOUBLE]["price_unit"] == "image" and meta[TEST_DOUBLE]["input_price"] == 1_500


def test_wrong_model_type_is_a_400_naming_it(media: MediaStack) -> None:
    with pytest.raises(openai.BadRequestError) as chat:
        media.client.chat.completions.create(model=WHISPER, messages=[{"role": "user", "content": "hi"}])
    assert chat.value.body["code"] == "model_type_mismatch" and WHISPER in chat.value.body["message"]
    with pytest.raises(openai.BadRequestError) as image:
        media.client.images.generate(model=WHISPER, prompt="a cat", size="64x64")
    assert WHISPER in image.value.body["message"] and image.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as audio:
        media.client.audio.transcriptions.create(model="smollm2-135m", file=media.speech)
    assert "smollm2-135m" in audio.value.body["message"]


# --- transcription -----------------------------------------------------------------------------

def test_transcription_every_format(media: MediaStack) -> None:
    client = media.client
    plain = client.audio.transcriptions.create(model=WHISPER, file=media.speech)
    assert word_error_rate(SENTENCE, plain.text) < MAX_WER, plain.text
    extra = plain.model_extra or {}
    assert extra["language"] == "en" and 3 < extra["duration"] < 10
    assert extra["segments"] and {"start", "end", "text"} <= extra["segments"][0].keys()

    text = client.audio.transcriptions.create(model=WHISPER, file=media.speech, response_format="text")
    assert isinstance(text, str) and word_error_rate(SENTENCE, text) < MAX_WER, text

    srt = client.audio.transcriptions.create(model=WHISPER, file=media.speech, response_format="srt")
    assert isinstance(srt, str) and srt.startswith("1\n00:00:0") and " --> " in srt
    assert word_error_rate(SENTENCE, " ".join(line for line in srt.splitlines()
                                              if line and "-->" not in line and not line.isdigit())
                           ) < MAX_WER, srt

    vtt = client.audio.transcriptions.create(model=WHISPER, file=media.speech, response_format="vtt")
    assert isinstance(vtt, str) and vtt.startswith("WEBVTT") and "00:00:0" in vtt and "." in vtt

    verbose = client.audio.transcriptions.create(
        model=WHISPER, file=media.speech, response_format="verbose_json",
        timestamp_granularities=["word", "segment"])
    assert word_error_rate(SENTENCE, verbose.text) < MAX_WER
    assert verbose.language == "english" and verbose.segments and verbose.words
    starts = [w.start for w in verbose.words]
    assert starts == sorted(starts) and all(w.end >= w.start for w in verbose.words)
    assert word_error_rate(SENTENCE, " ".join(w.word for w in verbose.words)) < MAX_WER
    assert verbose.words[-1].end <= verbose.duration + 0.5


@pytest.mark.parametrize("fmt", ["mp3", "m4a", "flac", "ogg", "webm"])
def test_transcription_of_each_container(media: MediaStack, fmt: str, tmp_path: Path) -> None:
    audio = tmp_path / f"speech.{fmt}"
    audio.write_bytes(encode(media.speech, fmt))
    result = media.client.audio.transcriptions.create(model=WHISPER, file=audio, language="en")
    assert word_error_rate(SENTENCE, result.text) < MAX_WER, (fmt, result.text)


def test_transcription_is_charged_per_audio_second_with_a_receipt(media: MediaStack,
                                                                   tmp_path: Path) -> None:
    before = media.balance()
    audio = media.speech.read_bytes()
    answer = media.transcribe_raw({"file": ("speech.wav", audio, "audio/wav")})
    assert answer.status_code == 200, answer.text
    receipt = json.loads(base64.b64decode(answer.headers["x-darkbloom-receipt"]))
    duration_ms = round(answer.json()["duration"] * 1000)
    assert receipt["audio_ms"] == duration_ms and receipt["endpoint"] == "/v1/audio/transcriptions"
    assert "images" not in receipt and receipt["model"] == WHISPER
    after = media.settled(before)
    assert before - after == media_cost(duration_ms, 1_000, 60_000)

    saved, listing = tmp_path / "body.json", tmp_path / "listing.json"
    saved.write_bytes(answer.content)
    (tmp_path / "audio.wav").write_bytes(audio)
    listing.write_text(httpx.get(f"{media.coordinator.base_url}/v1/providers/attestation").text)

    def verify(request: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "darkbloom", "verify", str(saved), "--attestation", str(listing),
             "--receipt", answer.headers["x-darkbloom-receipt"],
             "--signature", answer.headers["x-se-signature"], "--request", str(request)],
            capture_output=True, text=True, timeout=60)

    ok = verify(tmp_path / "audio.wav")
    assert ok.returncode == 0 and "✗" not in ok.stdout, ok.stdout
    assert "s of audio the response states" in ok.stdout
    (tmp_path / "other.wav").write_bytes(audio[:-2] + b"\0\1")
    assert "✗ request hash" in verify(tmp_path / "other.wav").stdout
    saved.write_bytes(answer.content.replace(b'"duration":', b'"duration": ', 1))
    assert "✗ response hash" in verify(tmp_path / "audio.wav").stdout


def test_bad_audio_is_a_clear_4xx(media: MediaStack) -> None:
    def error(answer: httpx.Response, status: int) -> dict[str, Any]:
        assert answer.status_code == status, answer.text
        return dict(answer.json()["error"])

    wav = media.speech.read_bytes()
    corrupt = error(media.transcribe_raw({"file": ("a.wav", b"RIFF" + bytes(range(256)) * 40)}), 400)
    assert corrupt["param"] == "file" and corrupt["type"] == "invalid_request_error"
    assert error(media.transcribe_raw({"file": ("a.wav", b"")}), 400)["code"] == "empty_file"
    unsupported = error(media.transcribe_raw({"file": ("a.aiff", wav)}), 400)
    assert unsupported["code"] == "invalid_file_format" and "Supported formats" in unsupported["message"]
    missing = error(media.transcribe_raw({"other": ("x.txt", b"x")}, {"model": WHISPER}), 400)
    assert "file" in missing["message"]
    nothing = error(httpx.post(f"{media.coordinator.base_url}/v1/audio/transcriptions",
                               data={"model": WHISPER}, timeout=30,
                               headers={"Authorization": f"Bearer {media.coordinator.api_key}"}), 400)
    assert nothing["param"] == "file"
    big = error(media.transcribe_raw({"file": ("a.wav", wav + bytes(25 * 1024 * 1024))}), 413)
    assert big["type"] == "request_too_large" and big["param"] == "file"
    no_model = error(media.transcribe_raw({"file": ("a.wav", wav)}, {}), 400)
    assert no_model["param"] == "model"
    # The stock SDK sees the same errors as typed exceptions.
    with pytest.raises(openai.BadRequestError):
        media.client.audio.transcriptions.create(model=WHISPER, file=("x.wav", b"not audio at all"))
    with pytest.raises(openai.BadRequestError):
        media.client.audio.transcriptions.create(model=WHISPER, file=media.speech,
                                                 response_format="text",
                                                 timestamp_granularities=["word"])


# --- images ------------------------------------------------------------------------------------

def _png(b64: str | None) -> Image.Image:
    assert b64 is not None
    raw = base64.b64decode(b64)
    assert raw.startswith(PNG)
    image = Image.open(io.BytesIO(raw))
    image.load()
    return image


def test_images_generate_pngs_of_the_asked_size(media: MediaStack) -> None:
    before = media.balance()
    result = media.client.images.generate(
        model=TEST_DOUBLE, prompt="a lighthouse at dusk", size="64x96", n=2,
        extra_body={"seed": 7, "steps": 3, "negative_prompt": "fog"})
    assert len(result.data) == 2
    for item in result.data:
        assert _png(item.b64_json).size == (64, 96)
    assert media.settled(before) == before - 2 * 1_500  # n images reserve and charge n prices

    again = media.client.images.generate(model=TEST_DOUBLE, prompt="a lighthouse at dusk",
                                         size="64x96", n=2,
                                         extra_body={"seed": 7, "steps": 3, "negative_prompt": "fog"})
    assert [d.b64_json for d in again.data] == [d.b64_json for d in result.data]  # same seed
    other = media.client.images.generate(model=TEST_DOUBLE, prompt="a lighthouse at dusk",
                                         size="64x96", extra_body={"seed": 8, "steps": 3})
    assert other.data[0].b64_json != result.data[0].b64_json


def test_image_receipt_verifies_and_counts_the_images(media: MediaStack, tmp_path: Path) -> None:
    body = {"model": TEST_DOUBLE, "prompt": "two moons", "size": "64x64", "n": 2, "steps": 2}
    answer = media.images_raw(body)
    assert answer.status_code == 200, answer.text
    receipt = json.loads(base64.b64decode(answer.headers["x-darkbloom-receipt"]))
    assert receipt["images"] == 2 and "audio_ms" not in receipt
    saved, listing, sent = tmp_path / "body.json", tmp_path / "listing.json", tmp_path / "req.json"
    saved.write_bytes(answer.content)
    sent.write_bytes(answer.request.content)
    listing.write_text(httpx.get(f"{media.coordinator.base_url}/v1/providers/attestation").text)
    done = subprocess.run(
        [sys.executable, "-m", "darkbloom", "verify", str(saved), "--attestation", str(listing),
         "--receipt", answer.headers["x-darkbloom-receipt"], "--signature",
         answer.headers["x-se-signature"], "--request", str(sent)],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "✗" not in done.stdout, done.stdout
    assert "holds the 2 image(s)" in done.stdout


def test_bad_image_requests_are_clear_4xx(media: MediaStack) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"size": "123x45"}, "size"), ({"size": "huge"}, "size"), ({"size": "4096x4096"}, "size"),
        ({"n": 5}, "n"), ({"n": 0}, "n"), ({"prompt": ""}, "prompt"), ({"prompt": "   "}, "prompt"),
        ({"steps": 0}, "steps"), ({"response_format": "url"}, "response_format"),
        ({"seed": -1}, "seed"), ({"bogus": 1}, "bogus")]
    for change, param in cases:
        answer = media.images_raw({"model": TEST_DOUBLE, "prompt": "a cat", **change})
        assert answer.status_code == 400, (change, answer.text)
        assert answer.json()["error"]["param"] == param, (change, answer.text)
    no_prompt = media.images_raw({"model": TEST_DOUBLE})
    assert no_prompt.status_code == 400 and no_prompt.json()["error"]["param"] == "prompt"
    with pytest.raises(openai.BadRequestError):
        media.client.images.generate(model=TEST_DOUBLE, prompt="a cat", n=9, size="64x64")
    with pytest.raises(openai.BadRequestError):
        media.client.images.generate(model=TEST_DOUBLE, prompt="", size="64x64")


# --- long jobs -----------------------------------------------------------------------------------

def test_a_long_image_job_lives_on_its_progress(media: MediaStack) -> None:
    """The stack waits at most 5 s for an answer after acceptance; this job takes longer, and
    only the progress its heartbeats carry keeps it from being cut."""
    started = time.monotonic()
    answer = media.images_raw({"model": TEST_DOUBLE, "prompt": "slow", "size": "256x256", "n": 3,
                               "steps": 150, "seed": 1})
    took = time.monotonic() - started
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["data"]) == 3
    if took <= 5:  # the premise, not a timing assertion: the job must outlast the wait
        pytest.fail(f"the job took {took:.1f} s, not longer than the 5 s wait it must outlast; "
                    "make it longer")


def test_cancel_stops_an_image_between_steps_and_charges_nothing(media: MediaStack) -> None:
    before = media.balance()
    lines = len(media.provider.log_text().splitlines())
    gone = threading.Event()

    def hang_up() -> None:
        try:
            media.images_raw({"model": TEST_DOUBLE, "prompt": "never", "size": "256x256", "n": 4,
                              "steps": 150}, timeout=2)
        except httpx.TimeoutException:
            gone.set()

    worker = threading.Thread(target=hang_up)
    worker.start()
    worker.join()
    assert gone.is_set(), "the request finished before the client hung up; make it longer"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        new = media.provider.log_text().splitlines()[lines:]
        if any("cancelled" in line for line in new):
            break
        time.sleep(0.2)
    else:
        pytest.fail("the provider never stopped the job")
    # Free again at once (the job stopped between steps), and nothing was charged for it.
    quick = media.images_raw({"model": TEST_DOUBLE, "prompt": "after", "size": "64x64", "steps": 1})
    assert quick.status_code == 200, quick.text
    assert media.settled(before) == before - 1_500
