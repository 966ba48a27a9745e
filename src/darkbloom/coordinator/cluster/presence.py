"""Which coordinator holds which provider session, and what routing needs to know about it.

A provider's record is written only by its home coordinator (the process holding its WebSocket)
and read by every coordinator. It lives as a JSON string with a TTL: the home rewrites it on
every heartbeat and state change, and its refresh loop rewrites all of its records every
``ttl_s / 3``. A home that dies stops refreshing, so its providers vanish from everyone's view
within ``ttl_s``; readers also skip records whose home's liveness key (``node_ttl_s``) is gone,
which is usually sooner.

Per-model sorted sets (scored by the record's expiry, Redis server time) index the records;
readers never trust the index alone: a member whose record key is gone is skipped, and writers
prune expired members. No reader needs a clock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from darkbloom.coordinator.cluster._aio import COMMAND_TIMEOUT_S, bounded, cancelling
from darkbloom.coordinator.cluster.keys import MAX_MODEL_CHARS, BadName, Keys, check_id, check_model
from darkbloom.protocol.frames import Hardware, Heartbeat

log = logging.getLogger(__name__)

PRESENCE_TTL_S = 15.0
NODE_TTL_S = 10.0
# A record with its attestation (trust.md §9: readers check it themselves) fits in a few KiB; the
# bound allows a largest blob (16 KiB, 22 KiB in base64) plus a short certificate chain.
MAX_RECORD_BYTES = 64 * 1024
MAX_MODELS = 64
MAX_EXTRA = 32
MAX_CHAIN = 5
_MAX_B64_BLOB = 16 * 1024 * 4 // 3 + 4
_MAX_B64_CERT = (16 * 1024 + 2) // 3 * 4
_MGET_CHUNK = 500

# KEYS[1] record, KEYS[2] its tombstone, KEYS[3] all-providers index, KEYS[4 .. 3+n] indexes
# of the models it serves, the rest: indexes of models it no longer serves. ARGV: provider id,
# record JSON, ttl ms, n. Returns 0, writing nothing, for a session already removed: a write that
# was on its way when the session ended (a heartbeat's, a refresh's) must not bring it back.
_PUBLISH = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
local exp = now + ttl
redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)
local n = tonumber(ARGV[4])
for i = 3, #KEYS do
  if i <= 3 + n then
    redis.call('ZADD', KEYS[i], exp, ARGV[1])
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
    if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
  else
    redis.call('ZREM', KEYS[i], ARGV[1])
  end
end
return exp
"""

# KEYS: record, its tombstone, all-providers index, model indexes. ARGV: provider id, ttl ms
# (the tombstone outlives any write still on its way; session ids are never reused).
_REMOVE = """
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], '1', 'PX', tonumber(ARGV[2]))
for i = 3, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
return 1
"""

# KEYS[1] node key, KEYS[2] nodes index. ARGV: node id, value, ttl ms.
_BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
return now
"""


class RecordTooLarge(ValueError):
    """A presence record over ``MAX_RECORD_BYTES`` once encoded: refused, never truncated."""


class ProviderRecord(BaseModel):
    """What any coordinator needs to route to, seal for and bill a provider held elsewhere.

    Mirrors the routing-relevant fields of ``routing.registry.ProviderConn``; ``routable`` is the
    home's own verdict (connected, trusted, no strikes, challenge window), and ``routable_until``
    (Unix seconds by Redis's clock: ``Presence.server_time``) is when a challenge window ends, so a
    reader never routes past it even if the home is slow to republish. ``trust_level`` and
    ``identity_key`` are only the home's claim: a reader derives them itself from the attestation
    (``attestation_raw``, ``attestation_signature``, ``certificate_chain``), which it also lists
    for consumers who check providers themselves. ``extra`` carries cost-model inputs added later
    (bounded).
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    provider_id: str = Field(max_length=128)
    node_id: str = Field(max_length=128)
    account_id: str | None = Field(default=None, max_length=128)
    models: tuple[str, ...] = Field(default=(), max_length=MAX_MODELS)
    public_key_b64: str = Field(max_length=64)
    max_concurrency: int = Field(ge=1, le=1024)
    trust_level: Literal["none", "self_signed", "hardware"] = "none"
    routable: bool = False
    routable_until: float | None = None
    identity_key: str | None = Field(default=None, max_length=128)
    serial: str | None = Field(default=None, max_length=128)
    backend: str = Field(default="", max_length=64)
    version: str = Field(default="", max_length=32)
    hardware: Hardware = Field(default_factory=Hardware)
    heartbeat: Heartbeat = Field(default_factory=Heartbeat)
    reported_decode_tps: float = Field(default=0.0, ge=0, le=500)
    reported_prefill_tps: float = Field(default=0.0, ge=0, le=5000)
    measured_decode_tps: float = Field(default=0.0, ge=0, le=100_000)
    reputation: float | None = Field(default=None, ge=0, le=1)
    served: int = Field(default=0, ge=0)
    attestation_raw: str | None = Field(default=None, max_length=_MAX_B64_BLOB)
    attestation_signature: str | None = Field(default=None, max_length=200)
    certificate_chain: tuple[Annotated[str, Field(max_length=_MAX_B64_CERT)], ...] | None = Field(
        default=None, max_length=MAX_CHAIN)
    extra: dict[str, float | int | str | bool] = Field(default_factory=dict, max_length=MAX_EXTRA)
    # Per model, as the provider registered them (routing.registry.ProviderConn).
    model_slots: dict[str, Annotated[int, Field(ge=1, le=1024)]] = Field(
        default_factory=dict, max_length=MAX_MODELS)
    model_capabilities: dict[str, tuple[Annotated[str, Field(max_length=32)], ...]] = Field(
        default_factory=dict, max_length=MAX_MODELS)
    updated_at: float = Field(default_factory=time.time)

    def is_routable(self, now: float | None = None) -> bool:
        """The home's verdict, still inside the challenge window (``now``: Unix seconds by Redis's
        clock, ``Presence.server_time()``)."""
        if not self.routable:
            return False
        return self.routable_until is None or (now or time.time()) <= self.routable_until

    def encode(self, max_bytes: int = MAX_RECORD_BYTES) -> bytes:
        for model in self.models:
            check_model(model)
        data = self.model_dump_json().encode()
        if len(data) > max_bytes:
            raise RecordTooLarge(f"presence record of provider {self.provider_id} is {len(data)} "
                                 f"bytes; at most {max_bytes}")
        return data

    @classmethod
    def decode(cls, data: bytes | str, max_bytes: int = MAX_RECORD_BYTES) -> ProviderRecord | None:
        """A record read from Redis, or None (logged) if it is oversized or malformed."""
        if len(data) > max_bytes:
            log.warning("ignoring a presence record of %d bytes (at most %d)", len(data), max_bytes)
            return None
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            log.warning("ignoring a malformed presence record (%d error(s))", exc.error_count())
            return None


def _usable(record: ProviderRecord, member: str) -> bool:
    """A record is the one its key names, and its ids can be used in key names and on the bus
    (a record written past ``publish`` may say anything)."""
    if record.provider_id != member:
        log.warning("ignoring a presence record stored under another provider's id")
        return False
    try:
        check_id("provider id", record.provider_id)
        check_id("node id", record.node_id)
    except BadName:
        log.warning("ignoring a presence record with an unusable id")
        return False
    return True


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class Presence:
    """This node's presence in the cluster and everyone's provider records.

    ``publish``/``remove`` are for providers this node holds; ``get``, ``for_model`` and
    ``all`` read the whole cluster. ``run`` keeps this node's liveness key and records alive.
    """

    def __init__(self, redis: Redis, prefix: str, node_id: str, *, ttl_s: float = PRESENCE_TTL_S,
                 node_ttl_s: float = NODE_TTL_S, max_record_bytes: int = MAX_RECORD_BYTES,
                 command_timeout_s: float = COMMAND_TIMEOUT_S) -> None:
        if ttl_s <= 0 or node_ttl_s <= 0:
            raise ValueError("ttl_s and node_ttl_s must be positive")
        self.redis = redis
        self.keys = Keys(prefix)
        self.node_id = check_id("node id", node_id)
        self.ttl_s = ttl_s
        self.node_ttl_s = node_ttl_s
        self.max_record_bytes = max_record_bytes
        self.timeout_s = command_timeout_s
        self.started_at = time.time()
        # Redis's clock minus this process's (seconds), measured at every beat: wall-clock
        # deadlines that cross coordinators are written and read in Redis's time, so coordinators
        # whose clocks disagree still agree on them.
        self.clock_offset_s = 0.0
        # Records this node published and still holds: rewritten by refresh(), so a Redis that
        # restarted empty gets them back within ttl_s / 3.
        self._own: dict[str, tuple[bytes, tuple[str, ...]]] = {}
        self._publish = redis.register_script(_PUBLISH)
        self._remove = redis.register_script(_REMOVE)
        self._beat = redis.register_script(_BEAT)

    # --- this node's providers -----------------------------------------------------------

    async def publish(self, record: ProviderRecord) -> None:
        """Write (or rewrite) a provider's record; raises RecordTooLarge, BadName, RedisError."""
        if record.node_id != self.node_id:
            raise ValueError(f"record of provider {record.provider_id} names node {record.node_id}, "
                             f"not this node {self.node_id}")
        check_id("provider id", record.provider_id)
        data = record.encode(self.max_record_bytes)
        previous = self._own.get(record.provider_id)
        self._own[record.provider_id] = (data, record.models)
        gone = tuple(m for m in (previous[1] if previous else ()) if m not in record.models)
        if not await self._write(record.provider_id, data, record.models, gone):
            self._own.pop(record.provider_id, None)  # removed meanwhile: not ours to refresh

    def _keys(self, provider_id: str, models: tuple[str, ...]) -> list[str]:
        return [self.keys.provider(provider_id), self.keys.gone(provider_id), self.keys.providers,
                *(self.keys.model(m) for m in models)]

    async def _write(self, provider_id: str, data: bytes, models: tuple[str, ...],
                     gone: tuple[str, ...]) -> bool:
        async with bounded(self.timeout_s):
            return bool(await self._publish(keys=self._keys(provider_id, models + gone),
                                            args=[provider_id, data, _ms(self.ttl_s), len(models)]))

    async def remove(self, provider_id: str) -> None:
        """The provider's session ended here: nobody routes to it from now on, and a write of
        its record still on its way is refused (``_PUBLISH``)."""
        entry = self._own.pop(provider_id, None)
        models = entry[1] if entry else ()
        async with bounded(self.timeout_s):
            await self._remove(keys=self._keys(provider_id, models),
                               args=[provider_id, _ms(self.ttl_s + self.timeout_s)])

    @property
    def own(self) -> list[str]:
        return list(self._own)

    async def refresh(self) -> None:
        """Beat this node's liveness and rewrite every record it holds (one pipeline)."""
        async with bounded(self.timeout_s):
            pipe = self.redis.pipeline(transaction=False)
            await self._beat(keys=[self.keys.node(self.node_id), self.keys.nodes],
                             args=[self.node_id, self._node_value(), _ms(self.node_ttl_s)], client=pipe)
            own = list(self._own.items())
            for provider_id, (data, models) in own:
                await self._publish(keys=self._keys(provider_id, models),
                                    args=[provider_id, data, _ms(self.ttl_s), len(models)], client=pipe)
            sent = time.time()
            results = await pipe.execute()
        self._clock(results[0], sent)
        for (provider_id, (data, _)), written in zip(own, results[1:], strict=False):
            if not written and self._own.get(provider_id, (None,))[0] is data:
                del self._own[provider_id]

    async def run(self, every_s: float | None = None) -> None:
        """Refresh forever (every ``min(ttl_s, node_ttl_s) / 3`` unless told); a Redis error is
        logged and retried at the next turn, so an outage costs presence only while it lasts."""
        interval = every_s if every_s is not None else min(self.ttl_s, self.node_ttl_s) / 3
        while True:
            try:
                await self.refresh()
            except (RedisError, OSError) as exc:
                if cancelling():
                    raise asyncio.CancelledError from exc
                log.warning("could not refresh cluster presence (%s)", type(exc).__name__)
            except Exception:  # a bug must not stop the beat: this node would look dead
                log.exception("could not refresh cluster presence")
            await asyncio.sleep(interval)

    async def leave(self) -> None:
        """Clean shutdown: drop this node's records and liveness at once rather than by TTL."""
        for provider_id in list(self._own):
            await self.remove(provider_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(self.keys.node(self.node_id))
        pipe.zrem(self.keys.nodes, self.node_id)
        async with bounded(self.timeout_s):
            await pipe.execute()

    def _node_value(self) -> str:
        return json.dumps({"node_id": self.node_id, "started_at": self.started_at})

    # --- liveness ------------------------------------------------------------------------

    async def beat(self) -> None:
        """Set this node's liveness key now (``run`` does it on every turn)."""
        async with bounded(self.timeout_s):
            sent = time.time()
            now_ms = await self._beat(keys=[self.keys.node(self.node_id), self.keys.nodes],
                                      args=[self.node_id, self._node_value(), _ms(self.node_ttl_s)])
        self._clock(now_ms, sent)

    def _clock(self, server_ms: object, sent: float) -> None:
        """Redis said its time was ``server_ms`` between ``sent`` and now: take the midpoint."""
        if isinstance(server_ms, int | float | bytes | str):
            try:
                server_s = float(server_ms) / 1000
            except ValueError:
                return
            self.clock_offset_s = server_s - (sent + time.time()) / 2

    def server_time(self) -> float:
        """Now, in Unix seconds by Redis's clock (as measured at the last beat)."""
        return time.time() + self.clock_offset_s

    async def alive(self, node_ids: Iterable[str]) -> set[str]:
        """Which of ``node_ids`` have beaten within their ``node_ttl_s``."""
        ids = list(dict.fromkeys(node_ids))
        if not ids:
            return set()
        pipe = self.redis.pipeline(transaction=False)
        for node_id in ids:
            pipe.exists(self.keys.node(node_id))
        async with bounded(self.timeout_s):
            found = await pipe.execute()
        return {node_id for node_id, n in zip(ids, found, strict=True) if n}

    async def nodes(self) -> list[str]:
        """Every live coordinator process."""
        async with bounded(self.timeout_s):
            members = await self.redis.zrange(self.keys.nodes, 0, -1)
        ids = [m.decode() if isinstance(m, bytes) else str(m) for m in members]
        live = await self.alive(ids)
        return [node_id for node_id in ids if node_id in live]

    # --- everyone's providers ------------------------------------------------------------

    async def get(self, provider_id: str) -> ProviderRecord | None:
        async with bounded(self.timeout_s):
            data = await self.redis.get(self.keys.provider(provider_id))
        if data is None:
            return None
        record = ProviderRecord.decode(data, self.max_record_bytes)
        if record is None or not _usable(record, provider_id) or not await self.alive([record.node_id]):
            return None
        return record

    async def for_model(self, model: str) -> list[ProviderRecord]:
        """Live records of every provider serving ``model``, on any node (routable or not: the
        caller's gates decide)."""
        if len(model) > MAX_MODEL_CHARS:
            return []
        return await self._records(self.keys.model(check_model(model)))

    async def all(self) -> list[ProviderRecord]:
        return await self._records(self.keys.providers)

    async def _records(self, index: str) -> list[ProviderRecord]:
        async with bounded(self.timeout_s):
            members = await self.redis.zrange(index, 0, -1)
        ids = [m.decode() if isinstance(m, bytes) else str(m) for m in members]
        records: list[ProviderRecord] = []
        for start in range(0, len(ids), _MGET_CHUNK):
            chunk = ids[start:start + _MGET_CHUNK]
            async with bounded(self.timeout_s):
                values = await self.redis.mget([self.keys.provider(i) for i in chunk])
            for member, data in zip(chunk, values, strict=True):
                if data is not None and (record := ProviderRecord.decode(data, self.max_record_bytes)) \
                        and _usable(record, member):
                    records.append(record)
        live = await self.alive(r.node_id for r in records)
        return [r for r in records if r.node_id in live]
