"""Wake-up hints between coordinators over Redis pub/sub: a slot freed, a provider came or went.

A notice carries no state, only "look again at these models": a waiter that misses one (its
coordinator was reconnecting) is still woken by its own periodic retry, so pub/sub's
at-most-once delivery and zero retention are exactly right here, and fan-out to every node
costs one PUBLISH.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from redis.asyncio import Redis
from redis.exceptions import RedisError

from darkbloom.coordinator.cluster._aio import COMMAND_TIMEOUT_S, bounded, cancelling
from darkbloom.coordinator.cluster.keys import MAX_ID_CHARS, MAX_MODEL_CHARS, Keys, check_id

log = logging.getLogger(__name__)

MAX_NOTICE_BYTES = 16 * 1024
MAX_NOTICE_MODELS = 64
# How far apart coordinators' retries are spread after a notice: the one whose oldest waiter
# has waited longest goes first (see wake_delay).
WAKE_SPREAD_S = 0.02

Kind = Literal["slot", "presence"]


@dataclass(frozen=True, slots=True)
class Notice:
    kind: Kind
    models: tuple[str, ...]
    node_id: str  # who sent it
    provider_id: str = ""


def wake_delay(oldest_wait_s: float, queue_timeout_s: float, spread_s: float = WAKE_SPREAD_S) -> float:
    """How long a coordinator waits after a notice before retrying its queue for that model.

    Every coordinator hears a notice at about the same time and races for the freed slot; the
    Lua acquire picks one winner. Delaying each by how young its oldest waiter is turns the race
    into rough age order across coordinators (FIFO holds exactly within one coordinator)."""
    if queue_timeout_s <= 0:
        return 0.0
    share = min(1.0, max(0.0, oldest_wait_s / queue_timeout_s))
    return spread_s * (1.0 - share)


def _decode(data: Any) -> Notice | None:
    if not isinstance(data, bytes | str) or len(data) > MAX_NOTICE_BYTES:
        return None
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: deeply nested brackets, not ValueError
        return None
    if not isinstance(raw, dict):
        return None
    kind, models, node, provider = raw.get("k"), raw.get("m"), raw.get("n"), raw.get("p", "")
    if kind not in ("slot", "presence") or not isinstance(models, list) \
            or len(models) > MAX_NOTICE_MODELS or not isinstance(node, str) \
            or not isinstance(provider, str) or len(node) > MAX_ID_CHARS \
            or len(provider) > MAX_ID_CHARS:
        return None
    if not all(isinstance(m, str) and len(m) <= MAX_MODEL_CHARS for m in models):
        return None
    return Notice(kind, tuple(models), node, provider)


class Notices:
    def __init__(self, redis: Redis, prefix: str, node_id: str) -> None:
        self.redis = redis
        self.keys = Keys(prefix)
        self.node_id = check_id("node id", node_id)

    async def publish(self, kind: Kind, models: Iterable[str], provider_id: str = "") -> None:
        """Tell every coordinator to look again at ``models``; best effort (errors are logged)."""
        payload = json.dumps({"k": kind, "m": list(models)[:MAX_NOTICE_MODELS], "n": self.node_id,
                              "p": provider_id})
        try:
            async with bounded(COMMAND_TIMEOUT_S):
                await self.redis.publish(self.keys.notices, payload)
        except (RedisError, OSError) as exc:
            log.debug("could not publish a %s notice (%s)", kind, type(exc).__name__)

    async def slot_freed(self, models: Iterable[str], provider_id: str = "") -> None:
        await self.publish("slot", models, provider_id)

    async def presence_changed(self, models: Iterable[str], provider_id: str = "") -> None:
        await self.publish("presence", models, provider_id)

    async def listen(self, *, retry_s: float = 1.0) -> AsyncIterator[Notice]:
        """Notices from every node (this one's too), forever; resubscribes after an outage.

        Notices sent while the subscription was down are lost by design: callers also retry on
        a timer."""
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.keys.notices)
                while True:
                    message = await pubsub.get_message(timeout=retry_s)
                    if message is None or message.get("type") != "message":
                        continue
                    notice = _decode(message.get("data"))
                    if notice is None:
                        log.warning("ignoring a malformed cluster notice")
                        continue
                    yield notice
            except (RedisError, OSError) as exc:
                if cancelling():
                    raise asyncio.CancelledError from exc
                log.warning("cluster notices interrupted (%s); resubscribing", type(exc).__name__)
                await asyncio.sleep(retry_s)
            except Exception:  # a bug or a reply of a shape nobody expected: never stop hearing
                log.exception("cluster notices failed; resubscribing")
                await asyncio.sleep(retry_s)
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
