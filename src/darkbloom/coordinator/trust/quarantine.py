"""Quarantine (trust.md §4 Decision): after a proven untrust the identity key, and the serial when a
certificate vouched for it, stay unroutable for a while, so reconnecting does not clear it.

Reads come from memory (routing and registration never await the database); each new entry is
written in the background and loaded again when the coordinator starts.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.coordinator.store.quarantine import QuarantineEntry, active_quarantines, add_quarantine
from darkbloom.crypto.challenge import TIMESTAMP_FORMAT

log = logging.getLogger(__name__)


class Quarantine:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], duration_s: float) -> None:
        self.sessions = sessions
        self.duration = timedelta(seconds=duration_s)
        self._keys: dict[str, QuarantineEntry] = {}
        self._serials: dict[str, QuarantineEntry] = {}
        self._writes: set[asyncio.Task[None]] = set()

    async def load(self) -> None:
        for entry in await active_quarantines(self.sessions):
            self._remember(entry)
        if self._keys:
            log.info("%d provider identity key(s) in quarantine", len(self._keys))

    def check(self, identity_key: str | None, serial: str | None,
              now: datetime | None = None) -> QuarantineEntry | None:
        """The live entry barring this key or serial, if any."""
        now = now or datetime.now(UTC)
        for table, name in ((self._keys, identity_key), (self._serials, serial)):
            entry = table.get(name) if name else None
            if entry is not None and entry.until > now:
                return entry
        return None

    def add(self, identity_key: str, serial: str | None, reason: str) -> QuarantineEntry:
        """Bar the key (and serial) at once; the database row follows in the background."""
        now = datetime.now(UTC)
        entry = QuarantineEntry(identity_key, serial, reason[:256], now + self.duration)
        self._prune(now)
        self._remember(entry)
        log.warning("identity key %s… quarantined until %s: %s", identity_key[:16],
                    entry.until.strftime(TIMESTAMP_FORMAT), entry.reason)
        task = asyncio.create_task(self._persist(entry))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        return entry

    async def flush(self) -> None:
        await asyncio.gather(*self._writes, return_exceptions=True)

    async def _persist(self, entry: QuarantineEntry) -> None:
        try:
            await add_quarantine(self.sessions, entry)
        except (SQLAlchemyError, OSError) as exc:
            log.error("quarantine not stored (%s): it holds until this coordinator restarts",
                      type(exc).__name__)

    def _remember(self, entry: QuarantineEntry) -> None:
        for table, name in ((self._keys, entry.identity_key), (self._serials, entry.serial)):
            if name and (name not in table or table[name].until < entry.until):
                table[name] = entry

    def _prune(self, now: datetime) -> None:
        """Expired entries go, so memory holds at most one duration's worth of quarantines."""
        for table in (self._keys, self._serials):
            for name in [n for n, e in table.items() if e.until <= now]:
                del table[name]
