"""Step three of a request: dispatch it until some provider produces a first chunk, then pass on
the provider's remaining events until it completes.

    commit()   up to N attempts, each a fresh provider, request id and key; nothing reaches the
               consumer before the first chunk, so retries are invisible (protocol.md §9)
    events()   the remaining chunks, byte for byte, then Finished with the usage checked
               (coordinator/usage.py); a DarkbloomError in our own words if the provider fails
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from darkbloom.config import CoordinatorSettings
from darkbloom.coordinator.dispatch import Attempt, ConsumerTooSlow, Dispatcher, PastDeadline
from darkbloom.coordinator.prepare import Prepared
from darkbloom.coordinator.routing.affinity import CacheScopes
from darkbloom.coordinator.routing.cost import Demand
from darkbloom.coordinator.routing.scheduler import Route, Scheduler
from darkbloom.coordinator.usage import settle_media_usage, settle_usage
from darkbloom.errors import (
    DarkbloomError,
    InvalidRequest,
    NoProviderAvailable,
    ProviderFailed,
    ProviderReported,
    UpstreamTimeout,
)
from darkbloom.inference.capabilities import Unsupported, needed, refusal
from darkbloom.logcontext import REQUEST_ID
from darkbloom.protocol.frames import Sealed, Usage
from darkbloom.protocol.trust import SignedReceipt

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Committed:
    attempt: Attempt
    first_chunk: bytes
    attempts: int
    prepared: Prepared  # what events() checks the provider's usage report against


@dataclass(frozen=True, slots=True)
class Finished:
    usage: Usage
    receipt: SignedReceipt | None = None  # checked by the dispatcher; None in consumer-blind mode
    disputed: bool = False  # the provider's usage report was out of bounds (and was corrected)


class DeadlineReached(UpstreamTimeout):
    """A committed answer was still arriving when the response deadline ended it: the
    coordinator's limit, not the provider failing."""


# Ends of a committed stream that are no provider's failure: what reached the consumer is charged
# (billing.md §4), as for a stream the consumer cut; every other error refunds the whole hold.
CHARGED_AS_DELIVERED = (DeadlineReached, ConsumerTooSlow)


def _context_exceeded(prepared: Prepared) -> InvalidRequest:
    """A provider found the prompt too long where the coordinator had no tokenizer to count it:
    the consumer's error, in our own words (never the provider's)."""
    param = {"/v1/completions": "prompt", "/v1/responses": "input"}.get(prepared.endpoint, "messages")
    return InvalidRequest(
        f"This model's maximum context length is {prepared.model.context_length} tokens, and the "
        f"{param} with the requested completion does not fit. Please reduce the length of the "
        f"{param} or completion.", param=param, code="context_length_exceeded")


_BLIND_STATUSES = frozenset({400, 409, 413, 422})
# A media upload's faults only a provider's own decode may find: (param, our words) for each code.
_MEDIA_INPUT = {
    "empty_file": ("file", "The audio file holds no audio the provider could decode"),
    "invalid_file_format": ("file", "The file could not be decoded as audio by the providers"),
    "audio_too_long": ("file", "The audio is longer than the providers accept"),
    "unsupported_language": ("language", "No provider transcribes that language with this model"),
}
_CODE = re.compile(r"^[a-z_]{1,64}$")  # a provider's error code, passed on only if it is a plain word
BLIND_REFUSAL = ("a provider refused the sealed request; the reason is sealed to you "
                 "(open error.sealed with darkbloom.client.blind.open_error)")


def _blind_refusal(request_id: str, refused: ProviderReported) -> InvalidRequest:
    """A provider refused a consumer-sealed request itself (another would too). Its words are
    sealed to the consumer; a plain-word code and a status that blames the request are all that
    is passed on (a provider may not make an SDK blame the consumer's key or balance)."""
    sealed = ({"request_id": request_id, "ciphertext": refused.sealed_message}
              if refused.sealed_message else None)
    code = refused.code if refused.code and _CODE.fullmatch(refused.code) else None
    status = refused.status_code if refused.status_code in _BLIND_STATUSES else 400
    return InvalidRequest(BLIND_REFUSAL, code=code, status_code=status, sealed=sealed)


def _consumers_error(last: DarkbloomError, tries: int) -> DarkbloomError:
    """Every attempt failed: the consumer's error, in our words (a provider's may quote the request)."""
    status = last.status_code
    reason = (f"no provider could serve it (last status {status})" if isinstance(last, ProviderReported)
              else last.message)
    error = UpstreamTimeout if status == 504 else ProviderFailed
    return error(f"inference failed after {tries} attempt(s): {reason}",
                 status_code=status if status in (502, 503, 504) else 502)


class Committer:
    def __init__(self, settings: CoordinatorSettings, scheduler: Scheduler, dispatcher: Dispatcher) -> None:
        self.settings = settings
        self.scheduler = scheduler
        self.dispatcher = dispatcher
        self.scopes = CacheScopes()

    async def commit(self, prepared: Prepared, route: Route) -> Committed:
        """Dispatch until some provider produces a first chunk; raise the consumer's error if none."""
        tried: set[str] = set()
        last: DarkbloomError | None = None
        media = prepared.media is not None  # no prompt or KV cache to size: one unit of work
        demand = Demand.of(prepared.model.id, prompt_tokens=1 if media else prepared.prompt_tokens,
                           body_bytes=len(prepared.body),
                           max_tokens=1 if media else prepared.request.max_tokens,
                           model_bytes=prepared.model.size_bytes,
                           needs=needed(prepared.request))
        for n in range(1, self.settings.max_attempts + 1):
            try:
                provider = await self.scheduler.acquire(
                    demand, exclude=frozenset(tried), may_queue=n == 1,
                    min_trust=prepared.min_trust,
                    only=frozenset(prepared.sealed_for) if prepared.sealed_for else None, route=route)
            except Unsupported as refused:
                # Only the first attempt may blame the request: after the one provider that could
                # honour it failed, "none left can" is that failure, not the consumer's error.
                if last is None:
                    raise refusal(refused.missing, prepared.endpoint) from None
                break
            except NoProviderAvailable:
                if last is None:
                    raise
                break
            body: bytes | Sealed = prepared.body
            if prepared.sealed_for is not None:
                sealed_to, body = prepared.sealed_for[provider.id]
                if sealed_to != provider.public_key_b64:  # it restarted: a new X25519 key
                    self.scheduler.release(provider, demand)
                    tried.add(provider.id)
                    last = NoProviderAvailable("a provider's encryption key changed; seal to it again")
                    continue
            attempt = self.dispatcher.send(
                provider, body, demand=demand, model=prepared.request.model, endpoint=prepared.endpoint,
                stream=prepared.request.stream, max_tokens_cap=prepared.max_tokens_cap,
                x_request_id=REQUEST_ID.get(),
                media=prepared.media.progress if prepared.media is not None else None,
                max_response_bytes=prepared.media.answer_bytes if prepared.media is not None else 0,
                cache_scope=(self.scopes.scope(route.consumer, provider.id)
                             if route.consumer is not None else None))
            try:
                committed = Committed(attempt, await self._first_chunk(attempt), n, prepared)
                self.scheduler.last_served.served(route.consumer, demand.model, provider.id)
                return committed
            except DarkbloomError as failed:
                last = failed
                tried.add(provider.id)
                # Status and code only: a provider's message may quote the request back.
                log.info("attempt %d on provider %s failed: %d %s", n, provider.id, failed.status_code,
                         failed.code if failed.code and _CODE.fullmatch(failed.code) else "")
                if not isinstance(failed, ProviderReported):
                    continue
                if (prepared.sealed_for is None and failed.code == "context_length_exceeded"
                        and prepared.prompt_tokens is None):
                    raise _context_exceeded(prepared) from None  # no tokenizer here to say so first
                # Standard mode: the request passed our own validation, so a provider's 4xx is
                # its failure like a 5xx, and the next provider gets the request. Consumer-blind:
                # only providers can read the request, so a refusal stands.
                if (prepared.sealed_for is not None
                        and 400 <= failed.status_code < 500 and failed.status_code != 404):
                    raise _blind_refusal(attempt.request_id, failed) from None
            except BaseException:
                self.dispatcher.cancel(attempt)
                raise
        assert last is not None
        if prepared.media is not None and isinstance(last, ProviderReported) \
                and (words := _MEDIA_INPUT.get(last.code or "")) is not None:
            # Every provider tried refused the upload itself, the last in these words: the
            # consumer's input after all (in our words, never a provider's).
            raise InvalidRequest(words[1], param=words[0], code=last.code) from None
        raise _consumers_error(last, len(tried))

    async def _first_chunk(self, attempt: Attempt) -> bytes:
        timeout = self.settings.first_response_timeout_s
        while True:
            try:
                event = await attempt.next_event(timeout)
            except TimeoutError:
                self.dispatcher.timed_out(attempt)
                raise UpstreamTimeout("provider did not respond in time") from None
            if event.kind in ("accepted", "progress"):  # progress: a long media job works on
                timeout = self.settings.accepted_timeout_s
            elif event.kind == "chunk":
                return event.data
            elif event.kind == "error":
                assert event.error is not None
                raise event.error
            else:
                raise ProviderFailed("provider completed without a response")

    async def events(self, committed: Committed) -> AsyncIterator[bytes | Finished]:
        """Chunks after the first, then Finished with the usage checked (coordinator/usage.py);
        DarkbloomError in our own words if the provider fails mid-way."""
        attempt, prepared = committed.attempt, committed.prepared
        while True:
            try:
                event = await attempt.next_event(self.settings.chunk_timeout_s)
            except PastDeadline:
                self.dispatcher.cancel(attempt)
                raise DeadlineReached("the response ran past the coordinator's time limit") from None
            except TimeoutError:
                self.dispatcher.timed_out(attempt)
                raise UpstreamTimeout("provider stopped sending; response timed out") from None
            if event.kind == "chunk":
                yield event.data
            elif event.kind == "progress":
                continue  # a long media job is still working: the wait starts again
            elif event.kind == "complete":
                assert event.usage is not None
                if prepared.media is not None:
                    usage, problems = settle_media_usage(event.usage, prepared.media.unit,
                                                         prepared.media.units)
                else:
                    usage, problems = settle_usage(
                        event.usage, own_prompt_tokens=prepared.prompt_tokens,
                        context_length=prepared.model.context_length,
                        max_tokens_cap=prepared.max_tokens_cap, events=event.chunks)
                if problems:
                    log.warning("provider %s reported usage out of bounds on %s: %s",
                                attempt.provider.id, attempt.request_id, "; ".join(problems))
                yield Finished(usage, event.receipt, bool(problems))
                return
            elif event.kind == "error":
                # Our own words only: a provider's could say anything to the consumer.
                assert event.error is not None
                if isinstance(event.error, ProviderReported):
                    raise ProviderFailed("the provider failed mid-response")
                raise event.error
