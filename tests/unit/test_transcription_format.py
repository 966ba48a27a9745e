"""inference/transcription_format.py: each response_format in OpenAI whisper-1's exact shape."""

from __future__ import annotations

import json
from typing import Any

import pytest

from darkbloom.inference.media_request import RESPONSE_FORMATS, ResponseFormat, TranscriptionRequest
from darkbloom.inference.transcription_format import JSON_TYPE, TEXT_TYPE, render
from darkbloom.provider.engines.base import Segment, Transcript, Word

TRANSCRIPT = Transcript(
    text=" The beach was a popular spot. Waves crashed.",
    language="en",
    duration_ms=8470,
    segments=(
        Segment(id=0, start=0.0, end=3.32, text=" The beach was a popular spot.",
                tokens=(50364, 440, 7534), temperature=0.0, avg_logprob=-0.2860786020755768,
                compression_ratio=1.2363636493682861, no_speech_prob=0.00985979475080967,
                words=(Word(0.0, 0.24, " The", 0.9), Word(0.24, 0.6, " beach", 0.8),
                       Word(0.6, 3.32, " spot.", 0.7))),
        Segment(id=1, start=3.32, end=3661.5, text=" Waves crashed.", tokens=(1, 2),
                temperature=0.2, avg_logprob=float("-inf"), compression_ratio=0.9,
                no_speech_prob=0.5, words=(Word(3.32, 3661.5, " Waves crashed.", 0.5),)),
    ),
)


def _request(fmt: ResponseFormat = "json",
             granularities: tuple[str, ...] = ("segment",)) -> TranscriptionRequest:
    return TranscriptionRequest("whisper-1", b"x", "a.wav", response_format=fmt,
                                timestamp_granularities=granularities)


def _json(transcript: Transcript, request: TranscriptionRequest) -> dict[str, Any]:
    body, content_type = render(transcript, request)
    assert content_type == JSON_TYPE
    value = json.loads(body)
    assert isinstance(value, dict)
    return value


def test_json_is_api_md_shape_with_openai_usage() -> None:
    assert _json(TRANSCRIPT, _request()) == {
        "text": "The beach was a popular spot. Waves crashed.",
        "language": "en",
        "duration": 8.47,
        "segments": [{"start": 0.0, "end": 3.32, "text": " The beach was a popular spot."},
                     {"start": 3.32, "end": 3661.5, "text": " Waves crashed."}],
        "usage": {"type": "duration", "seconds": 9},
    }


def test_json_leaves_out_empty_segments_and_language() -> None:
    empty = Transcript(text="", language="", duration_ms=1000)
    assert _json(empty, _request()) == {"text": "", "duration": 1.0,
                                        "usage": {"type": "duration", "seconds": 1}}


def test_verbose_json_is_openais_shape() -> None:
    body = _json(TRANSCRIPT, _request("verbose_json"))
    assert list(body) == ["task", "language", "duration", "text", "segments", "usage"]
    assert body["task"] == "transcribe" and body["language"] == "english"
    assert body["duration"] == 8.47 and body["usage"] == {"type": "duration", "seconds": 9}
    assert body["segments"][0] == {
        "id": 0, "seek": 0, "start": 0.0, "end": 3.32, "text": " The beach was a popular spot.",
        "tokens": [50364, 440, 7534], "temperature": 0.0, "avg_logprob": -0.2861,
        "compression_ratio": 1.2364, "no_speech_prob": 0.0099,
    }
    assert body["segments"][1]["avg_logprob"] == 0.0  # -inf has no JSON spelling
    assert "words" not in body


def test_verbose_json_words_only_when_asked() -> None:
    both = _json(TRANSCRIPT, _request("verbose_json", ("segment", "word")))
    assert both["words"] == [{"word": "The", "start": 0.0, "end": 0.24},
                             {"word": "beach", "start": 0.24, "end": 0.6},
                             {"word": "spot.", "start": 0.6, "end": 3.32},
                             {"word": "Waves crashed.", "start": 3.32, "end": 3661.5}]
    assert len(both["segments"]) == 2
    words = _json(TRANSCRIPT, _request("verbose_json", ("word",)))
    assert "segments" not in words and len(words["words"]) == 4


def test_verbose_json_keeps_an_unknown_language_code() -> None:
    odd = Transcript(text="x", language="xx", duration_ms=1)
    body = _json(odd, _request("verbose_json"))
    assert body["language"] == "xx" and body["segments"] == []
    assert body["usage"]["seconds"] == 1  # any part of a second is charged as one


def test_text() -> None:
    assert render(TRANSCRIPT, _request("text")) == (
        b"The beach was a popular spot. Waves crashed.\n", TEXT_TYPE)
    assert render(Transcript("", "en", 0), _request("text")) == (b"\n", TEXT_TYPE)


def test_srt() -> None:
    body, content_type = render(TRANSCRIPT, _request("srt"))
    assert content_type == TEXT_TYPE
    assert body.decode() == ("1\n00:00:00,000 --> 00:00:03,320\nThe beach was a popular spot.\n\n"
                             "2\n00:00:03,320 --> 01:01:01,500\nWaves crashed.\n")


def test_vtt() -> None:
    body, content_type = render(TRANSCRIPT, _request("vtt"))
    assert content_type == TEXT_TYPE
    assert body.decode() == ("WEBVTT\n\n00:00:00.000 --> 00:00:03.320\nThe beach was a popular spot.\n"
                             "\n00:00:03.320 --> 01:01:01.500\nWaves crashed.\n")


def test_subtitles_escape_markup_and_cue_breakers() -> None:
    """A blank line ends a cue and ``-->`` is a timing line, in both formats; VTT cue text is
    markup, so ``<``, ``>`` and ``&`` are escaped there (SubRip has no escaping)."""
    hostile = Transcript("x", "en", 2000, (
        Segment(0, 0.0, 1.0, " a <b>&</b> --> b\n\n\nnext line "),
        Segment(1, 1.0, 1.5, "   "),  # no text: no cue, and the numbering goes on without it
        Segment(2, 1.5, 1.2, "end before start"),
    ))
    assert render(hostile, _request("srt"))[0].decode() == (
        "1\n00:00:00,000 --> 00:00:01,000\na <b>&</b> -> b\nnext line\n\n"
        "2\n00:00:01,500 --> 00:00:01,500\nend before start\n")
    assert render(hostile, _request("vtt"))[0].decode() == (
        "WEBVTT\n\n00:00:00.000 --> 00:00:01.000\na &lt;b&gt;&amp;&lt;/b&gt; -&gt; b\nnext line\n"
        "\n00:00:01.500 --> 00:00:01.500\nend before start\n")


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_empty_subtitles(fmt: ResponseFormat) -> None:
    body, _ = render(Transcript("", "en", 500), _request(fmt))
    assert body == (b"" if fmt == "srt" else b"WEBVTT\n\n")


def test_utf8_and_determinism() -> None:
    accented = Transcript(" Café «déjà» 日本", "fr", 1234,
                          (Segment(0, 0.0, 1.234, " Café «déjà» 日本"),))
    for fmt in RESPONSE_FORMATS:
        first = render(accented, _request(fmt))
        assert first == render(accented, _request(fmt))
        assert "Café «déjà» 日本" in first[0].decode("utf-8")
    assert _json(accented, _request("verbose_json"))["language"] == "french"


def test_timestamps_round_to_the_millisecond() -> None:
    noisy = Transcript("a", "en", 1001, (Segment(0, 0.30000000000000004, 1.0004999, " a"),))
    assert _json(noisy, _request())["segments"] == [{"start": 0.3, "end": 1.0, "text": " a"}]
    assert b"00:00:00,300 --> 00:00:01,000" in render(noisy, _request("srt"))[0]
