"""The media requests' pure parts (media.md): field validation on both sides, pricing by audio
millisecond and by image, the bounded media usage, and receipts that keep text's bytes."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from darkbloom.coordinator.catalog_file import CatalogEntry
from darkbloom.coordinator.money import MIN_CHARGE_MICRO_USD, media_cost
from darkbloom.coordinator.usage import settle_media_usage
from darkbloom.errors import InvalidRequest, RequestTooLarge
from darkbloom.inference import media_request
from darkbloom.inference.media_request import (
    MAX_AUDIO_BYTES,
    image_request,
    parse_image_body,
    parse_transcription_body,
    transcription_from_form,
)
from darkbloom.protocol.frames import Usage
from darkbloom.protocol.trust import Receipt

AUDIO = b"RIFF....WAVEfmt "


def form(**fields: str | list[str]) -> dict[str, list[str]]:
    return {k: v if isinstance(v, list) else [v] for k, v in {"model": "whisper-1", **fields}.items()}


def test_form_defaults_and_round_trip_through_the_sealed_body() -> None:
    request = transcription_from_form(form(), "talk.MP3", AUDIO)
    assert (request.response_format, request.temperature, request.timestamp_granularities) == (
        "json", 0.0, ("segment",))
    assert request.audio_format == "mp3"
    again = parse_transcription_body(request.to_body())
    assert again == request
    full = transcription_from_form(form(language="en", prompt="Darkbloom", temperature="0.2",
                                        response_format="verbose_json",
                                        **{"timestamp_granularities[]": ["word", "segment"]}),
                                   "a/b/../c.wav", AUDIO)
    assert full.words and full.language == "en" and full.filename == "c.wav"
    assert parse_transcription_body(full.to_body()) == full
    odd = transcription_from_form(form(prompt='"}\\ \u2028 \x00 \U0001f600 </script>'), 'q"\\.wav',
                                  AUDIO)  # the body splices base64 into JSON: the rest must hold
    assert parse_transcription_body(odd.to_body()) == odd


@pytest.mark.parametrize(("fields", "filename", "audio", "param"), [
    ({}, "a.wav", None, "file"),
    ({}, "a.wav", b"", "file"),
    ({}, "a.aiff", AUDIO, "file"),
    ({"response_format": "xml"}, "a.wav", AUDIO, "response_format"),
    ({"temperature": "hot"}, "a.wav", AUDIO, "temperature"),
    ({"temperature": "1.5"}, "a.wav", AUDIO, "temperature"),
    ({"language": "english"}, "a.wav", AUDIO, "language"),
    ({"timestamp_granularities[]": ["word"]}, "a.wav", AUDIO, "timestamp_granularities[]"),
    ({"timestamp_granularities[]": ["char"], "response_format": "verbose_json"}, "a.wav", AUDIO,
     "timestamp_granularities[]"),
    ({"stream": "true"}, "a.wav", AUDIO, "stream"),
    ({"colour": "blue"}, "a.wav", AUDIO, "colour"),
    ({"model": ["a", "b"]}, "a.wav", AUDIO, "model"),
    ({"prompt": "half a pair \ud800"}, "a.wav", AUDIO, "prompt"),  # the provider's JSON refuses it
])
def test_form_errors_name_the_field(fields: dict[str, Any], filename: str, audio: bytes | None,
                                    param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        transcription_from_form(form(**fields), filename, audio)
    assert refused.value.param == param and refused.value.status_code == 400


def test_oversized_audio_is_a_413() -> None:
    with pytest.raises(RequestTooLarge) as refused:
        transcription_from_form(form(), "a.wav", bytes(MAX_AUDIO_BYTES + 1))
    assert refused.value.status_code == 413 and refused.value.param == "file"


def test_a_sealed_body_is_checked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    good = json.loads(transcription_from_form(form(), "a.wav", AUDIO).to_body())
    for change in ({"file": "!!"}, {"file": None}, {"filename": "../x.exe"}, {"temperature": 9},
                   {"timestamp_granularities": "word"}):
        with pytest.raises(InvalidRequest):
            parse_transcription_body(json.dumps({**good, **change}).encode())
    with pytest.raises(InvalidRequest):
        parse_transcription_body(b"[1]")
    monkeypatch.setattr(media_request, "MAX_AUDIO_BYTES", 1000)  # the same check, smaller
    with pytest.raises(RequestTooLarge):
        parse_transcription_body(json.dumps({**good, "file": "A" * (1000 * 4 // 3 + 8)}).encode())


def test_image_request_fields() -> None:
    request = image_request({"model": "m", "prompt": "a cat"})
    assert (request.width, request.height, request.n, request.steps, request.seed) == (
        1024, 1024, 1, None, None)
    full = image_request({"model": "m", "prompt": "p", "size": "64x96", "n": 4, "steps": 3,
                          "seed": 2**40, "negative_prompt": "q", "response_format": "b64_json",
                          "output_format": "png", "quality": "auto", "user": "u"})
    assert full.size == "64x96" and parse_image_body(full.to_body()) == full


@pytest.mark.parametrize(("change", "param"), [
    ({"prompt": ""}, "prompt"), ({"prompt": 5}, "prompt"), ({"prompt": "x" * 4001}, "prompt"),
    ({"size": "63x64"}, "size"), ({"size": "4096x64"}, "size"), ({"size": "64x64x64"}, "size"),
    ({"size": 64}, "size"), ({"n": 5}, "n"), ({"n": True}, "n"), ({"n": 1.0}, "n"),
    ({"steps": 151}, "steps"), ({"seed": -1}, "seed"), ({"seed": 2**64}, "seed"),
    ({"response_format": "url"}, "response_format"), ({"output_format": "jpeg"}, "output_format"),
    ({"negative_prompt": 1}, "negative_prompt"), ({"style_preset": "x"}, "style_preset"),
    ({"model": None}, "model"),
])
def test_image_errors_name_the_field(change: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        image_request({"model": "m", "prompt": "a cat", **change})
    assert refused.value.param == param


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.dictionaries(st.sampled_from(["model", "prompt", "size", "n", "steps", "seed",
                                        "negative_prompt", "response_format"]),
                       st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                                 st.text(max_size=12), st.lists(st.integers(), max_size=2))))
def test_any_image_body_is_a_request_or_a_400(body: dict[str, Any]) -> None:
    try:
        image_request(body)
    except InvalidRequest as refused:
        assert refused.status_code == 400 and refused.param


def test_media_cost_is_integer_and_rounds_up_once() -> None:
    assert media_cost(60_000, 1_000, 60_000) == 1_000  # a minute at $0.001 per minute
    assert media_cost(1, 1_000, 60_000) == MIN_CHARGE_MICRO_USD
    assert media_cost(6_000_001, 1_000, 60_000) == 100_001  # ceil, in integers
    assert media_cost(3, 1_500, 1) == 4_500 and media_cost(0, 1_500, 1) == 0
    with pytest.raises(ValueError):
        media_cost(-1, 1, 1)


def test_media_usage_never_exceeds_what_the_coordinator_measured() -> None:
    usage, problems = settle_media_usage(Usage(prompt_tokens=9, completion_tokens=9, audio_ms=5_000),
                                         "audio_ms", 4_000)
    assert usage.audio_ms == 4_000 and usage.prompt_tokens == 0 and problems
    usage, problems = settle_media_usage(Usage(prompt_tokens=0, completion_tokens=0, images=1),
                                         "images", 2)
    assert usage.images == 1 and not problems
    usage, problems = settle_media_usage(Usage(prompt_tokens=0, completion_tokens=0), "images", 2)
    assert usage.images == 2 and problems


def _receipt(**media: int) -> Receipt:
    return Receipt(request_id="r", model="m", endpoint="/v1/chat/completions", provider_key="k",
                   encryption_key="e", weight_hash=None, quantization=None,
                   request_sha256="0" * 64, response_sha256="1" * 64, prompt_tokens=1,
                   completion_tokens=2, created=3, **media)


def test_text_receipts_keep_their_bytes_and_media_ones_sign_their_units() -> None:
    text = _receipt().canonical()
    assert b"audio_ms" not in text and b"images" not in text and b"null,\"model\"" not in text
    audio = _receipt(audio_ms=4_321)
    assert json.loads(audio.canonical())["audio_ms"] == 4_321
    assert Receipt.model_validate_json(audio.canonical()) == audio
    assert base64.b64encode(audio.canonical()) != base64.b64encode(_receipt(audio_ms=4_322).canonical())


def test_catalog_file_media_entries() -> None:
    entry = CatalogEntry.model_validate({
        "id": "sd-tiny", "context_length": 77, "size_bytes": 10, "sha256": "a" * 64,
        "filename": "sd-tiny", "model_type": "image"})
    model = entry.model()
    assert (model.format, model.input_price, model.price_unit) == ("diffusers", 1_500, "image")
    assert not model.is_text
    with pytest.raises(ValueError):
        CatalogEntry.model_validate({"id": "t", "context_length": 1, "size_bytes": 1,
                                     "sha256": "a" * 64, "filename": "t.gguf"})  # no download_url
    with pytest.raises(ValueError):
        CatalogEntry.model_validate({"id": "t", "context_length": 1, "size_bytes": 1,
                                     "sha256": "a" * 64, "filename": "../x", "model_type": "image"})
