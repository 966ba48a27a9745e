"""One consumer request, top to bottom. Routes read HTTP and call this; the relay (coordinator/relay.py)
moves the bytes between ``open`` and ``close``.

    open()   prepare   parse, validate, count the prompt, fix the output budget  (prepare.py)
             reserve   hold the most the request can cost, or 402            (store/charging.py)
             commit    dispatch until a provider produces a first chunk           (commit.py)
                       (a text request of an account whose last hold here stood is dispatched
                       while its hold is written; nothing is relayed before the hold stands)
    events() the provider's remaining chunks, then its checked usage              (commit.py)
    close()  settle    charge what was delivered and pay the provider, or refund the whole hold
             record    the request's row (recorder.py)

Every path out of ``open`` after the reservation refunds it; ``close`` ends it exactly once. If the
database fails there, the hold stays open and the next coordinator start refunds it as an orphan.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.config import CoordinatorSettings
from darkbloom.coordinator.commit import Committed, Committer, Finished
from darkbloom.coordinator.money import MIN_CHARGE_MICRO_USD, media_cost, prompt_estimate, request_cost
from darkbloom.coordinator.prepare import Prepared, Preparer
from darkbloom.coordinator.pricing import PriceBook
from darkbloom.coordinator.recorder import Recorder
from darkbloom.coordinator.recount import count_generated, text_events
from darkbloom.coordinator.routing.scheduler import Route
from darkbloom.coordinator.store import charging
from darkbloom.coordinator.store.credentials import KeyIdentity, now
from darkbloom.coordinator.store.ledger import InsufficientFunds
from darkbloom.coordinator.store.requests_log import RequestOutcome
from darkbloom.coordinator.usage import STREAM_FRAMING_EVENTS
from darkbloom.errors import AuthenticationFailed, DarkbloomError, PaymentRequired
from darkbloom.inference.media_request import ImageRequest, TranscriptionRequest
from darkbloom.protocol.frames import Endpoint

log = logging.getLogger(__name__)

LOW_BALANCE = ("your balance is too low for this request \u2014 add funds at /billing or lower "
               "max_tokens")
LOW_BALANCE_MEDIA = "your balance is too low for this request \u2014 add funds at /billing"
# Accounts whose last reservation here stood: their text requests are dispatched while the hold
# is written. Any other account (new here, or refused: funds, billing hold, revoked key) reserves
# first, so a consumer that cannot pay never reaches a provider, and one that just ran dry costs
# a provider at most one cancelled prefill.
_PAYERS_MAX = 100_000
_INLINE_RECOUNT_BYTES = 16 * 1024  # recounting longer answers runs off the event loop
# A recount this far below a provider's (already bounded) report counts against the provider;
# re-tokenizing generated text rarely matches the generation token for token.
_RECOUNT_SLACK = 8


@dataclass(frozen=True, slots=True)
class Call:
    """What a route read from HTTP: everything the pipeline needs and nothing HTTP-shaped."""

    endpoint: Endpoint
    body: bytes  # plaintext, or a consumer-blind envelope (``blind``)
    identity: KeyIdentity
    min_trust: str | None  # the strictest of the header and the key's setting
    blind: bool = False
    route_self: bool = False  # X-Darkbloom-Route: self (billing.md §5)
    x_request_id: str | None = None
    media: TranscriptionRequest | ImageRequest | None = None  # as the route read it (media.md)


@dataclass(slots=True)
class Opened:
    """A committed request: money held, a provider answering, the first chunk in hand."""

    call: Call
    prepared: Prepared
    committed: Committed
    hold: charging.Hold
    outcome: RequestOutcome
    started: float
    delivered: list[bytes] = field(default_factory=list)  # what the consumer got, to recount


class Pipeline:
    def __init__(self, settings: CoordinatorSettings, preparer: Preparer, committer: Committer,
                 prices: PriceBook, sessions: async_sessionmaker[AsyncSession], recorder: Recorder,
                 coordinator_id: str | None, forget_key: Callable[[str], None] = lambda key_id: None
                 ) -> None:
        self.settings = settings
        self.preparer = preparer
        self.committer = committer
        self.prices = prices
        self.sessions = sessions
        self.recorder = recorder
        self.coordinator_id = coordinator_id
        self.forget_key = forget_key  # evicts a key found revoked from this process's cache
        self.usage_disputes: dict[str, int] = {}  # provider identity (or id) -> recounts below report
        self._closing: set[asyncio.Task[None]] = set()
        self._payers: dict[str, None] = {}  # accounts dispatched while reserving (oldest first)
        self._overlapping: set[str] = set()  # accounts with such a request being reserved now
        # Told of every request as it ends (coordinator/metrics.py); never allowed to fail it.
        self.observers: list[Callable[[RequestOutcome], None]] = []

    def _ended(self, outcome: RequestOutcome) -> None:
        """The request ended (or failed before it was committed): observe it, write its row."""
        for observe in self.observers:
            try:
                observe(outcome)
            except Exception as exc:
                log.warning("request observer failed (%s)", type(exc).__name__)
        self.recorder.submit(outcome)

    async def open(self, call: Call) -> Opened:
        """Prepare, reserve and commit; raise the consumer's DarkbloomError (recorded, money back)."""
        started = time.perf_counter()
        outcome = RequestOutcome(id=uuid.uuid4().hex, endpoint=call.endpoint, model="", stream=False,
                                 created_at=now(), api_key_id=call.identity.key_id,
                                 account_id=call.identity.account_id, x_request_id=call.x_request_id)
        hold: charging.Hold | None = None
        try:
            if isinstance(call.media, TranscriptionRequest) and not call.route_self:
                await self._can_pay(call)  # before the upload is decoded: decoding costs CPU
            prepared = await self._prepare(call)
            outcome.model, outcome.stream = prepared.model.id, prepared.request.stream
            outcome.prompt_tokens = prepared.prompt_tokens or 0
            hold = self._hold(call, prepared, outcome.id)
            account = call.identity.account_id
            route = Route(owner=account, consumer=account) if call.route_self else Route(
                paid=hold.amount_micro_usd > 0, consumer=account)
            if call.media is None and account in self._payers and account not in self._overlapping:
                # One such request per account at a time: an account that has just run dry
                # costs providers at most one cancelled prefill, however many it sends at once.
                self._overlapping.add(account)
                try:
                    committed = await self._reserve_while_committing(hold, prepared, route)
                finally:
                    self._overlapping.discard(account)
            else:
                await self._reserve(hold, LOW_BALANCE_MEDIA if call.media is not None else LOW_BALANCE)
                committed = await self.committer.commit(prepared, route)
        except BaseException as exc:
            if hold is not None and not isinstance(exc, PaymentRequired):
                await self._refund(hold)  # nothing to give back (a no-op) if it was never taken
            if isinstance(exc, DarkbloomError):
                outcome.status_code, outcome.error_code = exc.status_code, exc.code
            elif isinstance(exc, asyncio.CancelledError):  # the consumer left while we waited
                outcome.status, outcome.status_code = "cancelled", 499
            outcome.duration_ms = _elapsed_ms(started)
            self._ended(outcome)
            raise
        outcome.ttft_ms = _elapsed_ms(started)
        outcome.provider_id = committed.attempt.provider.id
        outcome.attempts = committed.attempts
        return Opened(call, prepared, committed, hold, outcome, started)

    async def _prepare(self, call: Call) -> Prepared:
        if call.media is not None:
            return await self.preparer.prepare_media(call.endpoint, call.body, call.media,
                                                     call.min_trust)
        if call.blind:
            # Off the loop: an envelope of up to ~16 MiB takes a while to parse and validate.
            return await asyncio.to_thread(self.preparer.prepare_blind, call.endpoint, call.body,
                                           call.min_trust)
        return await self.preparer.prepare(call.endpoint, call.body, call.min_trust)

    def _hold(self, call: Call, prepared: Prepared, request_id: str) -> charging.Hold:
        price = self.prices.price(prepared.model)
        if (job := prepared.media) is not None:  # priced per audio minute or per image
            amount = 0 if call.route_self else media_cost(job.units, price.input_price,
                                                          job.units_per_price)
            return charging.Hold(request_id, call.identity.account_id, amount, price.input_price, 0,
                                 job.units, 0, call.identity.key_id, job.units_per_price)
        if prepared.prompt_tokens is not None:
            estimate = prepared.prompt_tokens
        elif prepared.sealed_for:  # the largest sealed copy: base64 of the body
            largest = max(len(sealed.ciphertext) for _, sealed in prepared.sealed_for.values())
            estimate = prompt_estimate(largest * 3 // 4)
        else:
            estimate = prompt_estimate(len(call.body))
        amount = 0 if call.route_self else request_cost(estimate, prepared.max_tokens_cap,
                                                        price.input_price, price.output_price)
        return charging.Hold(request_id, call.identity.account_id, amount, price.input_price,
                             price.output_price, estimate, prepared.max_tokens_cap, call.identity.key_id)

    async def _reserve_while_committing(self, hold: charging.Hold, prepared: Prepared,
                                        route: Route) -> Committed:
        """Reserve and dispatch at once: the database write (~1 ms on PostgreSQL, ~3.5 ms on
        SQLite) runs during the provider's prefill instead of before it. The first chunk is
        returned only once the hold stands; a refused hold cancels the attempt, whatever stage
        it reached, and nothing reaches the consumer. Any other way out waits for the hold's
        write to finish, so the refund that follows finds it."""
        committing = asyncio.ensure_future(self.committer.commit(prepared, route))
        try:
            # One turn of the loop first: the commit takes its slot and queues the request for
            # the provider, so its frame goes out before the hold's database work takes the loop.
            await asyncio.sleep(0)
            await self._reserve(hold, LOW_BALANCE)
        except BaseException:
            committing.cancel()
            (outcome,) = await asyncio.gather(committing, return_exceptions=True)
            if isinstance(outcome, Committed):  # it had its first chunk already
                self.committer.dispatcher.cancel(outcome.attempt)
            raise
        try:
            return await committing
        except asyncio.CancelledError:  # the consumer left just as the commit finished
            if committing.done() and not committing.cancelled() and committing.exception() is None:
                self.committer.dispatcher.cancel(committing.result().attempt)
            raise

    async def _can_pay(self, call: Call) -> None:
        """402 for an account that could not pay even the minimum charge (its reservation would
        fail anyway, after the work of measuring the upload)."""
        balance = await charging.balance_of(self.sessions, call.identity.account_id)
        if balance < MIN_CHARGE_MICRO_USD:
            raise PaymentRequired(LOW_BALANCE_MEDIA, code="insufficient_funds")

    async def _reserve(self, hold: charging.Hold, low_balance: str = LOW_BALANCE) -> None:
        """Take the hold, or 402. Shielded: a consumer leaving mid-way cancels ``open`` while the
        transaction may already have committed; the reservation then still finishes, so the refund
        that follows finds it (a cancel that landed on the commit itself left it open for good)."""
        reserving = asyncio.ensure_future(charging.reserve(self.sessions, hold, self.coordinator_id))
        try:
            await asyncio.shield(reserving)
        except asyncio.CancelledError:
            await asyncio.wait({reserving})
            raise
        except (InsufficientFunds, charging.KeyRevoked, charging.BillingHold) as refused:
            self._payers.pop(hold.account_id, None)
            if isinstance(refused, InsufficientFunds):
                raise PaymentRequired(low_balance, code="insufficient_funds") from None
            if isinstance(refused, charging.BillingHold):
                raise PaymentRequired("this account is on billing hold after a card refund or "
                                      "dispute; contact the operator", code="billing_hold") from None
            if hold.api_key_id is not None:
                self.forget_key(hold.api_key_id)
            raise AuthenticationFailed("Incorrect API key provided.", code="invalid_api_key") from None
        if hold.account_id not in self._payers:
            if len(self._payers) >= _PAYERS_MAX:
                del self._payers[next(iter(self._payers))]
            self._payers[hold.account_id] = None

    def events(self, opened: Opened) -> AsyncIterator[bytes | Finished]:
        return self.committer.events(opened.committed)

    def begin(self, opened: Opened) -> None:
        """The answer is reaching the consumer: from here a crash leaves an in_progress row."""
        self.recorder.begin(opened.outcome)

    def close(self, opened: Opened, finished: Finished | None, failure: DarkbloomError | None,
              relayed: int, cut: DarkbloomError | None = None) -> None:
        """End the request once: ``finished`` (completed), ``failure`` (the provider failed after
        commit: nothing is charged) or neither (the consumer left, or ``cut``: the coordinator
        ended a stream that was still delivering; charged for what it got).

        Settlement runs after the response, off its path (the consumer never waits for it);
        ``drain`` waits for those still running at shutdown."""
        opened.outcome.duration_ms = _elapsed_ms(opened.started)
        task = asyncio.create_task(self._close(opened, finished, failure, relayed, cut))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def drain(self) -> None:
        if self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)

    async def _close(self, opened: Opened, finished: Finished | None, failure: DarkbloomError | None,
                     relayed: int, cut: DarkbloomError | None) -> None:
        outcome = opened.outcome
        try:
            if finished is not None:
                outcome.status, outcome.status_code = "completed", 200
                prompt, completion = await self._billable(opened, finished)
                await self._settle(opened, prompt, completion, "completed", plausible=not finished.disputed,
                                   media_units=_media_units(opened.prepared, finished))
            elif failure is not None:
                outcome.status, outcome.status_code, outcome.error_code = (
                    "failed", failure.status_code, failure.code)
                await self._refund(opened.hold)
            else:
                outcome.status, outcome.status_code = "cancelled", 499
                if cut is not None:
                    outcome.status, outcome.status_code, outcome.error_code = (
                        "failed", cut.status_code, cut.code)
                completion = await self._delivered_tokens(opened, relayed)
                outcome.completion_tokens = completion
                if completion == 0:  # nothing delivered: nothing charged
                    await self._refund(opened.hold)
                else:
                    await self._settle(opened, opened.hold.prompt_estimate, completion, "partial",
                                       plausible=True)
        finally:
            self._ended(outcome)

    async def _billable(self, opened: Opened, finished: Finished) -> tuple[int, int]:
        """The checked usage, then, where the answer was relayed in the clear and the tokenizer is
        here, the lower of it and a recount (a provider's disagreement is logged and counted)."""
        usage = finished.usage
        outcome = opened.outcome
        outcome.prompt_tokens, outcome.completion_tokens = usage.prompt_tokens, usage.completion_tokens
        if opened.prepared.media is not None:  # units already bounded (usage.settle_media_usage)
            return 0, 0
        ceiling = _prompt_ceiling(opened.hold)
        if opened.prepared.prompt_tokens is None and usage.prompt_tokens > ceiling:
            # No count of our own (consumer-blind, or no tokenizer here): the provider's figure
            # only up to what the request's size makes plausible (billing.md §4 step 1).
            self._dispute(opened, "prompt", usage.prompt_tokens, ceiling, "at most this is plausible")
            outcome.prompt_tokens = ceiling
        recount = await self._recount(opened, usage.completion_tokens)
        # Re-tokenizing generated text rarely reproduces the generation token for token: within
        # the slack the two agree and the report stands (the consumer's usage and bill match).
        if recount is not None and usage.completion_tokens > recount + _RECOUNT_SLACK:
            self._dispute(opened, "completion", usage.completion_tokens, recount,
                          "the answer recounts to this")
            outcome.completion_tokens = recount
        return outcome.prompt_tokens, outcome.completion_tokens

    def _dispute(self, opened: Opened, what: str, reported: int, billed: int, why: str) -> None:
        """A provider's count the coordinator does not accept: logged (ids and numbers only) and
        counted against the provider's identity."""
        provider = opened.committed.attempt.provider
        who = provider.identity_key or provider.id
        self.usage_disputes[who] = self.usage_disputes.get(who, 0) + 1
        log.warning("provider %s reported %d %s tokens on %s; %s: %d; billed at %d", provider.id,
                    reported, what, opened.committed.attempt.request_id, why, billed, billed)

    async def _recount(self, opened: Opened, limit: int) -> int | None:
        """``min(limit, tokens)`` of the generated text relayed in the clear, or None where the
        coordinator has no tokenizer or cannot read the answer (consumer-blind). A long answer is
        counted off the event loop, and only as far as ``limit`` (recount.py)."""
        tokenizers = self.preparer.tokenizers
        builder = tokenizers.get(opened.prepared.model.id)
        if builder is None or opened.prepared.sealed_for is not None:
            return None
        events = [opened.committed.first_chunk, *opened.delivered]
        endpoint, stream = opened.call.endpoint, opened.prepared.request.stream

        def recount() -> int:
            return count_generated(endpoint, stream, events, builder.count, limit)

        try:
            if sum(map(len, events)) > _INLINE_RECOUNT_BYTES or tokenizers.busy:
                return await tokenizers.off_loop(recount)
            return recount()
        except Exception as exc:  # the provider's text must never keep a request from settling
            log.warning("could not recount request %s (%s)", opened.outcome.id, type(exc).__name__)
            return None

    async def _delivered_tokens(self, opened: Opened, relayed: int) -> int:
        """A stream that ended early: the tokens in what the consumer received, at most the cap
        (billing.md §4). Recounted where the coordinator has the tokenizer; else one per relayed
        event that carried generated text; for consumer-blind streams (unreadable here) one per
        relayed event past the framing a stream can carry. Nothing relayed: nothing."""
        cap = opened.prepared.max_tokens_cap
        if relayed <= 0 or opened.prepared.media is not None:  # a media body comes whole or not
            return 0
        recount = await self._recount(opened, cap)
        if recount is not None:
            return recount
        if opened.prepared.sealed_for is not None:
            return min(max(relayed - STREAM_FRAMING_EVENTS, 0), cap)
        events = [opened.committed.first_chunk, *opened.delivered]
        endpoint, stream = opened.call.endpoint, opened.prepared.request.stream
        return min(await asyncio.to_thread(text_events, endpoint, stream, events), cap)

    async def _settle(self, opened: Opened, prompt: int, completion: int, status: str, *,
                      plausible: bool, media_units: int = 0) -> None:
        provider = opened.committed.attempt.provider
        hold = opened.hold
        served = charging.Served(
            prompt_tokens=prompt, completion_tokens=completion, status=status,
            endpoint=opened.call.endpoint, model=opened.prepared.model.id,
            api_key_id=opened.call.identity.key_id, provider_id=provider.id,
            provider_account_id=provider.account_id, provider_key=provider.identity_key,
            plausible=(plausible and prompt <= _prompt_ceiling(hold) and completion <= hold.max_tokens),
            ttft_ms=opened.outcome.ttft_ms, duration_ms=opened.outcome.duration_ms,
            media_units=media_units)
        try:
            await charging.settle(self.sessions, hold, served, fee_bps=self.settings.platform_fee_bps,
                                  referral_pct=self.settings.referral_share_pct)
        except (SQLAlchemyError, OSError) as exc:
            log.error("could not settle request %s (%s); its hold is refunded at the next start",
                      hold.request_id, type(exc).__name__)
        except Exception:  # a bug: its transaction rolled back, so give the hold back now
            log.exception("settling request %s failed; refunding its hold", hold.request_id)
            await self._refund(hold)

    async def _refund(self, hold: charging.Hold) -> None:
        try:
            await asyncio.shield(charging.refund(self.sessions, hold.request_id, hold.account_id))
        except (SQLAlchemyError, OSError) as exc:
            log.error("could not refund request %s (%s); it is refunded at the next start",
                      hold.request_id, type(exc).__name__)

    def _orphaned_before(self) -> datetime:
        """A hold opened before this is an orphan whoever holds it: older than any request can
        live (a wait in the queue, then a whole response deadline per attempt, then settling)."""
        settings = self.settings
        lifetime = settings.queue_timeout_s + settings.max_attempts * settings.response_deadline_s
        return datetime.now(UTC) - timedelta(seconds=max(settings.orphan_reservation_s, lifetime + 300))

    async def refund_orphans(self) -> int:
        """At start: holds a dead coordinator left open (billing.md §4): all of this coordinator's
        own (its previous run died holding them), and any other's past ``_orphaned_before``."""
        return await charging.refund_orphans(self.sessions, self.coordinator_id, self._orphaned_before())

    async def sweep_orphans(self, every_s: float) -> None:
        """While running: holds past ``_orphaned_before``, whoever's (a settlement the database
        refused, a coordinator that died and never came back), so no money stays held for long."""
        while True:
            await asyncio.sleep(every_s)
            try:
                if refunded := await charging.refund_orphans(self.sessions, None, self._orphaned_before()):
                    log.warning("refunded %d reservation(s) that outlived any request", refunded)
            except (SQLAlchemyError, OSError) as exc:
                log.warning("could not sweep orphaned reservations (%s)", type(exc).__name__)


def _media_units(prepared: Prepared, finished: Finished) -> int:
    """The audio milliseconds or images a media request completed with (already bounded by
    usage.settle_media_usage); 0 for text."""
    return 0 if prepared.media is None else getattr(finished.usage, prepared.media.unit) or 0


def _prompt_ceiling(hold: charging.Hold) -> int:
    """The most prompt tokens a request of its size plausibly has (billing.md §4 step 1)."""
    return 2 * hold.prompt_estimate + 256


def _elapsed_ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)
