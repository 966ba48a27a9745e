"""Provider reputation (protocol.md §7, trust.md §7): a score in [0, 1] from what this coordinator
saw a provider identity do, kept across reconnects and restarts, and lifetime counters with it.

    score = 0.4 × job success rate + 0.3 × uptime (last 24 h, of 24 h)
          + 0.2 × challenge pass rate + 0.1 × response factor (1 at ≤ 1 s to first chunk, 0 at ≥ 10 s)

Each part is 0.5 until there is data for it. Failures are the provider's own: an error before or
after the first chunk, a first-response or accepted-but-silent timeout, a stalled stream, an
invalid chunk, a disconnect with work in flight. A consumer leaving is nobody's failure.

An attested session is keyed by its identity key before it has proven it: attestations are public,
so anyone can register with someone else's. Until the session passes a challenge its events
(strikes, heartbeats) go to a record of its own that is never stored, as trust/challenges.py
treats its failures as saying nothing about the key's holder.

``Record`` is pure (unit-tested); ``Reputations`` holds the records of connected providers, keyed
by identity, and hands changed ones to the store (``store/reputation.py``) every few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from darkbloom.coordinator.routing.registry import ProviderConn
from darkbloom.protocol.frames import Stats

log = logging.getLogger(__name__)

DAY_S = 86_400
# A heartbeat gap longer than this many intervals is downtime, not uptime.
MAX_GAP_INTERVALS = 3
# Bounds on what one heartbeat may add to the lifetime counters (a provider reports them), and on
# what the heartbeats of one second may add: heartbeats come as fast as a provider sends them.
MAX_REQUESTS_PER_BEAT = 10_000
MAX_TOKENS_PER_BEAT = 10_000_000
MAX_REQUESTS_PER_S = 100
MAX_TOKENS_PER_S = 64 * 500  # clamps.MAX_SLOTS slots at clamps.MAX_DECODE_TPS
# Measured decode speed: a moving average over answers long enough to time, clamped like the
# reported figure (protocol.md §8).
MIN_TIMED_TOKENS = 8
DECODE_SMOOTHING = 0.3
MAX_DECODE_TPS = 500.0


def _ratio(good: int, bad: int) -> float:
    return good / (good + bad) if good + bad else 0.5


@dataclass
class Record:
    """One provider identity's track record (a row of ``provider_reputation``)."""

    key: str
    account_id: str | None = None
    jobs_succeeded: int = 0
    jobs_failed: int = 0
    timeouts: int = 0
    challenges_passed: int = 0
    challenges_failed: int = 0
    response_ms_total: int = 0
    response_samples: int = 0
    requests_served: int = 0
    tokens_generated: int = 0
    last_requests_served: int = 0
    last_tokens_generated: int = 0
    uptime_total_s: int = 0  # lifetime, whole seconds
    uptime_hours: dict[int, float] = field(default_factory=dict)  # hour -> seconds seen
    decode_tps: float = 0.0
    first_seen: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.time)
    dirty: bool = True
    # False when the stored row could not be read: saving would overwrite it with this partial one.
    persist: bool = True
    # The counters as this process last read or wrote them (store/reputation.py adds the rest).
    saved: dict[str, int] = field(default_factory=dict)

    def score(self, now: float | None = None) -> float:
        uptime = self.uptime_ratio(now)
        response = 0.5
        if self.response_samples:
            average_s = self.response_ms_total / self.response_samples / 1000
            response = min(1.0, max(0.0, (10 - average_s) / 9))
        return (0.4 * _ratio(self.jobs_succeeded, self.jobs_failed)
                + 0.3 * (0.5 if uptime is None else uptime)
                + 0.2 * _ratio(self.challenges_passed, self.challenges_failed)
                + 0.1 * response)

    def uptime_ratio(self, now: float | None = None) -> float | None:
        """Seconds seen in the last 24 hours over 24 hours; None with no heartbeat on record."""
        self._prune(now)
        if not self.uptime_hours:
            return None
        return min(1.0, sum(self.uptime_hours.values()) / DAY_S)

    def _prune(self, now: float | None) -> None:
        oldest = int((now or time.time()) - DAY_S) // 3600
        for hour in [h for h in self.uptime_hours if h < oldest]:
            del self.uptime_hours[hour]

    def summary(self) -> dict[str, object]:
        """api.md §6's ``reputation`` object (GET /v1/me/providers), plus lifetime counters."""
        return {"score": round(self.score(), 4),
                "total_jobs": self.jobs_succeeded + self.jobs_failed,
                "successful_jobs": self.jobs_succeeded, "failed_jobs": self.jobs_failed,
                "timeouts": self.timeouts,
                "avg_response_time_ms": (self.response_ms_total // self.response_samples
                                         if self.response_samples else None),
                "challenges_passed": self.challenges_passed,
                "challenges_failed": self.challenges_failed,
                "total_uptime_seconds": self.uptime_total_s,
                "lifetime_requests_served": self.requests_served,
                "lifetime_tokens_generated": self.tokens_generated}

    # --- what happened ---------------------------------------------------------------------

    def succeeded(self, first_chunk_ms: float | None, completion_tokens: int = 0,
                  decode_s: float = 0.0) -> None:
        """A job done: ``first_chunk_ms`` after dispatch, then ``decode_s`` to the end. The speed
        is timed over both: the provider decides when its chunks go out, and one that holds the
        answer back and bursts it at the end has a first chunk late and a decode of nothing."""
        self.jobs_succeeded += 1
        if first_chunk_ms is not None:
            self.response_ms_total += max(0, round(first_chunk_ms))
            self.response_samples += 1
        elapsed_s = max(0.0, decode_s) + max(0.0, first_chunk_ms or 0.0) / 1000
        if completion_tokens >= MIN_TIMED_TOKENS and decode_s > 0:
            measured = min(MAX_DECODE_TPS, completion_tokens / elapsed_s)
            self.decode_tps = (measured if self.decode_tps <= 0 else
                               DECODE_SMOOTHING * measured + (1 - DECODE_SMOOTHING) * self.decode_tps)
        self._touch()

    def failed(self, timeout: bool = False) -> None:
        self.jobs_failed += 1
        self.timeouts += timeout
        self._touch()

    def challenged(self, passed: bool) -> None:
        if passed:
            self.challenges_passed += 1
        else:
            self.challenges_failed += 1
        self._touch()

    def heartbeat(self, stats: Stats, gap_s: float | None, interval_s: float,
                  now: float | None = None) -> None:
        """Add the provider's counts since its last heartbeat (all of them if its process
        restarted) and the time since it, unless the gap was long enough to be an outage. The
        counts added are bounded by the time the heartbeat covers (``gap_s``, else one interval),
        so a flood of heartbeats alternating a large figure and zero adds next to nothing."""
        now = now or time.time()
        covered = max(0.0, gap_s if gap_s is not None else interval_s)
        self.requests_served += _delta(stats.requests_served, self.last_requests_served,
                                       min(MAX_REQUESTS_PER_BEAT, int(MAX_REQUESTS_PER_S * covered)))
        self.tokens_generated += _delta(stats.tokens_generated, self.last_tokens_generated,
                                        min(MAX_TOKENS_PER_BEAT, int(MAX_TOKENS_PER_S * covered)))
        self.last_requests_served = max(0, stats.requests_served)
        self.last_tokens_generated = max(0, stats.tokens_generated)
        if gap_s is not None and 0 < gap_s <= MAX_GAP_INTERVALS * interval_s:
            hour = int(now) // 3600
            self.uptime_hours[hour] = min(3600.0, self.uptime_hours.get(hour, 0.0) + gap_s)
            self.uptime_total_s += round(gap_s)
            self._prune(now)
        self._touch(now)

    def _touch(self, now: float | None = None) -> None:
        self.last_seen = now or time.time()
        self.dirty = True


def _delta(now: int, before: int, cap: int) -> int:
    now = max(0, now)
    return min(cap, now - before if now >= before else now)


def key_of(provider: ProviderConn) -> str:
    """Whose record a session adds to: its attested identity key; else its provider token; an
    anonymous, unattested session has a record for itself only (it cannot be recognised again)."""
    if provider.identity_key:
        return provider.identity_key
    if provider.token_id:
        return f"token:{provider.token_id}"
    return f"session:{provider.id}"


Load = Callable[[str], Awaitable[Record | None]]
Save = Callable[[list[Record]], Awaitable[None]]


class Reputations:
    """The records of connected providers. Updates are synchronous (they run on frame handlers);
    ``flush`` writes what changed. A record stays in memory while any session of it is live."""

    def __init__(self, load: Load | None = None, save: Save | None = None) -> None:
        self._load, self._save = load, save
        self._records: dict[str, Record] = {}
        self._sessions: dict[str, set[str]] = {}  # key -> live session ids
        # Identity-keyed sessions seen to pass a challenge, and the never-stored records of those
        # that have not (yet), by session id.
        self._proven: set[str] = set()
        self._unproven: dict[str, Record] = {}

    async def attach(self, provider: ProviderConn) -> Record:
        """The provider's record, loaded from the store the first time its identity connects."""
        key = key_of(provider)
        record = self._records.get(key)
        failed = False
        if record is None and self._load is not None and not key.startswith("session:"):
            try:
                record = await self._load(key)
            except Exception as exc:
                failed = True
                log.warning("could not load reputation (%s); this session's is not stored",
                            type(exc).__name__)
            record = self._records.get(key, record)  # another session loaded it meanwhile
        if record is None:
            # An identity's new record is stored once a session proved the key (``of``).
            record = Record(key, dirty=provider.identity_key is None, persist=not failed)
        if provider.identity_key is None:  # a token authenticated it: its account is the token's
            record.account_id = provider.account_id or record.account_id
        self._records[key] = record
        self._sessions.setdefault(key, set()).add(provider.id)
        provider.measured_decode_tps = record.decode_tps
        return record

    def detach(self, provider: ProviderConn) -> None:
        key = key_of(provider)
        self._proven.discard(provider.id)
        self._unproven.pop(provider.id, None)
        live = self._sessions.get(key)
        if live is None:
            return
        live.discard(provider.id)
        if not live:
            del self._sessions[key]
            record = self._records.get(key)
            if record is not None and (not record.dirty or key.startswith("session:")):
                # Written already, or a session's own (never written); a dirty one leaves after
                # the flush.
                del self._records[key]

    def of(self, provider: ProviderConn) -> Record:
        """The record the provider's events count toward: its identity's once the session has
        passed a challenge (``last_pass`` is set just before the pass is reported here), else
        one of the session's own."""
        if provider.identity_key is not None and provider.id not in self._proven:
            if provider.last_pass is None:
                scratch = self._unproven.get(provider.id)
                if scratch is None:
                    scratch = self._unproven[provider.id] = Record(f"session:{provider.id}")
                return scratch
            self._proven.add(provider.id)
            self._unproven.pop(provider.id, None)
            proven = self._records.get(provider.identity_key)
            if proven is not None:
                proven.account_id = provider.account_id or proven.account_id
                proven.dirty = True
        key = key_of(provider)
        record = self._records.get(key)
        if record is None:  # never attached (unit tests, or a race with detach): track it anyway
            record = self._records[key] = Record(key, account_id=provider.account_id)
        return record

    def peek(self, provider: ProviderConn) -> Record | None:
        """The stored record a session counts toward, if this process holds it (no side effects:
        GET /v1/me/providers reads it)."""
        if provider.identity_key is not None and provider.last_pass is None:
            return None  # unproven: its events count toward a record of its own, never stored
        return self._records.get(key_of(provider))

    def score(self, provider: ProviderConn) -> float:
        record = self._records.get(key_of(provider))
        return record.score() if record is not None else 0.5

    def succeeded(self, provider: ProviderConn, first_chunk_ms: float | None,
                  completion_tokens: int = 0, decode_s: float = 0.0) -> None:
        record = self.of(provider)
        record.succeeded(first_chunk_ms, completion_tokens, decode_s)
        provider.measured_decode_tps = record.decode_tps

    def failed(self, provider: ProviderConn, timeout: bool = False) -> None:
        self.of(provider).failed(timeout)

    def records(self) -> Iterable[Record]:
        return self._records.values()

    async def flush(self) -> None:
        dirty = [r for r in self._records.values() if r.dirty]
        if not dirty or self._save is None:
            return
        for record in dirty:
            record.dirty = False
        try:
            await self._save([r for r in dirty if r.persist and not r.key.startswith("session:")])
        except Exception as exc:
            log.warning("could not save reputation (%s); will retry", type(exc).__name__)
            for record in dirty:
                record.dirty = True
            return
        for key in [k for k in self._records if k not in self._sessions]:
            if not self._records[key].dirty:
                del self._records[key]

    async def watch(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            await self.flush()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.flush()
