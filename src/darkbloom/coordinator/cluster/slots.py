"""Provider slots shared by every coordinator: leases in Redis, taken and counted atomically.

A slot is a lease: a member ``<node>/<lease id>`` of the provider's sorted set, scored by its
expiry (Redis server time, so coordinators' clocks never matter). ``acquire`` is one Lua script
that drops expired leases, counts the live ones and adds a lease only below the provider's
``max_concurrency``: two coordinators can never both take the last slot. The coordinator that
routed a request holds its lease and renews it every ``lease_s / 3`` while the attempt lives; if
that coordinator dies, its leases lapse within ``lease_s`` and the slots come back by themselves.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from darkbloom.coordinator.cluster._aio import COMMAND_TIMEOUT_S, bounded, cancelling
from darkbloom.coordinator.cluster.keys import Keys, check_id

log = logging.getLogger(__name__)

LEASE_S = 15.0
_CHUNK = 500

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS[1] the provider's slot set. ARGV: member, max_concurrency, lease ms.
# Returns the live lease count after taking one, or 0 if every slot is taken.
_ACQUIRE = _NOW + """
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
  return redis.call('ZCARD', KEYS[1])
end
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
if redis.call('PTTL', KEYS[1]) < lease then redis.call('PEXPIRE', KEYS[1], lease) end
return n + 1
"""

# KEYS: slot sets; ARGV[1] lease ms, ARGV[1 + i] the member held in KEYS[i]. Only leases that still
# exist are extended (XX): a lease that lapsed is gone for good, its slot possibly re-let.
_RENEW = _NOW + """
local lease = tonumber(ARGV[1])
local renewed = 0
for i = 1, #KEYS do
  renewed = renewed + redis.call('ZADD', KEYS[i], 'XX', 'CH', now + lease, ARGV[i + 1])
  if redis.call('PTTL', KEYS[i]) < lease then redis.call('PEXPIRE', KEYS[i], lease) end
end
return renewed
"""

# KEYS: slot sets. Returns the live lease count of each.
_COUNT = _NOW + """
local counts = {}
for i = 1, #KEYS do counts[i] = redis.call('ZCOUNT', KEYS[i], '(' .. now, '+inf') end
return counts
"""


@dataclass(frozen=True, slots=True)
class Lease:
    """One slot on one provider, held by this node until released or lapsed."""

    provider_id: str
    lease_id: str
    member: str  # "<node id>/<lease id>"


class Slots:
    """This node's leases, and everyone's counts."""

    def __init__(self, redis: Redis, prefix: str, node_id: str, *, lease_s: float = LEASE_S,
                 command_timeout_s: float = COMMAND_TIMEOUT_S) -> None:
        if lease_s <= 0:
            raise ValueError("lease_s must be positive")
        self.redis = redis
        self.keys = Keys(prefix)
        self.node_id = check_id("node id", node_id)
        self.lease_s = lease_s
        self.timeout_s = command_timeout_s
        self._cleanup: set[asyncio.Task[None]] = set()
        self.held: dict[str, Lease] = {}  # member -> lease, renewed by run()
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._count = redis.register_script(_COUNT)

    @property
    def _lease_ms(self) -> int:
        return max(1, round(self.lease_s * 1000))

    async def acquire(self, provider_id: str, max_concurrency: int,
                      lease_id: str | None = None) -> Lease | None:
        """Take one of the provider's ``max_concurrency`` slots, or None if all are taken.

        Taking a lease this node already holds again only renews it (a retried call after a
        lost reply never takes two). Raises RedisError: the caller decides what an outage means.
        """
        check_id("provider id", provider_id)
        lease_id = check_id("lease id", lease_id or uuid.uuid4().hex)
        member = f"{self.node_id}/{lease_id}"
        try:
            async with bounded(self.timeout_s):
                taken = await self._acquire(keys=[self.keys.slots(provider_id)],
                                            args=[member, max(0, max_concurrency), self._lease_ms])
        except BaseException:
            # Cancelled or timed out after Redis may have run the script: give back a lease the
            # caller will never know it holds (it would otherwise lapse only after lease_s).
            if member not in self.held:
                task = asyncio.create_task(self._give_back(provider_id, member))
                self._cleanup.add(task)
                task.add_done_callback(self._cleanup.discard)
            raise
        if not taken:
            return None
        lease = Lease(provider_id, lease_id, member)
        self.held[member] = lease
        return lease

    async def _give_back(self, provider_id: str, member: str) -> None:
        try:
            async with bounded(self.timeout_s):
                await self.redis.zrem(self.keys.slots(provider_id), member)
        except (RedisError, OSError) as exc:
            log.warning("could not give back an abandoned slot lease (%s); it lapses in %g s",
                        type(exc).__name__, self.lease_s)

    async def release(self, lease: Lease) -> bool:
        """Give the slot back; False if it had already lapsed (or was released)."""
        self.held.pop(lease.member, None)
        async with bounded(self.timeout_s):
            return bool(await self.redis.zrem(self.keys.slots(lease.provider_id), lease.member))

    async def renew(self) -> int:
        """Extend every lease this node holds; returns how many still existed. One that lapsed
        (this node stalled past ``lease_s``, or Redis lost it) is dropped from ``held``: its slot
        may already be someone else's, and the attempt using it goes on uncounted."""
        leases = list(self.held.values())
        renewed = 0
        for start in range(0, len(leases), _CHUNK):
            chunk = leases[start:start + _CHUNK]
            async with bounded(self.timeout_s):
                renewed += int(await self._renew(
                    keys=[self.keys.slots(lease.provider_id) for lease in chunk],
                    args=[self._lease_ms, *(lease.member for lease in chunk)]))
        if renewed < len(leases):
            log.warning("%d slot lease(s) lapsed before renewal", len(leases) - renewed)
            await self._forget_lapsed(leases)
        return renewed

    async def _forget_lapsed(self, leases: list[Lease]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for lease in leases:
            pipe.zscore(self.keys.slots(lease.provider_id), lease.member)
        async with bounded(self.timeout_s):
            scores = await pipe.execute()
        for lease, score in zip(leases, scores, strict=True):
            if score is None:
                self.held.pop(lease.member, None)

    async def run(self, every_s: float | None = None) -> None:
        """Renew forever (every ``lease_s / 3`` unless told); Redis errors are logged and retried."""
        interval = every_s if every_s is not None else self.lease_s / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self.renew()
            except (RedisError, OSError) as exc:
                if cancelling():
                    raise asyncio.CancelledError from exc
                log.warning("could not renew slot leases (%s)", type(exc).__name__)
            except Exception:  # a bug must not stop renewals: every lease would lapse
                log.exception("could not renew slot leases")

    async def release_all(self) -> None:
        """Clean shutdown: give back every slot this node holds."""
        leases = list(self.held.values())
        self.held.clear()
        if not leases:
            return
        pipe = self.redis.pipeline(transaction=False)
        for lease in leases:
            pipe.zrem(self.keys.slots(lease.provider_id), lease.member)
        async with bounded(self.timeout_s):
            await pipe.execute()

    async def in_flight(self, provider_id: str) -> int:
        """Live leases on one provider, whoever holds them."""
        return (await self.in_flight_many([provider_id]))[provider_id]

    async def in_flight_many(self, provider_ids: Iterable[str]) -> dict[str, int]:
        ids = list(dict.fromkeys(provider_ids))
        counts: dict[str, int] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            async with bounded(self.timeout_s):
                found = await self._count(keys=[self.keys.slots(i) for i in chunk], args=[])
            counts.update(zip(chunk, (int(n) for n in found), strict=True))
        return counts
