"""Step one of a request: parse and validate it (400/404 in the caller's dialect), count its prompt
exactly where this coordinator has the model's tokenizer, and fix its output budget. A body the
consumer sealed to providers (consumer-blind) can only have its clear fields checked here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import ValidationError

from darkbloom.config import CoordinatorSettings
from darkbloom.coordinator.money import AUDIO_MS_PER_MINUTE, PER_IMAGE
from darkbloom.coordinator.trust.attestation import LEVELS
from darkbloom.errors import InvalidRequest, ModelNotFound, NoProviderAvailable, RequestTooLarge
from darkbloom.inference.audio import measure_audio
from darkbloom.inference.budget import output_budget
from darkbloom.inference.catalog import Catalog, CatalogModel
from darkbloom.inference.dialects import parse_request_off_loop
from darkbloom.inference.fields import MAX_OUTPUT_TOKENS
from darkbloom.inference.media_request import (
    MAX_STEPS,
    MODEL_TYPE,
    TRANSCRIPTION_CONTENT_TYPES,
    ImageRequest,
    TranscriptionRequest,
)
from darkbloom.inference.prompt import PromptBuilder
from darkbloom.inference.request import GenerationRequest, parse_json_body
from darkbloom.protocol.blind import BlindEnvelope
from darkbloom.protocol.frames import MAX_FRAME_BYTES, Endpoint, Sealed

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_SEALED_PROVIDERS = 3
# Prompts larger than this are tokenized off the event loop.
_INLINE_TOKENIZE_BYTES = 32 * 1024


@dataclass(frozen=True, slots=True)
class Prepared:
    endpoint: Endpoint
    body: bytes
    request: GenerationRequest
    model: CatalogModel
    prompt_tokens: int | None
    max_tokens_cap: int
    min_trust: str | None = None
    # Consumer-blind mode: provider id -> (its X25519 key as the consumer saw it, the envelope).
    sealed_for: dict[str, tuple[str, Sealed]] | None = None
    media: MediaJob | None = None  # a transcription or an image request (media.md)


@dataclass(frozen=True, slots=True)
class MediaJob:
    """What the coordinator knows of a media request before any provider sees it."""

    unit: Literal["audio_ms", "images"]  # the Usage and Receipt field the provider reports
    units: int  # audio milliseconds it decoded (the most it will charge for), or images asked
    content_type: str  # of the answer's body, which the provider makes
    answer: str  # what the body must be: "images", or the transcription's response_format
    answer_bytes: int = 0  # the most its sealed pieces can honestly hold; 0: the usual limit

    @property
    def units_per_price(self) -> int:
        """The model's price is per this many units (money.py)."""
        return AUDIO_MS_PER_MINUTE if self.unit == "audio_ms" else PER_IMAGE

    @property
    def progress(self) -> tuple[str, float, float]:
        """How a heartbeat's progress on this job must read to count (dispatch.py): its unit, the
        most work the job can be (the audio measured here, or every image's steps, a scheduler
        taking up to two model calls per step), and the least growth that counts."""
        if self.unit == "audio_ms":
            return "audio_seconds", self.units / 1000 + 1, 0.01
        return "steps", float(self.units * (2 * MAX_STEPS + 1)), 1.0


def parse_blind_envelope(body: dict[str, Any]) -> BlindEnvelope:
    """The consumer-blind envelope's clear fields; errors name fields, never echo values."""
    try:
        return BlindEnvelope.model_validate(body)
    except ValidationError as exc:
        where = sorted({".".join(str(p) for p in e["loc"]) or "body" for e in exc.errors()})[:3]
        raise InvalidRequest(f"invalid consumer-blind envelope: bad field(s) {', '.join(where)}"[:300],
                             param=where[0][:64], code="invalid_sealed_envelope") from None


def _check_trust(min_trust: str | None) -> None:
    if min_trust is not None and min_trust not in LEVELS:
        raise InvalidRequest(f"x-min-trust-level must be one of {', '.join(LEVELS)}",
                             param="x-min-trust-level")


class Tokenizers:
    """Vocabulary-only llama.cpp models, loaded once per catalog model whose file is present.

    A tokenizer serves one call at a time (its lock), and a long call runs in a thread
    (``off_loop``). While one does, short calls go off the loop too (``busy``): waiting for that
    lock on the event loop would stall every request for as long as the long call takes."""

    def __init__(self, catalog: Catalog) -> None:
        self._off_loop = 0
        self._builders: dict[str, PromptBuilder] = {}
        for model in catalog.models:
            if not model.is_text:
                continue
            path: Path | None = model.weights_path()
            if path is None:
                log.warning("no local tokenizer for %s: context checks move to the provider",
                            model.id)
                continue
            self._builders[model.id] = PromptBuilder.vocab_only(path)

    def get(self, model_id: str) -> PromptBuilder | None:
        return self._builders.get(model_id)

    @property
    def busy(self) -> bool:
        return self._off_loop > 0

    async def off_loop(self, call: Callable[..., T], *args: Any) -> T:
        self._off_loop += 1
        try:
            return await asyncio.to_thread(call, *args)
        finally:
            self._off_loop -= 1


# Uploads are measured on threads of their own: a long decode never takes a thread the text
# routes' off-loop work needs (asyncio's default pool), and at most this many run at once.
AUDIO_THREADS = 2


class Preparer:
    def __init__(self, settings: CoordinatorSettings, catalog: Catalog, tokenizers: Tokenizers) -> None:
        self.settings = settings
        self.catalog = catalog
        self.tokenizers = tokenizers
        self._audio = ThreadPoolExecutor(AUDIO_THREADS, thread_name_prefix="audio-measure")

    async def prepare(self, endpoint: Endpoint, raw: bytes, min_trust: str | None = None) -> Prepared:
        _check_trust(min_trust)
        request = await parse_request_off_loop(endpoint, raw)
        model = self._model(request.model, endpoint)
        builder = self.tokenizers.get(model.id)
        if builder is None:
            return Prepared(endpoint, raw, request, model, None,
                            request.max_tokens or self.settings.default_max_tokens, min_trust)
        if len(raw) > _INLINE_TOKENIZE_BYTES or self.tokenizers.busy:
            tokens = await self.tokenizers.off_loop(builder.tokens, request)
        else:
            tokens = builder.tokens(request)
        cap = output_budget(request, len(tokens), model.context_length,
                            self.settings.default_max_tokens)
        return Prepared(endpoint, raw, request, model, len(tokens), cap, min_trust)

    def _model(self, name: str, endpoint: str) -> CatalogModel:
        """The catalog model a request names, of the type its endpoint serves (400 otherwise)."""
        model = self.catalog.resolve(name)
        if model is None:
            raise ModelNotFound(f"The model {name!r} does not exist or is not available "
                                "on this network; see GET /v1/models", param="model")
        wanted = MODEL_TYPE.get(endpoint, "text")
        if model.model_type != wanted:
            raise InvalidRequest(f"The model {model.id!r} is a {model.model_type} model; {endpoint} "
                                 f"needs a {wanted} model (see GET /v1/models)", param="model",
                                 code="model_type_mismatch")
        return model

    async def prepare_media(self, endpoint: Endpoint, raw: bytes,
                            media: TranscriptionRequest | ImageRequest,
                            min_trust: str | None = None) -> Prepared:
        """A media request the route has read and validated: its model, and what it may cost.
        Audio is decoded here (off the loop) to measure it: corrupt, empty or overlong audio is
        a 400 before any money is held or any provider is asked. ``raw`` is an image request's
        body as sent; a transcription's is built here, once its audio passed (an upload refused
        for its audio never costs the base64 copy)."""
        _check_trust(min_trust)
        model = self._model(media.model, endpoint)
        request = GenerationRequest(endpoint=endpoint, model=media.model, stream=False)
        if isinstance(media, TranscriptionRequest):
            if media.language and model.languages and media.language not in model.languages:
                raise InvalidRequest(f"{model.id} does not transcribe language {media.language!r}; "
                                     f"it knows {', '.join(model.languages)}", param="language",
                                     code="unsupported_language")
            audio_ms = await asyncio.get_running_loop().run_in_executor(
                self._audio, measure_audio, media.audio)
            job = MediaJob("audio_ms", audio_ms, TRANSCRIPTION_CONTENT_TYPES[media.response_format],
                           media.response_format)
            raw = media.to_body()
        else:
            job = MediaJob("images", media.n, "application/json", "images",
                           media.sealed_answer_bytes)
        return Prepared(endpoint, raw, request, model, None, 1, min_trust, media=job)

    def prepare_blind(self, endpoint: Endpoint, raw: bytes, min_trust: str | None = None) -> Prepared:
        """A body the consumer sealed to providers itself (trust.md §9): only the clear fields
        can be checked here; the providers validate the rest and refuse what they must.

        Each sealed entry must fit in one frame to its provider (``entry_limit``), so no envelope
        can make a provider's socket close on an oversized frame."""
        _check_trust(min_trust)
        envelope = parse_blind_envelope(parse_json_body(raw))
        model = self.catalog.resolve(envelope.model)
        if model is None:
            raise ModelNotFound("The model in the envelope does not exist", param="model")
        if not model.is_text:
            raise InvalidRequest(f"The model {model.id!r} is a {model.model_type} model; "
                                 "consumer-blind requests are served for text models only",
                                 param="model", code="model_type_mismatch")
        limit = self.blind_entry_limit
        sealed_for: dict[str, tuple[str, Sealed]] = {}
        for i, entry in enumerate(envelope.sealed):
            if len(entry.ciphertext) > limit:
                raise RequestTooLarge(f"sealed[{i}].ciphertext exceeds {limit} bytes",
                                      param=f"sealed[{i}].ciphertext")
            if entry.provider_id in sealed_for:
                raise InvalidRequest("sealed lists a provider twice", param=f"sealed[{i}].provider_id")
            sealed_for[entry.provider_id] = (entry.encryption_public_key, Sealed(
                ephemeral_public_key=entry.ephemeral_public_key, ciphertext=entry.ciphertext))
        request = GenerationRequest(endpoint=endpoint, model=envelope.model, stream=envelope.stream)
        cap = min(envelope.max_tokens or self.settings.default_max_tokens, MAX_OUTPUT_TOKENS)
        return Prepared(endpoint, raw, request, model, None, cap, min_trust, sealed_for)

    @property
    def blind_entry_limit(self) -> int:
        """Largest sealed entry: a body of max_body_bytes in base64, and never more than a frame
        to the provider can carry (with room for the frame's other fields)."""
        return min(self.settings.max_body_bytes * 4 // 3 + 64, MAX_FRAME_BYTES - 64 * 1024)

    async def count_tokens(self, raw: bytes) -> int:
        """Anthropic's count_tokens: the exact prompt tokens a Messages request would use."""
        # count_tokens takes a Messages body without max_tokens
        request = await parse_request_off_loop("/v1/messages", raw, {"max_tokens": 1})
        model = self.catalog.resolve(request.model)
        if model is None:
            raise ModelNotFound(f"model: {request.model!r} not found", param="model")
        builder = self.tokenizers.get(model.id)
        if builder is None:
            raise NoProviderAvailable(f"token counting for {model.id} is not available here")
        return len(await self.tokenizers.off_loop(builder.tokens, request))
