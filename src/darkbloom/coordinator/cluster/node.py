"""One coordinator process's membership in the cluster: a Redis client and the loops that keep
its presence, leases and bus alive. The coordinator makes one at start when ``redis_url`` is set.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from redis.asyncio import Redis
from redis.exceptions import RedisError

from darkbloom.coordinator.cluster._aio import client, stop
from darkbloom.coordinator.cluster.bus import Bus
from darkbloom.coordinator.cluster.keys import check_id
from darkbloom.coordinator.cluster.notices import Notices
from darkbloom.coordinator.cluster.presence import NODE_TTL_S, PRESENCE_TTL_S, Presence
from darkbloom.coordinator.cluster.slots import LEASE_S, Slots

log = logging.getLogger(__name__)


def new_node_id(coordinator_id: str | None = None) -> str:
    """A node id for this run of a coordinator: its persistent id (``recorder.coordinator_id``)
    plus a random suffix, so a restarted process is a new node. Its predecessor's inbox, leases
    and presence then simply expire; nothing of the old run is read as the new one's."""
    base = "".join(c for c in (coordinator_id or "coordinator") if "!" <= c <= "~")[:48]
    return check_id("node id", f"{base or 'coordinator'}-{secrets.token_hex(4)}")


class Cluster:
    """``presence``, ``slots``, ``bus`` and ``notices`` for this node, started and stopped together."""

    def __init__(self, redis: Redis, prefix: str, node_id: str, *,
                 presence_ttl_s: float = PRESENCE_TTL_S, node_ttl_s: float = NODE_TTL_S,
                 lease_s: float = LEASE_S, owns_client: bool = False) -> None:
        self.redis = redis
        self.node_id = node_id
        self.presence = Presence(redis, prefix, node_id, ttl_s=presence_ttl_s, node_ttl_s=node_ttl_s)
        self.slots = Slots(redis, prefix, node_id, lease_s=lease_s)
        self.bus = Bus(redis, prefix, node_id, liveness=self.presence)
        self.notices = Notices(redis, prefix, node_id)
        self._owns_client = owns_client
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def from_url(cls, redis_url: str, prefix: str, node_id: str, *,
                 presence_ttl_s: float = PRESENCE_TTL_S, node_ttl_s: float = NODE_TTL_S,
                 lease_s: float = LEASE_S) -> Cluster:
        """A client of its own (``_aio.client``: no socket_timeout, so cancels are never lost;
        the pool bounded: two blocked readers, the writer, and the callers)."""
        redis = client(redis_url)
        return cls(redis, prefix, node_id, presence_ttl_s=presence_ttl_s, node_ttl_s=node_ttl_s,
                   lease_s=lease_s, owns_client=True)

    async def start(self) -> None:
        """Beat first (peers may address this node once it is alive), then start the loops.
        Raises RedisError if Redis cannot be reached now: the coordinator should not start
        half-clustered."""
        await self.presence.beat()
        await self.bus.start()
        self._tasks = [asyncio.create_task(self.presence.run(), name="cluster-presence"),
                       asyncio.create_task(self.slots.run(), name="cluster-slots")]

    async def close(self) -> None:
        """Clean shutdown: leave the cluster at once (records, leases, liveness) rather than by TTL."""
        tasks, self._tasks = self._tasks, []
        await stop(tasks)
        await self.bus.close()
        try:
            await self.slots.release_all()
            await self.presence.leave()
        except (RedisError, OSError) as exc:
            log.warning("could not leave the cluster cleanly (%s); its keys expire", type(exc).__name__)
        if self._owns_client:
            await self.redis.aclose()
