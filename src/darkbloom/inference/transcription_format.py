"""A Transcript rendered as the body OpenAI's whisper-1 returns for each ``response_format``.

The provider renders (it holds the transcript) and the coordinator relays the bytes, so the shapes
live here, shared, pure and deterministic: the same transcript always gives the same bytes, which
the receipt's response hash depends on. Times are rounded to the millisecond and model statistics
to four decimals (whisper's own timestamps are 20 ms steps; more digits would only be float noise).
Non-finite statistics (a -inf log probability) become 0.0, as JSON has no infinity.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from darkbloom.inference.media_request import TranscriptionRequest

if TYPE_CHECKING:  # the coordinator renders nothing from provider code at run time
    from darkbloom.provider.engines.base import Segment, Transcript

JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain; charset=utf-8"

# Whisper's language names (openai/whisper tokenizer.py, MIT), which verbose_json reports in place of
# the ISO code, as OpenAI does ("english").
LANGUAGES: dict[str, str] = {
    "en": "english", "zh": "chinese", "de": "german", "es": "spanish", "ru": "russian",
    "ko": "korean", "fr": "french", "ja": "japanese", "pt": "portuguese", "tr": "turkish",
    "pl": "polish", "ca": "catalan", "nl": "dutch", "ar": "arabic", "sv": "swedish",
    "it": "italian", "id": "indonesian", "hi": "hindi", "fi": "finnish", "vi": "vietnamese",
    "he": "hebrew", "uk": "ukrainian", "el": "greek", "ms": "malay", "cs": "czech",
    "ro": "romanian", "da": "danish", "hu": "hungarian", "ta": "tamil", "no": "norwegian",
    "th": "thai", "ur": "urdu", "hr": "croatian", "bg": "bulgarian", "lt": "lithuanian",
    "la": "latin", "mi": "maori", "ml": "malayalam", "cy": "welsh", "sk": "slovak",
    "te": "telugu", "fa": "persian", "lv": "latvian", "bn": "bengali", "sr": "serbian",
    "az": "azerbaijani", "sl": "slovenian", "kn": "kannada", "et": "estonian", "mk": "macedonian",
    "br": "breton", "eu": "basque", "is": "icelandic", "hy": "armenian", "ne": "nepali",
    "mn": "mongolian", "bs": "bosnian", "kk": "kazakh", "sq": "albanian", "sw": "swahili",
    "gl": "galician", "mr": "marathi", "pa": "punjabi", "si": "sinhala", "km": "khmer",
    "sn": "shona", "yo": "yoruba", "so": "somali", "af": "afrikaans", "oc": "occitan",
    "ka": "georgian", "be": "belarusian", "tg": "tajik", "sd": "sindhi", "gu": "gujarati",
    "am": "amharic", "yi": "yiddish", "lo": "lao", "uz": "uzbek", "fo": "faroese",
    "ht": "haitian creole", "ps": "pashto", "tk": "turkmen", "nn": "nynorsk", "mt": "maltese",
    "sa": "sanskrit", "lb": "luxembourgish", "my": "myanmar", "bo": "tibetan", "tl": "tagalog",
    "mg": "malagasy", "as": "assamese", "tt": "tatar", "haw": "hawaiian", "ln": "lingala",
    "ha": "hausa", "ba": "bashkir", "jw": "javanese", "su": "sundanese", "yue": "cantonese",
}


def render(transcript: Transcript, request: TranscriptionRequest) -> tuple[bytes, str]:
    """The response body and its content type for ``request.response_format``."""
    fmt = request.response_format
    if fmt == "text":
        return (transcript.text.strip() + "\n").encode(), TEXT_TYPE
    if fmt == "srt":
        return srt(transcript).encode(), TEXT_TYPE
    if fmt == "vtt":
        return vtt(transcript).encode(), TEXT_TYPE
    body = verbose_json(transcript, request) if fmt == "verbose_json" else plain_json(transcript)
    return _dumps(body), JSON_TYPE


def usage(transcript: Transcript) -> dict[str, Any]:
    """OpenAI's duration usage: whole seconds, rounded up."""
    return {"type": "duration", "seconds": -(-transcript.duration_ms // 1000)}


def plain_json(transcript: Transcript) -> dict[str, Any]:
    """api.md §4's shape (empty ``segments`` and ``language`` left out) plus OpenAI's usage."""
    body: dict[str, Any] = {"text": transcript.text.strip()}
    if transcript.language:
        body["language"] = transcript.language
    body["duration"] = _seconds(transcript.duration_ms)
    segments = [{"start": _time(s.start), "end": _end(s), "text": s.text}
                for s in transcript.segments]
    if segments:
        body["segments"] = segments
    body["usage"] = usage(transcript)
    return body


def verbose_json(transcript: Transcript, request: TranscriptionRequest) -> dict[str, Any]:
    """OpenAI's verbose shape: ``segments`` when segment granularity was asked (the default),
    top-level ``words`` when word granularity was."""
    body: dict[str, Any] = {
        "task": "transcribe",
        "language": LANGUAGES.get(transcript.language, transcript.language),
        "duration": _seconds(transcript.duration_ms),
        "text": transcript.text.strip(),
    }
    if request.words:
        body["words"] = [{"word": w.word.strip(), "start": _time(w.start), "end": _time(w.end)}
                         for s in transcript.segments for w in s.words]
    if "segment" in request.timestamp_granularities:
        body["segments"] = [_verbose_segment(s) for s in transcript.segments]
    body["usage"] = usage(transcript)
    return body


def _verbose_segment(segment: Segment) -> dict[str, Any]:
    return {
        "id": segment.id,
        # Whisper's 30-second window offset in 10 ms frames; Segment carries it once base.py has it.
        "seek": segment.seek,
        "start": _time(segment.start),
        "end": _end(segment),
        "text": segment.text,
        "tokens": list(segment.tokens),
        "temperature": _stat(segment.temperature),
        "avg_logprob": _stat(segment.avg_logprob),
        "compression_ratio": _stat(segment.compression_ratio),
        "no_speech_prob": _stat(segment.no_speech_prob),
    }


def srt(transcript: Transcript) -> str:
    """SubRip: numbered cues, ``HH:MM:SS,mmm``; segments with no text are left out (an empty cue
    ends a SubRip file early in most players)."""
    cues: list[str] = []
    for segment in transcript.segments:
        text = _cue_text(segment.text)
        if text:
            cues.append(f"{len(cues) + 1}\n{_stamp(segment.start, ',')} --> "
                        f"{_stamp(max(segment.start, segment.end), ',')}\n{text}\n")
    return "\n".join(cues)


def vtt(transcript: Transcript) -> str:
    """WebVTT: the header, then cues with ``HH:MM:SS.mmm``; ``&``, ``<`` and ``>`` escaped, as
    cue text is markup."""
    cues = ["WEBVTT\n"]
    for segment in transcript.segments:
        text = _cue_text(segment.text)
        if text:
            text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            cues.append(f"{_stamp(segment.start, '.')} --> "
                        f"{_stamp(max(segment.start, segment.end), '.')}\n{text}\n")
    return "\n".join(cues) + ("" if len(cues) > 1 else "\n")


def _cue_text(text: str) -> str:
    """One cue's lines: blank lines dropped (a blank line ends a cue) and ``-->`` broken (it
    marks a timing line)."""
    lines = (line.strip().replace("-->", "->") for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def _stamp(seconds: float, comma: str) -> str:
    ms = _ms(seconds)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{comma}{ms:03d}"


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000)) if math.isfinite(seconds) else 0


def _time(seconds: float) -> float:
    return _ms(seconds) / 1000


def _end(segment: Segment) -> float:
    return _time(max(segment.start, segment.end))


def _seconds(ms: int) -> float:
    return ms / 1000


def _stat(value: float) -> float:
    return round(value, 4) if math.isfinite(value) else 0.0


def _dumps(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
