"""Routing v1: pick the least-loaded provider with a free slot, else wait in a per-model FIFO.

Everything here runs on the event loop thread with no await between choosing a provider and
taking its slot, so a slot is never handed out twice (protocol.md §7's "one lock").
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from darkbloom.coordinator.routing.registry import ProviderConn
from darkbloom.coordinator.trust.attestation import at_least
from darkbloom.errors import NoProviderAvailable


@dataclass(frozen=True, slots=True)
class Route:
    """Whose providers may take a request. ``owner`` (X-Darkbloom-Route: self, billing.md §5): only
    that account's own. ``paid``: only providers linked to an account, since an unlinked one
    cannot be paid (billing.md §4 step 3)."""

    owner: str | None = None
    paid: bool = False

    def admits(self, provider: ProviderConn) -> bool:
        if self.owner is not None:
            return provider.account_id == self.owner
        return not self.paid or provider.account_id is not None


ANY = Route()


@dataclass(eq=False)
class _Waiter:
    model: str
    exclude: frozenset[str]
    min_trust: str
    only: frozenset[str] | None
    route: Route
    future: asyncio.Future[ProviderConn] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


def pick_least_loaded(candidates: Iterable[ProviderConn]) -> ProviderConn | None:
    """Lowest fraction of slots in use, then fewest in flight; ties broken at random."""
    free = [p for p in candidates if p.free_slots > 0 and not p.closed]
    if not free:
        return None
    best = min((p.in_flight / p.max_concurrency, p.in_flight) for p in free)
    tied = [p for p in free if (p.in_flight / p.max_concurrency, p.in_flight) == best]
    return random.choice(tied)


class Scheduler:
    def __init__(self, queue_max: int, queue_timeout_s: float, min_trust: str = "none",
                 pass_window_s: float = 360.0) -> None:
        self.min_trust = min_trust
        self.pass_window_s = pass_window_s
        self.queue_max = queue_max
        self.queue_timeout_s = queue_timeout_s
        self.providers: dict[str, ProviderConn] = {}
        self._queues: dict[str, deque[_Waiter]] = {}

    # --- membership --------------------------------------------------------------------

    def add(self, provider: ProviderConn) -> None:
        self.providers[provider.id] = provider
        self.drain()

    def remove(self, provider: ProviderConn) -> None:
        provider.closed = True
        self.providers.pop(provider.id, None)
        # Waiters for a model nobody serves any more would otherwise sit out the full timeout.
        for model, queue in self._queues.items():
            while queue and not self.serving(model, min_trust=queue[0].min_trust, route=queue[0].route):
                waiter = queue.popleft()
                if not waiter.future.done():
                    waiter.future.set_exception(self._nobody_serves(model, waiter.min_trust))

    def serving(self, model: str, exclude: frozenset[str] = frozenset(),
                min_trust: str | None = None, only: frozenset[str] | None = None,
                route: Route = ANY) -> list[ProviderConn]:
        """Providers that may take ``model``: trusted to the network's minimum and the request's."""
        level = min_trust if min_trust and at_least(min_trust, self.min_trust) else self.min_trust
        return [p for p in self.providers.values()
                if model in p.models and p.id not in exclude and (only is None or p.id in only)
                and route.admits(p) and self.routable(p, level)]

    def routable(self, provider: ProviderConn, level: str | None = None) -> bool:
        """Connected, trusted enough, and in good standing with its challenges.

        An attested provider must have proven its identity key on this connection recently
        (trust.md §4): a replayed public attestation never answers a challenge, so it is never
        routed. A provider with no attestation has no key to challenge; it is routable only
        where the operator lowered the minimum to ``none``.
        """
        if provider.closed or provider.untrusted or provider.strikes:
            return False
        if not at_least(provider.trust_level, level or self.min_trust):
            return False
        if provider.identity_key is None:
            return True
        return (provider.last_pass is not None
                and time.monotonic() - provider.last_pass <= self.pass_window_s)

    def sessions_of(self, identity_key: str) -> list[ProviderConn]:
        return [p for p in self.providers.values() if p.identity_key == identity_key]

    def provider_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for provider in self.providers.values():
            if not self.routable(provider):
                continue
            for model in provider.models:
                counts[model] = counts.get(model, 0) + 1
        return counts

    def queue_depth(self, model: str) -> int:
        return len(self._queues.get(model, ()))

    # --- slots -------------------------------------------------------------------------

    def try_acquire(self, model: str, exclude: frozenset[str] = frozenset(),
                    min_trust: str | None = None, only: frozenset[str] | None = None,
                    route: Route = ANY) -> ProviderConn | None:
        provider = pick_least_loaded(self.serving(model, exclude, min_trust, only, route))
        if provider is not None:
            provider.in_flight += 1
        return provider

    async def acquire(self, model: str, exclude: frozenset[str] = frozenset(),
                      may_queue: bool = True, min_trust: str | None = None,
                      only: frozenset[str] | None = None, route: Route = ANY) -> ProviderConn:
        """``only``: the providers a consumer sealed its request to (consumer-blind mode)."""
        if not self.serving(model, exclude, min_trust, only, route):
            if only is not None:
                raise NoProviderAvailable(f"none of the providers the request is sealed to is "
                                          f"serving model {model!r} now; seal to others")
            if route.owner is not None:
                raise NoProviderAvailable(f"none of your own providers is serving model {model!r} "
                                          "now (X-Darkbloom-Route: self)", code="no_own_provider")
            raise self._nobody_serves(model, min_trust)
        queue = self._queues.setdefault(model, deque())
        if queue:  # FIFO: the waiters first, each to a free slot it may take
            self.drain()
        provider = self.try_acquire(model, exclude, min_trust, only, route)
        if provider is not None:
            return provider
        if not may_queue:
            raise NoProviderAvailable(f"no provider for model {model!r} has a free slot")
        if len(queue) >= self.queue_max:
            raise NoProviderAvailable(
                f"model {model!r} is at capacity: all providers are busy and the queue is full "
                f"({self.queue_max} waiting); retry shortly", headers={"Retry-After": "1"})
        waiter = _Waiter(model, exclude, min_trust or self.min_trust, only, route)
        queue.append(waiter)
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that lands
            # right after the grant, and the consumer's departure would go unnoticed.
            async with asyncio.timeout(self.queue_timeout_s):
                return await waiter.future
        except TimeoutError:
            raise NoProviderAvailable(
                f"no provider for model {model!r} became free within "
                f"{self.queue_timeout_s:g} s; retry shortly", headers={"Retry-After": "1"},
            ) from None
        except asyncio.CancelledError:
            # The consumer left in the instant between being granted a slot and resuming.
            fut = waiter.future
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release(fut.result())
            raise
        finally:
            if waiter in queue:
                queue.remove(waiter)

    def _nobody_serves(self, model: str, min_trust: str | None) -> NoProviderAvailable:
        if min_trust and not at_least(self.min_trust, min_trust) and self.serving(model):
            # Never a silent downgrade: say that trust, not capacity, is what is missing.
            return NoProviderAvailable(f"no provider at trust level {min_trust!r} or above is "
                                       f"serving model {model!r}", code="trust_level_unavailable")
        return NoProviderAvailable(f"no provider is serving model {model!r} right now; "
                                   "try again when one is online")

    def release(self, provider: ProviderConn) -> None:
        provider.in_flight = max(0, provider.in_flight - 1)
        self.drain()

    def drain(self) -> None:
        """Hand free slots to waiters, oldest first. A waiter none of the free slots is for keeps
        its place without holding up the waiters behind it: a self-routed request waiting for its
        owner's busy machine must not stop paid work reaching idle providers (billing.md §5)."""
        for model, queue in self._queues.items():
            for waiter in list(queue):
                if waiter.future.done():
                    queue.remove(waiter)
                    continue
                provider = self.try_acquire(model, waiter.exclude, waiter.min_trust, waiter.only,
                                            waiter.route)
                if provider is None:
                    continue
                queue.remove(waiter)
                waiter.future.set_result(provider)
