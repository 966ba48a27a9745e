"""The consumer request pipeline: validate, route, retry until the first chunk, then relay.

    prepare()  parse + validate (400/404) + exact prompt tokens + output budget
    commit()   up to N attempts, each a fresh provider, request id and key; nothing reaches the
               consumer before the first chunk, so retries are invisible (protocol.md §9)
    relay()    the remaining chunks, byte for byte, until inference_complete
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from darkbloom.config import CoordinatorSettings
from darkbloom.coordinator.dispatch import Attempt, Dispatcher, Event
from darkbloom.coordinator.routing.scheduler import Scheduler
from darkbloom.coordinator.trust.attestation import LEVELS
from darkbloom.coordinator.usage import settle_usage
from darkbloom.errors import (
    InvalidRequest,
    ModelNotFound,
    NoProviderAvailable,
    ProviderFailed,
    RequestTooLarge,
    UpstreamTimeout,
)
from darkbloom.inference.budget import output_budget
from darkbloom.inference.catalog import Catalog, CatalogModel
from darkbloom.inference.dialects import parse_request_off_loop
from darkbloom.inference.fields import MAX_OUTPUT_TOKENS
from darkbloom.inference.prompt import PromptBuilder
from darkbloom.inference.request import GenerationRequest, parse_json_body
from darkbloom.logcontext import REQUEST_ID
from darkbloom.protocol.blind import BlindEnvelope
from darkbloom.protocol.frames import MAX_FRAME_BYTES, Endpoint, Sealed, Usage
from darkbloom.protocol.trust import SignedReceipt

log = logging.getLogger(__name__)

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


@dataclass(slots=True)
class Committed:
    attempt: Attempt
    first_chunk: bytes
    attempts: int
    prepared: Prepared  # what relay() checks the provider's usage report against


@dataclass(frozen=True, slots=True)
class Finished:
    usage: Usage
    receipt: SignedReceipt | None = None  # checked by the dispatcher; None in consumer-blind mode


# Failure reasons the coordinator words itself. Any other text came from a provider and may quote
# the request back, so it never reaches the consumer.
_OWN_REASONS = frozenset({
    "provider disconnected", "invalid provider response", "provider did not respond in time",
    "provider completed without a response", "a provider's encryption key changed; seal to it again",
    "consumer too slow; response cancelled",
})


def _context_exceeded(prepared: Prepared) -> InvalidRequest:
    """A provider found the prompt too long where the coordinator had no tokenizer to count it:
    the consumer's error, in our own words (never the provider's)."""
    param = {"/v1/completions": "prompt", "/v1/responses": "input"}.get(prepared.endpoint, "messages")
    return InvalidRequest(
        f"This model's maximum context length is {prepared.model.context_length} tokens, and the "
        f"{param} with the requested completion does not fit. Please reduce the length of the "
        f"{param} or completion.", param=param, code="context_length_exceeded")


class _AttemptFailed(Exception):
    def __init__(self, event: Event) -> None:
        super().__init__(event.message)
        self.event = event


def parse_blind_envelope(body: dict[str, Any]) -> BlindEnvelope:
    """The consumer-blind envelope's clear fields; errors name fields, never echo values."""
    try:
        return BlindEnvelope.model_validate(body)
    except ValidationError as exc:
        where = sorted({".".join(str(p) for p in e["loc"]) or "body" for e in exc.errors()})[:3]
        raise InvalidRequest(f"invalid consumer-blind envelope: bad field(s) {', '.join(where)}"[:300],
                             param=where[0][:64], code="invalid_sealed_envelope") from None


_BLIND_STATUSES = frozenset({400, 409, 413, 422})
_CODE = re.compile(r"^[a-z_]{1,64}$")  # a provider's error code, passed on only if it is a plain word
BLIND_REFUSAL = ("a provider refused the sealed request; the reason is sealed to you "
                 "(open error.sealed with darkbloom.client.blind.open_error)")


def _blind_refusal(request_id: str, refused: Event) -> InvalidRequest:
    """A provider refused a consumer-sealed request itself (another would too). Its words are
    sealed to the consumer; a plain-word code and a status that blames the request are all that
    is passed on (a provider may not make an SDK blame the consumer's key or balance)."""
    sealed = ({"request_id": request_id, "ciphertext": refused.sealed_message}
              if refused.sealed_message else None)
    code = refused.code if refused.code and _CODE.fullmatch(refused.code) else None
    status = refused.status_code if refused.status_code in _BLIND_STATUSES else 400
    return InvalidRequest(BLIND_REFUSAL, code=code, status_code=status, sealed=sealed)


class Tokenizers:
    """Vocabulary-only llama.cpp models, loaded once per catalog model whose file is present."""

    def __init__(self, catalog: Catalog) -> None:
        self._builders: dict[str, PromptBuilder] = {}
        for model in catalog.models:
            path: Path | None = model.weights_path()
            if path is None:
                log.warning("no local tokenizer for %s: context checks move to the provider",
                            model.id)
                continue
            self._builders[model.id] = PromptBuilder.vocab_only(path)

    def get(self, model_id: str) -> PromptBuilder | None:
        return self._builders.get(model_id)


class InferenceService:
    def __init__(self, settings: CoordinatorSettings, catalog: Catalog, tokenizers: Tokenizers,
                 scheduler: Scheduler, dispatcher: Dispatcher) -> None:
        self.settings = settings
        self.catalog = catalog
        self.tokenizers = tokenizers
        self.scheduler = scheduler
        self.dispatcher = dispatcher

    async def prepare(self, endpoint: Endpoint, raw: bytes, min_trust: str | None = None) -> Prepared:
        if min_trust is not None and min_trust not in LEVELS:
            raise InvalidRequest(f"x-min-trust-level must be one of {', '.join(LEVELS)}",
                                 param="x-min-trust-level")
        request = await parse_request_off_loop(endpoint, raw)
        model = self.catalog.resolve(request.model)
        if model is None:
            raise ModelNotFound(f"The model {request.model!r} does not exist or is not available "
                                "on this network; see GET /v1/models", param="model")
        builder = self.tokenizers.get(model.id)
        if builder is None:
            return Prepared(endpoint, raw, request, model, None,
                            request.max_tokens or self.settings.default_max_tokens, min_trust)
        if len(raw) > _INLINE_TOKENIZE_BYTES:
            tokens = await asyncio.to_thread(builder.tokens, request)
        else:
            tokens = builder.tokens(request)
        cap = output_budget(request, len(tokens), model.context_length,
                            self.settings.default_max_tokens)
        return Prepared(endpoint, raw, request, model, len(tokens), cap, min_trust)

    def prepare_blind(self, endpoint: Endpoint, raw: bytes, min_trust: str | None = None) -> Prepared:
        """A body the consumer sealed to providers itself (trust.md §9): only the clear fields
        can be checked here; the providers validate the rest and refuse what they must.

        Each sealed entry must fit in one frame to its provider (``entry_limit``), so no envelope
        can make a provider's socket close on an oversized frame."""
        if min_trust is not None and min_trust not in LEVELS:
            raise InvalidRequest(f"x-min-trust-level must be one of {', '.join(LEVELS)}",
                                 param="x-min-trust-level")
        envelope = parse_blind_envelope(parse_json_body(raw))
        model = self.catalog.resolve(envelope.model)
        if model is None:
            raise ModelNotFound("The model in the envelope does not exist", param="model")
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
        return len(await asyncio.to_thread(builder.tokens, request))

    async def commit(self, prepared: Prepared) -> Committed:
        """Dispatch until some provider produces a first chunk; raise the consumer's error if none."""
        tried: set[str] = set()
        last: Event | None = None
        for n in range(1, self.settings.max_attempts + 1):
            try:
                provider = await self.scheduler.acquire(
                    prepared.model.id, exclude=frozenset(tried), may_queue=n == 1,
                    min_trust=prepared.min_trust,
                    only=frozenset(prepared.sealed_for) if prepared.sealed_for else None)
            except NoProviderAvailable:
                if last is None:
                    raise
                break
            body: bytes | Sealed = prepared.body
            if prepared.sealed_for is not None:
                sealed_to, body = prepared.sealed_for[provider.id]
                if sealed_to != provider.public_key_b64:  # it restarted: a new X25519 key
                    self.scheduler.release(provider)
                    tried.add(provider.id)
                    last = Event("error", status_code=503,
                                 message="a provider's encryption key changed; seal to it again")
                    continue
            attempt = self.dispatcher.send(
                provider, body, model=prepared.request.model, endpoint=prepared.endpoint,
                stream=prepared.request.stream, max_tokens_cap=prepared.max_tokens_cap,
                x_request_id=REQUEST_ID.get())
            try:
                return Committed(attempt, await self._first_chunk(attempt), n, prepared)
            except _AttemptFailed as failed:
                last = failed.event
                tried.add(provider.id)
                # Status and code only: a provider's message may quote the request back.
                log.info("attempt %d on provider %s failed: %d %s", n, provider.id,
                         last.status_code, last.code or "")
                if (prepared.sealed_for is None and last.code == "context_length_exceeded"
                        and prepared.prompt_tokens is None):
                    raise _context_exceeded(prepared) from None  # no tokenizer here to say so first
                # Standard mode: the request passed our own validation, so a provider's 4xx is
                # its failure like a 5xx, and the next provider gets the request. Consumer-blind:
                # only providers can read the request, so a refusal stands.
                if (prepared.sealed_for is not None
                        and 400 <= last.status_code < 500 and last.status_code != 404):
                    raise _blind_refusal(attempt.request_id, last) from None
            except BaseException:
                self.dispatcher.cancel(attempt)
                raise
        assert last is not None
        error = UpstreamTimeout if last.status_code == 504 else ProviderFailed
        reason = (last.message if last.message in _OWN_REASONS
                  else f"no provider could serve it (last status {last.status_code})")
        raise error(f"inference failed after {len(tried)} attempt(s): {reason}",
                    status_code=last.status_code if last.status_code in (502, 503, 504) else 502)

    async def _first_chunk(self, attempt: Attempt) -> bytes:
        timeout = self.settings.first_response_timeout_s
        while True:
            try:
                event = await attempt.next_event(timeout)
            except TimeoutError:
                self.dispatcher.cancel(attempt)
                raise _AttemptFailed(Event("error", status_code=504,
                                           message="provider did not respond in time")) from None
            if event.kind == "accepted":
                timeout = self.settings.accepted_timeout_s
            elif event.kind == "chunk":
                return event.data
            elif event.kind == "error":
                raise _AttemptFailed(event)
            else:
                raise _AttemptFailed(Event("error", status_code=502,
                                           message="provider completed without a response"))

    async def relay(self, committed: Committed) -> AsyncIterator[bytes | Finished]:
        """Chunks after the first, then Finished with the usage settled (coordinator/usage.py);
        DarkbloomError if the provider fails mid-way."""
        attempt, prepared = committed.attempt, committed.prepared
        while True:
            try:
                event = await attempt.next_event(self.settings.chunk_timeout_s)
            except TimeoutError:
                self.dispatcher.cancel(attempt)
                raise UpstreamTimeout("provider stopped sending; response timed out") from None
            if event.kind == "chunk":
                yield event.data
            elif event.kind == "complete":
                assert event.usage is not None
                usage, problems = settle_usage(
                    event.usage, own_prompt_tokens=prepared.prompt_tokens,
                    context_length=prepared.model.context_length,
                    max_tokens_cap=prepared.max_tokens_cap, events=event.chunks)
                if problems:
                    log.warning("provider %s reported usage out of bounds on %s: %s",
                                attempt.provider.id, attempt.request_id, "; ".join(problems))
                yield Finished(usage, event.receipt)
                return
            elif event.kind == "error":
                # Our own words only: a provider's could say anything to the consumer.
                raise ProviderFailed(event.message if event.message in _OWN_REASONS
                                     else "the provider failed mid-response")
