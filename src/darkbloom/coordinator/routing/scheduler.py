"""Routing (protocol.md §7): the eligible provider with the lowest cost takes the request, else it
waits in a per-model FIFO until one can.

Eligibility is a chain of gates: serves the model; connected; trusted to the network's minimum
and the request's; in good standing with its challenges (passed within the window); a free slot;
health from its last heartbeat (``cost.unfit``: slot state, thermal state, free memory). The cost
of each eligible provider is ``cost.quote`` (load, measured speed, health, reputation).

At scale a decision prices at most ``SAMPLE`` eligible providers ("power of k choices"): with
more providers than that for a model, the walk starts at a random place in the model's pool and
prices the first ``SAMPLE`` that pass every gate. Up to ``SAMPLE`` providers per model it is
protocol.md §7 exactly. That keeps one decision near-constant in the network's size (see
docs/BENCHMARKS.md, routing at 1,000 and 10,000 providers).

Everything here runs on the event loop thread with no await between choosing a provider and
taking its slot, so a slot is never handed out twice (protocol.md §7's "one lock").
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from darkbloom.coordinator.routing.affinity import LastServed
from darkbloom.coordinator.routing.cost import WEIGHTS, Demand, Weights, choose, quote, unfit
from darkbloom.coordinator.routing.registry import ProviderConn
from darkbloom.coordinator.routing.reputation import Reputations
from darkbloom.coordinator.trust.attestation import at_least
from darkbloom.errors import DarkbloomError, NoProviderAvailable
from darkbloom.inference.capabilities import CAPABILITIES, Unsupported, refusal


@dataclass(frozen=True, slots=True)
class Route:
    """Whose providers may take a request. ``owner`` (X-Darkbloom-Route: self, billing.md §5): only
    that account's own. ``paid``: only providers linked to an account, since an unlinked one
    cannot be paid (billing.md §4 step 3). ``consumer``: the account asking, whose last provider
    for the model is preferred among near-ties (its KV prefix may still be cached there:
    routing/affinity.py); it admits nothing by itself."""

    owner: str | None = None
    paid: bool = False
    consumer: str | None = None

    def admits(self, provider: ProviderConn) -> bool:
        if self.owner is not None:
            return provider.account_id == self.owner
        return not self.paid or provider.account_id is not None


ANY = Route()


# Eligible providers priced per decision (see the module docstring).
SAMPLE = 32


@dataclass(frozen=True, slots=True)
class ModelSummary:
    """What /v1/models says of a model's providers: how many are routable, how many of those
    are attested (a challenged identity key), and the highest trust level among them."""

    providers: int = 0
    attested: int = 0
    trust_level: str = "none"


class SlotLeases(Protocol):
    async def lease(self, provider: ProviderConn) -> bool: ...

    def released(self, provider: ProviderConn) -> None: ...


# How many times a request may find its chosen provider filled by another coordinator.
LEASE_TRIES = 8
# How long the estimate of this coordinator's own capacity for a model is reused (_stay).
OWN_CAPACITY_S = 0.1


@dataclass(eq=False)
class _Waiter:
    demand: Demand
    exclude: frozenset[str]
    min_trust: str
    only: frozenset[str] | None
    route: Route
    future: asyncio.Future[ProviderConn] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    since: float = field(default_factory=time.monotonic)


class Scheduler:
    def __init__(self, queue_max: int, queue_timeout_s: float, min_trust: str = "none",
                 pass_window_s: float = 360.0, reputations: Reputations | None = None,
                 weights: Weights = WEIGHTS) -> None:
        self.reputations = reputations or Reputations()
        # With several coordinators (coordinator/cluster/link.py): every slot is also leased in
        # Redis, so no provider is over-filled by coordinators choosing at the same moment.
        self.link: SlotLeases | None = None
        self.weights = weights
        self.last_served = LastServed()
        self.min_trust = min_trust
        self.pass_window_s = pass_window_s
        self.queue_max = queue_max
        self.queue_timeout_s = queue_timeout_s
        # (model, excluded, trust level, route) -> (when, slots, best tps) of this coordinator's
        # own providers that may take such a request (_stay)
        self._own_cache: dict[tuple[str, frozenset[str], str, Route], tuple[float, int, float]] = {}
        self._recheck: asyncio.TimerHandle | None = None  # a drain once a waiter may cross
        self.providers: dict[str, ProviderConn] = {}
        self._queues: dict[str, deque[_Waiter]] = {}
        # Per model, the connected providers serving it, in a tuple rebuilt on membership change.
        self._serving: dict[str, dict[str, ProviderConn]] = {}
        self._pools: dict[str, tuple[ProviderConn, ...]] = {}
        self._owned: dict[str, dict[str, ProviderConn]] = {}  # account -> its providers

    # --- membership --------------------------------------------------------------------

    def add(self, provider: ProviderConn) -> None:
        self.providers[provider.id] = provider
        if provider.account_id is not None:
            self._owned.setdefault(provider.account_id, {})[provider.id] = provider
        for model in provider.models:
            self._serving.setdefault(model, {})[provider.id] = provider
            self._pools.pop(model, None)
        self.drain()

    def set_account(self, provider: ProviderConn, account_id: str) -> None:
        """A provider's account became known (a mirrored one, looked up after it was added)."""
        provider.account_id = account_id
        if provider.id in self.providers:
            self._owned.setdefault(account_id, {})[provider.id] = provider
        self.drain()

    def _pool(self, model: str) -> tuple[ProviderConn, ...]:
        pool = self._pools.get(model)
        if pool is None:
            pool = self._pools[model] = tuple(self._serving.get(model, {}).values())
        return pool

    def remove(self, provider: ProviderConn) -> None:
        provider.closed = True
        if self.providers.pop(provider.id, None) is not None:
            owned = self._owned.get(provider.account_id or "", {})
            owned.pop(provider.id, None)
            if not owned:
                self._owned.pop(provider.account_id or "", None)
            for model in provider.models:
                self._serving.get(model, {}).pop(provider.id, None)
                self._pools.pop(model, None)
        # Waiters for a model nobody serves any more, or that none of those left can do, would
        # otherwise sit out the full timeout: each gets the answer it would get if it came now.
        for model in provider.models:
            queue = self._queues.get(model)
            if queue:
                self._unservable(model, queue)

    def _unservable(self, model: str, queue: deque[_Waiter]) -> None:
        """Fail the waiters of ``model`` no provider left may take (looked up once per kind)."""
        answers: dict[tuple[frozenset[str], frozenset[str], str, frozenset[str] | None, Route],
                      DarkbloomError | None] = {}
        for waiter in list(queue):
            key = (waiter.demand.needs, waiter.exclude, waiter.min_trust, waiter.only, waiter.route)
            if key not in answers:
                answers[key] = self._why_not(model, waiter)
            error = answers[key]
            if error is None:
                continue
            queue.remove(waiter)
            if not waiter.future.done():
                waiter.future.set_exception(error)

    def _why_not(self, model: str, waiter: _Waiter) -> DarkbloomError | None:
        serving = self.serving(model, waiter.exclude, waiter.min_trust, waiter.only, waiter.route)
        if not serving:
            return self._nobody_serves(model, waiter.min_trust)
        needs = waiter.demand.needs
        if needs and not any(p.can(model, needs) for p in serving):
            return self._incapable(model, needs, serving)
        return None

    @staticmethod
    def _incapable(model: str, needs: frozenset[str], serving: list[ProviderConn]) -> Unsupported:
        offered = frozenset[str]().union(
            *(p.model_capabilities.get(model, CAPABILITIES) for p in serving))
        return refusal(needs - offered or needs)

    def serving(self, model: str, exclude: frozenset[str] = frozenset(),
                min_trust: str | None = None, only: frozenset[str] | None = None,
                route: Route = ANY) -> list[ProviderConn]:
        """Providers that may take ``model``: trusted to the network's minimum and the request's."""
        level = self._level(min_trust)
        return [p for p in self._pool(model)
                if p.id not in exclude and (only is None or p.id in only)
                and route.admits(p) and self.routable(p, level)]

    def _level(self, min_trust: str | None) -> str:
        return min_trust if min_trust and at_least(min_trust, self.min_trust) else self.min_trust

    def _candidates(self, demand: Demand, exclude: frozenset[str], min_trust: str | None,
                    only: frozenset[str] | None, route: Route) -> list[ProviderConn]:
        """Up to ``SAMPLE`` providers that pass every gate for this request, found by a walk
        from a random place in the model's pool (all of them when the pool is that small)."""
        pool = self._pool(demand.model)
        if only is not None:  # sealed to a few: look at those alone
            pool = tuple(p for p in (self.providers.get(i) for i in sorted(only)[:64])
                         if p is not None and demand.model in p.models)
        elif route.owner is not None:  # the owner's own machines alone
            pool = tuple(p for p in self._owned.get(route.owner, {}).values()
                         if demand.model in p.models)
        level = self._level(min_trust)
        found: list[ProviderConn] = []
        start = random.randrange(len(pool)) if len(pool) > SAMPLE else 0
        for i in range(len(pool)):
            p = pool[(start + i) % len(pool)]
            if (p.has_room(demand.model) and p.can(demand.model, demand.needs)
                    and p.id not in exclude and (only is None or p.id in only)
                    and route.admits(p) and self.routable(p, level)
                    and unfit(p, demand, self.weights) is None):
                found.append(p)
                if len(found) == SAMPLE:
                    break
        return found

    def routable(self, provider: ProviderConn, level: str | None = None) -> bool:
        """Connected, trusted enough, and in good standing with its challenges.

        An attested provider must have proven its identity key on this connection recently
        (trust.md §4): a replayed public attestation never answers a challenge, so it is never
        routed. A provider with no attestation has no key to challenge; it is routable only
        where the operator lowered the minimum to ``none``.
        """
        if provider.closed or provider.untrusted or provider.strikes or provider.runtime_mismatch:
            return False
        if not at_least(provider.trust_level, level or self.min_trust):
            return False
        if provider.home is not None:  # held by another coordinator: its verdict, while it lasts
            return provider.routable_until is not None and time.time() <= provider.routable_until
        if provider.identity_key is None:
            return True
        return (provider.last_pass is not None
                and time.monotonic() - provider.last_pass <= self.pass_window_s)

    def owned_by(self, account_id: str) -> list[ProviderConn]:
        """The live sessions earning for ``account_id``: this coordinator's own and those it
        mirrors from others (GET /v1/me/providers)."""
        return list(self._owned.get(account_id, {}).values())

    def sessions_of(self, identity_key: str) -> list[ProviderConn]:
        return [p for p in self.providers.values() if p.identity_key == identity_key]

    def model_summaries(self) -> dict[str, ModelSummary]:
        summaries: dict[str, ModelSummary] = {}
        for provider in self.providers.values():
            if not self.routable(provider):
                continue
            attested = provider.identity_key is not None
            for model in provider.models:
                seen = summaries.get(model, ModelSummary())
                summaries[model] = ModelSummary(
                    seen.providers + 1, seen.attested + attested,
                    provider.trust_level if at_least(provider.trust_level, seen.trust_level)
                    else seen.trust_level)
        return summaries

    def queue_depth(self, model: str) -> int:
        return len(self._queues.get(model, ()))

    # --- slots -------------------------------------------------------------------------

    def try_acquire(self, demand: Demand, exclude: frozenset[str] = frozenset(),
                    min_trust: str | None = None, only: frozenset[str] | None = None,
                    route: Route = ANY, ahead: int | None = None,
                    waited_s: float = 0.0) -> ProviderConn | None:
        """The cheapest eligible provider with a free slot, its slot taken; None if none can.
        ``ahead``: the request may wait in this coordinator's queue behind that many others
        (None: it may not), so a provider held elsewhere is taken only if none of this
        coordinator's own is expected to free sooner than crossing costs (``_stay``)."""
        quotes = [quote(p, demand, self._reputation(p), self.weights)
                  for p in self._candidates(demand, exclude, min_trust, only, route)]
        provider = choose(quotes, self.weights,
                          prefer=self.last_served.get(route.consumer, demand.model))
        if (provider is not None and provider.home is not None and ahead is not None
                and only is None
                and self._stay(demand, ahead, waited_s, exclude, min_trust, route)):
            return None
        if provider is not None:
            provider.take_slot(demand.model, demand.max_tokens)
        return provider

    def _stay(self, demand: Demand, ahead: int, waited_s: float, exclude: frozenset[str],
              min_trust: str | None, route: Route) -> bool:
        """Whether to wait for one of this coordinator's own providers rather than cross to one
        held elsewhere: the wait so far plus the expected rest, (the waiters ahead + 1) over
        their slots times the time an answer of this size takes there, is still under what
        crossing is priced at (``Weights.elsewhere_ms``). Where answers take seconds the
        request crosses at once; where they take a tenth of a second it stays home."""
        slots, tps = self._own_capacity(demand.model, exclude, self._level(min_trust), route)
        if not slots:
            return False
        answer_ms = demand.max_tokens / max(1.0, tps) * 1000
        # Never longer than crossing is priced at, nor than half the queue's patience.
        limit_ms = min(self.weights.elsewhere_ms, self.queue_timeout_s * 500)
        stay_ms = limit_ms - waited_s * 1000 - (ahead + 1) / slots * answer_ms
        if stay_ms <= 0:
            return False
        # Nothing else may happen before crossing is due for it: look again then.
        loop = asyncio.get_running_loop()
        due = loop.time() + stay_ms / 1000
        if self._recheck is None or due < self._recheck.when():
            if self._recheck is not None:
                self._recheck.cancel()
            self._recheck = loop.call_at(due, self._rechecked)
        return True

    def _rechecked(self) -> None:
        self._recheck = None
        self.drain()

    def _own_capacity(self, model: str, exclude: frozenset[str], level: str,
                      route: Route) -> tuple[int, float]:
        """Slots and best decode speed of this coordinator's own providers that may take such a
        request: an estimate, so kept for OWN_CAPACITY_S rather than walked per waiter."""
        key = (model, exclude, level, route)
        now = time.monotonic()
        cached = self._own_cache.get(key)
        if cached is not None and now - cached[0] < OWN_CAPACITY_S:
            return cached[1], cached[2]
        own = [p for p in self._pool(model) if p.home is None and p.id not in exclude
               and route.admits(p) and self.routable(p, level)]
        slots = sum(p.max_concurrency for p in own)
        tps = max((p.decode_tps for p in own), default=0.0)
        if len(self._own_cache) > 4096:
            self._own_cache.clear()
        self._own_cache[key] = (now, slots, tps)
        return slots, tps

    def _reputation(self, provider: ProviderConn) -> float:
        """The score of the coordinator that keeps the provider's record: this one's, or for a
        provider held elsewhere, its home's (published with its presence)."""
        if provider.home is not None:
            return 0.5 if provider.remote_reputation is None else provider.remote_reputation
        return self.reputations.score(provider)

    async def acquire(self, demand: Demand, exclude: frozenset[str] = frozenset(),
                      may_queue: bool = True, min_trust: str | None = None,
                      only: frozenset[str] | None = None, route: Route = ANY) -> ProviderConn:
        """A provider for the request, its slot taken (and leased cluster-wide when clustered).
        ``only``: the providers a consumer sealed its request to (consumer-blind mode)."""
        deadline = asyncio.get_running_loop().time() + self.queue_timeout_s
        tries = 0
        while True:
            # After LEASE_TRIES providers turned out full elsewhere, the model is at capacity
            # across the cluster: wait in the queue for a freed slot, as on one coordinator,
            # instead of answering 503 while every slot is merely busy.
            remaining = deadline - asyncio.get_running_loop().time()
            provider = await self._acquire(demand, exclude, may_queue, min_trust, only, route,
                                           wait=tries >= LEASE_TRIES, timeout_s=remaining)
            if self.link is None:
                return provider
            try:
                leased = await self.link.lease(provider)
            except BaseException:
                self._free(provider, demand)
                raise
            if leased:
                return provider
            self._free(provider, demand)  # another coordinator filled it: choose again
            tries += 1
            if tries >= LEASE_TRIES and (not may_queue
                                         or asyncio.get_running_loop().time() >= deadline):
                raise NoProviderAvailable(f"no provider for model {demand.model!r} has a free "
                                          "slot; retry shortly", headers={"Retry-After": "1"})

    async def _acquire(self, demand: Demand, exclude: frozenset[str], may_queue: bool,
                       min_trust: str | None, only: frozenset[str] | None,
                       route: Route, wait: bool = False, timeout_s: float | None = None
                       ) -> ProviderConn:
        """A provider with a free slot now, else a place in the model's queue. ``wait``: queue
        without looking (every provider that looked free was full elsewhere)."""
        model = demand.model
        serving = self.serving(model, exclude, min_trust, only, route)
        if not serving:
            if only is not None:
                raise NoProviderAvailable(f"none of the providers the request is sealed to is "
                                          f"serving model {model!r} now; seal to others")
            if route.owner is not None:
                raise NoProviderAvailable(f"none of your own providers is serving model {model!r} "
                                          "now (X-Darkbloom-Route: self)", code="no_own_provider")
            raise self._nobody_serves(model, min_trust)
        if demand.needs and not any(p.can(model, demand.needs) for p in serving):
            # Unsupported: the caller names the field in the client's dialect, and on a retry
            # (the capable one failed) reports that failure instead (commit.py).
            raise self._incapable(model, demand.needs, serving)
        queue = self._queues.setdefault(model, deque())
        if queue:  # FIFO: the waiters first, each to a free slot it may take
            self.drain()
        patient = may_queue and self._queued(queue, route, only) < self.queue_max
        provider = None if wait else self.try_acquire(demand, exclude, min_trust, only, route,
                                                      ahead=len(queue) if patient else None)
        if provider is not None:
            return provider
        if not may_queue:
            raise NoProviderAvailable(f"no provider for model {model!r} has a free slot")
        if self._queued(queue, route, only) >= self.queue_max:
            raise NoProviderAvailable(
                f"model {model!r} is at capacity: all providers are busy and the queue is full "
                f"({self.queue_max} waiting); retry shortly", headers={"Retry-After": "1"})
        waiter = _Waiter(demand, exclude, min_trust or self.min_trust, only, route)
        queue.append(waiter)
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that lands
            # right after the grant, and the consumer's departure would go unnoticed.
            async with asyncio.timeout(self.queue_timeout_s if timeout_s is None
                                       else max(0.0, timeout_s)):
                return await waiter.future
        except TimeoutError:
            fut = waiter.future
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._free(fut.result(), demand)  # granted in the same instant: give it back
            raise NoProviderAvailable(
                f"no provider for model {model!r} became free within "
                f"{self.queue_timeout_s:g} s; retry shortly", headers={"Retry-After": "1"},
            ) from None
        except asyncio.CancelledError:
            # The consumer left in the instant between being granted a slot and resuming.
            fut = waiter.future
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._free(fut.result(), demand)
            raise
        finally:
            if waiter in queue:
                queue.remove(waiter)

    @staticmethod
    def _queued(queue: deque[_Waiter], route: Route, only: frozenset[str] | None) -> int:
        """The waiters a new one counts against: requests any provider may take share the model's
        queue; one only its owner's machines (or the providers it is sealed to) may take counts
        against its own kind alone, so it cannot fill everyone's queue for a machine nobody
        else could use."""
        if route.owner is None and only is None:
            return sum(1 for w in queue if w.route.owner is None and w.only is None)
        return sum(1 for w in queue if w.route.owner == route.owner and w.only == only)

    def _nobody_serves(self, model: str, min_trust: str | None) -> NoProviderAvailable:
        if min_trust and not at_least(self.min_trust, min_trust) and self.serving(model):
            # Never a silent downgrade: say that trust, not capacity, is what is missing.
            return NoProviderAvailable(f"no provider at trust level {min_trust!r} or above is "
                                       f"serving model {model!r}", code="trust_level_unavailable")
        return NoProviderAvailable(f"no provider is serving model {model!r} right now; "
                                   "try again when one is online")

    def release(self, provider: ProviderConn, demand: Demand) -> None:
        """A dispatch ended: its slot (and its lease) back."""
        if self.link is not None:
            self.link.released(provider)
        self._free(provider, demand)

    def _free(self, provider: ProviderConn, demand: Demand) -> None:
        provider.free_slot(demand.model, demand.max_tokens)
        self.drain()

    def drain(self) -> None:
        """Hand free slots to waiters, oldest first. A waiter none of the free slots is for keeps
        its place without holding up the waiters behind it: a self-routed request waiting for its
        owner's busy machine must not stop paid work reaching idle providers (billing.md §5)."""
        for model, queue in self._queues.items():
            if not queue or not any(p.has_room(model) for p in self._pool(model)):
                continue  # nothing to hand out: no walk per waiter
            now = time.monotonic()
            for ahead, waiter in enumerate(list(queue)):
                if waiter.future.done():
                    queue.remove(waiter)
                    continue
                provider = self.try_acquire(waiter.demand, waiter.exclude, waiter.min_trust,
                                            waiter.only, waiter.route, ahead=ahead,
                                            waited_s=now - waiter.since)
                if provider is None:
                    continue
                queue.remove(waiter)
                waiter.future.set_result(provider)
