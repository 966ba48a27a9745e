"""Writes request outcomes off the response path; shutdown waits for writes still in flight."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.coordinator.store.requests_log import RequestOutcome, record

log = logging.getLogger(__name__)


class Recorder:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, outcome: RequestOutcome) -> None:
        task = asyncio.create_task(self._write(outcome))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, outcome: RequestOutcome) -> None:
        try:
            await record(self._sessions, outcome)
        except SQLAlchemyError as exc:
            log.error("could not record request %s: %s", outcome.id, type(exc).__name__)

    async def flush(self) -> None:
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
