"""Audio transcription and image generation requests (media.md, api.md §4): read once by the
coordinator (from the multipart form or the JSON body) and again by the provider from the sealed
JSON, so neither trusts the other's reading. Every failure is an InvalidRequest naming its field.

The sealed body is JSON either way; the audio travels in it as base64 (media.md).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from darkbloom.errors import InvalidRequest, RequestTooLarge
from darkbloom.inference.fields import is_int, is_number, model_name
from darkbloom.inference.request import parse_json_body

PIECE_BYTES = 1024 * 1024  # an answer's body travels in sealed pieces of at most this
MediaEndpoint = Literal["/v1/audio/transcriptions", "/v1/images/generations"]
TRANSCRIPTIONS: MediaEndpoint = "/v1/audio/transcriptions"
IMAGES: MediaEndpoint = "/v1/images/generations"
MEDIA_ENDPOINTS: frozenset[str] = frozenset({TRANSCRIPTIONS, IMAGES})
# The model type (catalog, /v1/models) each endpoint serves.
MODEL_TYPE: dict[str, str] = {TRANSCRIPTIONS: "transcription", IMAGES: "image"}

# --- transcription -------------------------------------------------------------------------------

MAX_AUDIO_BYTES = 25 * 1024 * 1024  # OpenAI's 25 MB upload limit (413 above)
MAX_AUDIO_SECONDS = 2 * 60 * 60  # longer audio is refused before any work (docs/media.md)
# The containers OpenAI lists; the file's extension names the format (media.md: default wav).
AUDIO_FORMATS = ("flac", "m4a", "mp3", "mp4", "mpeg", "mpga", "oga", "ogg", "opus", "wav", "webm")
ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]
RESPONSE_FORMATS: tuple[ResponseFormat, ...] = ("json", "text", "srt", "vtt", "verbose_json")
# What OpenAI answers each format with.
TRANSCRIPTION_CONTENT_TYPES: dict[str, str] = {
    "json": "application/json", "verbose_json": "application/json",
    "text": "text/plain; charset=utf-8", "srt": "text/plain; charset=utf-8",
    "vtt": "text/plain; charset=utf-8"}
GRANULARITIES = ("segment", "word")
MAX_PROMPT_CHARS = 4096
MAX_FILENAME_CHARS = 255
# Form fields a transcription accepts; others are refused by name (as OpenAI does).
_FORM_FIELDS = frozenset({"model", "language", "prompt", "response_format", "temperature",
                          "timestamp_granularities[]", "timestamp_granularities", "stream",
                          "include[]", "chunking_strategy", "user"})
_LANGUAGE = re.compile(r"^[a-z]{2,3}$")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True, slots=True)
class TranscriptionRequest:
    model: str
    audio: bytes
    filename: str
    language: str | None = None
    prompt: str | None = None
    response_format: ResponseFormat = "json"
    temperature: float = 0.0
    timestamp_granularities: tuple[str, ...] = ("segment",)

    @property
    def audio_format(self) -> str:
        """The container the file's extension names (validated: one of AUDIO_FORMATS)."""
        return audio_format(self.filename)

    @property
    def words(self) -> bool:
        return "word" in self.timestamp_granularities

    def to_body(self) -> bytes:
        """The JSON sealed to the provider. The audio's base64 is spliced in as bytes (its
        alphabet needs no JSON escaping): a 25 MiB upload costs one 33 MiB copy here, not the four
        a str, its JSON text and their encoding would."""
        rest = json.dumps({
            "model": self.model, "filename": self.filename, "language": self.language,
            "prompt": self.prompt, "response_format": self.response_format,
            "temperature": self.temperature,
            "timestamp_granularities": list(self.timestamp_granularities),
        }, separators=(",", ":")).encode()
        return b"".join((b'{"file":"', base64.b64encode(self.audio), b'",', rest[1:]))


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def audio_format(filename: str) -> str:
    """The format an upload's name says, ``wav`` when it has no extension; 400 for any other."""
    name = filename.rsplit("/", 1)[-1]
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else "wav"
    if ext not in AUDIO_FORMATS:
        raise InvalidRequest(f"Invalid file format. Supported formats: {list(AUDIO_FORMATS)}",
                             param="file", code="invalid_file_format")
    return ext


def _one(fields: Mapping[str, Sequence[str]], key: str) -> str | None:
    values = fields.get(key)
    if not values:
        return None
    if len(values) > 1:
        raise InvalidRequest(f"{key} was given more than once", param=key)
    return values[0]


def transcription_from_form(fields: Mapping[str, Sequence[str]], filename: str | None,
                            audio: bytes | None) -> TranscriptionRequest:
    """The request a multipart form makes; ``audio`` None: no ``file`` part was sent."""
    for key in fields:
        if key not in _FORM_FIELDS:
            raise InvalidRequest(f"Unrecognized request argument supplied: {key[:64]}",
                                 param=key[:64], code="unknown_parameter")
    if audio is None:
        raise InvalidRequest("file is required: send the audio as the multipart field 'file'",
                             param="file")
    stream = (_one(fields, "stream") or "false").strip().lower()
    if stream not in ("false", "0", ""):
        raise InvalidRequest("stream is not supported for this model; remove it", param="stream",
                             code="unsupported_parameter")
    temperature: Any = _one(fields, "temperature")
    if temperature is not None:
        try:
            temperature = float(temperature)
        except ValueError:
            raise InvalidRequest("temperature must be a number", param="temperature") from None
    granularities = [*fields.get("timestamp_granularities[]", ()),
                     *fields.get("timestamp_granularities", ())]
    return transcription_request({
        "model": _one(fields, "model"), "language": _one(fields, "language"),
        "prompt": _one(fields, "prompt"), "response_format": _one(fields, "response_format"),
        "temperature": temperature, "timestamp_granularities": granularities or None,
    }, filename or "audio.wav", audio)


def transcription_request(body: Mapping[str, Any], filename: Any, audio: bytes) -> TranscriptionRequest:
    """Validate every field (the form's, or the sealed body's on the provider)."""
    model = model_name(dict(body))
    if not isinstance(filename, str) or not filename or len(filename) > MAX_FILENAME_CHARS:
        raise InvalidRequest("file must have a name of 1 to 255 characters", param="file")
    audio_format(filename)
    if not audio:
        raise InvalidRequest("The audio file is empty", param="file", code="empty_file")
    if len(audio) > MAX_AUDIO_BYTES:
        raise RequestTooLarge(f"Maximum content size limit ({MAX_AUDIO_BYTES}) exceeded",
                              param="file")
    language = body.get("language")
    if language is not None and (not isinstance(language, str) or not _LANGUAGE.fullmatch(language)):
        raise InvalidRequest("language must be an ISO-639-1 code such as 'en'", param="language")
    prompt = body.get("prompt")
    if prompt is not None and (not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS):
        raise InvalidRequest(f"prompt must be a string of at most {MAX_PROMPT_CHARS} characters",
                             param="prompt")
    if prompt is not None and not _is_unicode(prompt):  # the provider's JSON parser refuses it
        raise InvalidRequest("prompt holds a lone UTF-16 surrogate; send valid Unicode text",
                             param="prompt")
    fmt = body.get("response_format") or "json"
    if fmt not in RESPONSE_FORMATS:
        raise InvalidRequest(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}",
                             param="response_format")
    temperature = body.get("temperature")
    if temperature is None:
        temperature = 0.0
    if not is_number(temperature) or not 0 <= temperature <= 1:
        raise InvalidRequest("temperature must be a number between 0 and 1", param="temperature")
    granularities = body.get("timestamp_granularities") or ["segment"]
    if not isinstance(granularities, list) or not 1 <= len(granularities) <= 2 \
            or any(g not in GRANULARITIES for g in granularities):
        raise InvalidRequest("timestamp_granularities must hold 'segment' and/or 'word'",
                             param="timestamp_granularities[]")
    if "word" in granularities and fmt != "verbose_json":
        raise InvalidRequest("timestamp_granularities requires response_format=verbose_json",
                             param="timestamp_granularities[]")
    safe_name = _SAFE_NAME.sub("_", filename.rsplit("/", 1)[-1])[:MAX_FILENAME_CHARS]
    return TranscriptionRequest(model, audio, safe_name, language, prompt, fmt, float(temperature),
                                tuple(dict.fromkeys(granularities)))


def parse_transcription_body(raw: bytes) -> TranscriptionRequest:
    """The provider's reading of the sealed JSON body."""
    body = parse_json_body(raw)
    audio_b64 = body.get("file")
    if not isinstance(audio_b64, str):
        raise InvalidRequest("file is required", param="file")
    if len(audio_b64) > MAX_AUDIO_BYTES * 4 // 3 + 4:
        raise RequestTooLarge(f"Maximum content size limit ({MAX_AUDIO_BYTES}) exceeded", param="file")
    try:
        audio = base64.b64decode(audio_b64, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("file is not base64", param="file") from None
    return transcription_request(body, body.get("filename"), audio)


# --- images --------------------------------------------------------------------------------------

MAX_IMAGES = 4
MAX_SIDE = 2048
MIN_SIDE = 64
MAX_STEPS = 150
MAX_IMAGE_PROMPT_CHARS = 4000
DEFAULT_SIZE = "1024x1024"
_SIZE = re.compile(r"^([0-9]{1,4})x([0-9]{1,4})$")
_IMAGE_FIELDS = frozenset({"model", "prompt", "negative_prompt", "n", "size", "steps", "seed",
                           "response_format", "output_format", "quality", "style", "user"})


@dataclass(frozen=True, slots=True)
class ImageRequest:
    model: str
    prompt: str
    width: int
    height: int
    n: int = 1
    negative_prompt: str | None = None
    steps: int | None = None  # None: the model's default
    seed: int | None = None  # None: a fresh random seed per request

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def sealed_answer_bytes(self) -> int:
        """The most an honest answer can be as sealed pieces: each PNG at worst its raw RGBA
        pixels, one filter byte per row and deflate's stored-block overhead, in base64 in the
        JSON; then each piece with its nonce and tag, in base64 again."""
        png = math.ceil((self.width * self.height * 4 + self.height) * 1.001) + 1024
        plain = self.n * (math.ceil(png / 3) * 4 + 64) + 4096
        pieces = math.ceil(plain / PIECE_BYTES)
        return math.ceil((plain + pieces * 40) / 3) * 4 + pieces * 4

    def to_body(self) -> bytes:
        return json.dumps({"model": self.model, "prompt": self.prompt, "size": self.size, "n": self.n,
                           "negative_prompt": self.negative_prompt, "steps": self.steps,
                           "seed": self.seed}, separators=(",", ":")).encode()


def image_size(value: Any) -> tuple[int, int]:
    if value is None or value == "auto":
        value = DEFAULT_SIZE
    match = _SIZE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidRequest("size must be 'WIDTHxHEIGHT' (such as '512x512') or 'auto'",
                             param="size", code="invalid_size")
    width, height = int(match[1]), int(match[2])
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE) \
            or width % 8 or height % 8:
        raise InvalidRequest(f"size sides must be multiples of 8 from {MIN_SIDE} to {MAX_SIDE}, got "
                             f"{value[:16]!r}", param="size", code="invalid_size")
    return width, height


def _text(body: Mapping[str, Any], key: str, required: bool) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise InvalidRequest(f"{key} must be a non-empty string", param=key)
    if len(value) > MAX_IMAGE_PROMPT_CHARS:
        raise InvalidRequest(f"{key} must be at most {MAX_IMAGE_PROMPT_CHARS} characters", param=key)
    return value


def _int_in(body: Mapping[str, Any], key: str, lo: int, hi: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not is_int(value) or not lo <= value <= hi:
        raise InvalidRequest(f"{key} must be an integer from {lo} to {hi}", param=key)
    return int(value)


def image_request(body: Mapping[str, Any]) -> ImageRequest:
    for key in body:
        if key not in _IMAGE_FIELDS:
            raise InvalidRequest(f"Unrecognized request argument supplied: {key[:64]}",
                                 param=key[:64], code="unknown_parameter")
    model = model_name(dict(body))
    prompt = _text(body, "prompt", True)
    assert prompt is not None
    response_format = body.get("response_format")
    if response_format not in (None, "b64_json"):
        raise InvalidRequest("response_format must be 'b64_json': images are returned inside the "
                             "sealed response, never stored for a URL", param="response_format")
    if body.get("output_format") not in (None, "png"):
        raise InvalidRequest("output_format must be 'png'", param="output_format")
    width, height = image_size(body.get("size"))
    n = _int_in(body, "n", 1, MAX_IMAGES)
    return ImageRequest(model, prompt, width, height, n or 1, _text(body, "negative_prompt", False),
                        _int_in(body, "steps", 1, MAX_STEPS), _int_in(body, "seed", 0, 2**63 - 1))


def parse_image_body(raw: bytes) -> ImageRequest:
    return image_request(parse_json_body(raw))
