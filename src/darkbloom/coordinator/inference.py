"""The consumer request pipeline: validate, route, retry until the first chunk, then relay.

    prepare()  parse + validate (400/404) + exact prompt tokens + output budget
    commit()   up to N attempts, each a fresh provider, request id and key; nothing reaches the
               consumer before the first chunk, so retries are invisible (protocol.md §9)
    relay()    the remaining chunks, byte for byte, until inference_complete
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from darkbloom.config import CoordinatorSettings
from darkbloom.coordinator.dispatch import Attempt, Dispatcher, Event
from darkbloom.coordinator.routing.scheduler import Scheduler
from darkbloom.coordinator.trust.attestation import LEVELS
from darkbloom.errors import (
    InvalidRequest,
    ModelNotFound,
    NoProviderAvailable,
    ProviderFailed,
    UpstreamTimeout,
)
from darkbloom.inference.budget import output_budget
from darkbloom.inference.catalog import Catalog, CatalogModel
from darkbloom.inference.dialects import parse_request
from darkbloom.inference.prompt import PromptBuilder
from darkbloom.inference.request import GenerationRequest, parse_json_body
from darkbloom.protocol.frames import Endpoint, Sealed, Usage

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


@dataclass(frozen=True, slots=True)
class Finished:
    usage: Usage
    receipt: dict[str, object] | None = None  # {"receipt": {...}, "signature": "..."}


class _AttemptFailed(Exception):
    def __init__(self, event: Event) -> None:
        super().__init__(event.message)
        self.event = event


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
        request = parse_request(endpoint, parse_json_body(raw))
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
        can be checked here; the providers validate the rest and refuse what they must."""
        if min_trust is not None and min_trust not in LEVELS:
            raise InvalidRequest(f"x-min-trust-level must be one of {', '.join(LEVELS)}",
                                 param="x-min-trust-level")
        body = parse_json_body(raw)
        model_name, stream, max_tokens = body.get("model"), body.get("stream", False), body.get("max_tokens")
        if not isinstance(model_name, str) or not model_name:
            raise InvalidRequest("model is required in the clear", param="model")
        if not isinstance(stream, bool):
            raise InvalidRequest("stream must be a boolean", param="stream")
        if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool)
                                       or max_tokens < 1):
            raise InvalidRequest("max_tokens must be a positive integer", param="max_tokens")
        model = self.catalog.resolve(model_name)
        if model is None:
            raise ModelNotFound(f"The model {model_name!r} does not exist", param="model")
        entries = body.get("sealed")
        if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_SEALED_PROVIDERS:
            raise InvalidRequest(f"sealed must list 1 to {MAX_SEALED_PROVIDERS} provider envelopes",
                                 param="sealed")
        sealed_for: dict[str, tuple[str, Sealed]] = {}
        for i, entry in enumerate(entries):
            fields = ("provider_id", "encryption_public_key", "ephemeral_public_key", "ciphertext")
            if not isinstance(entry, dict) or not all(isinstance(entry.get(f), str) for f in fields):
                raise InvalidRequest(f"sealed[{i}] needs {', '.join(fields)}", param=f"sealed[{i}]")
            sealed_for[entry["provider_id"]] = (entry["encryption_public_key"], Sealed(
                ephemeral_public_key=entry["ephemeral_public_key"], ciphertext=entry["ciphertext"]))
        request = GenerationRequest(endpoint=endpoint, model=model_name, stream=stream)
        cap = max_tokens or self.settings.default_max_tokens  # the provider also caps to its context
        return Prepared(endpoint, raw, request, model, None, cap, min_trust, sealed_for)

    async def count_tokens(self, raw: bytes) -> int:
        """Anthropic's count_tokens: the exact prompt tokens a Messages request would use."""
        body = parse_json_body(raw)
        body.setdefault("max_tokens", 1)  # count_tokens takes a Messages body without it
        request = parse_request("/v1/messages", body)
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
                stream=prepared.request.stream, max_tokens_cap=prepared.max_tokens_cap)
            try:
                return Committed(attempt, await self._first_chunk(attempt), n)
            except _AttemptFailed as failed:
                last = failed.event
                tried.add(provider.id)
                # Status and code only: a provider's message may quote the request back.
                log.info("attempt %d on provider %s failed: %d %s", n, provider.id,
                         last.status_code, last.code or "")
                if 400 <= last.status_code < 500 and last.status_code != 404:
                    # The provider refused the request itself; another provider would too.
                    raise InvalidRequest(last.message, param=last.param, code=last.code,
                                         status_code=last.status_code) from None
            except BaseException:
                self.dispatcher.cancel(attempt)
                raise
        assert last is not None
        error = UpstreamTimeout if last.status_code == 504 else ProviderFailed
        raise error(f"inference failed after {len(tried)} attempt(s): {last.message}",
                    status_code=last.status_code if last.status_code >= 500 else 503)

    async def _first_chunk(self, attempt: Attempt) -> bytes:
        timeout = self.settings.first_response_timeout_s
        while True:
            try:
                event = await asyncio.wait_for(attempt.events.get(), timeout)
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
        """Chunks after the first, then Finished; DarkbloomError if the provider fails mid-way."""
        attempt = committed.attempt
        while True:
            try:
                event = await asyncio.wait_for(attempt.events.get(), self.settings.chunk_timeout_s)
            except TimeoutError:
                self.dispatcher.cancel(attempt)
                raise UpstreamTimeout("provider stopped sending; response timed out") from None
            if event.kind == "chunk":
                yield event.data
            elif event.kind == "complete":
                assert event.usage is not None
                yield Finished(event.usage, event.receipt)
                return
            elif event.kind == "error":
                raise ProviderFailed(event.message or "provider failed")
