"""Writes request records off the response path; shutdown waits for writes still in flight.

A committed request is written ``in_progress`` at once and rewritten when it ends, so a crash
leaves a visible row. A write that fails is never silent: it is logged (request id and exception
type, never content) and counted in ``lost_writes``.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import re
import secrets
from collections.abc import Coroutine
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.coordinator.store.requests_log import IN_PROGRESS, RequestOutcome, record

log = logging.getLogger(__name__)


class StateDirInUse(RuntimeError):
    """Another coordinator process runs on this state directory."""


def hold_state_dir(state_dir: Path) -> IO[bytes]:
    """Lock the state directory for this process's life (the lock goes with the process, however
    it ends). Two coordinators on one directory would share a coordinator id, and each would take
    the other's open reservations for a dead predecessor's and refund them."""
    state_dir.mkdir(parents=True, exist_ok=True)
    handle = (state_dir / "coordinator.lock").open("wb")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise StateDirInUse(f"another coordinator is running on the state directory {state_dir}; "
                            "give each coordinator its own DARKBLOOM_STATE_DIR") from None
    return handle


def coordinator_id(path: Path) -> str:
    """This coordinator's id across restarts, kept in its state directory, so that at start it
    marks only its own unfinished rows (other coordinators may share the database)."""
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        value = ""
    if not re.fullmatch(r"[0-9a-f]{16}", value):
        value = secrets.token_hex(8)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
    return value


class Recorder:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], coordinator: str | None = None) -> None:
        self._sessions = sessions
        self._coordinator = coordinator
        self._tasks: set[asyncio.Task[None]] = set()
        self._begun: dict[str, asyncio.Task[None]] = {}
        self.lost_writes = 0

    def begin(self, outcome: RequestOutcome) -> None:
        """The request is committed: its row reads ``in_progress`` until ``submit`` ends it."""
        row = replace(outcome, status=IN_PROGRESS, status_code=0, coordinator_id=self._coordinator)
        log.debug("request %s committed to provider %s after %d attempt(s)", outcome.id,
                  outcome.provider_id, outcome.attempts)
        self._begun[outcome.id] = self._spawn(self._write(row, None))

    def submit(self, outcome: RequestOutcome) -> None:
        """The request ended (or failed before it was committed): write its final row."""
        row = replace(outcome, coordinator_id=self._coordinator, ended_at=datetime.now(UTC))
        log.debug("request %s %s (%d): %d+%d tokens, %d bytes", outcome.id, outcome.status,
                  outcome.status_code, outcome.prompt_tokens, outcome.completion_tokens, outcome.bytes_out)
        self._spawn(self._write(row, self._begun.pop(outcome.id, None)))

    def _spawn(self, write: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(write)  # copies the context: its log lines carry the request id
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _write(self, row: RequestOutcome, after: asyncio.Task[None] | None) -> None:
        try:
            if after is not None:
                await asyncio.wait({after})  # the in_progress insert lands first
            await record(self._sessions, row)
        except BaseException as exc:  # whatever it is (even a cancel), the loss must be visible
            self.lost_writes += 1
            log.error("could not record request %s (%s): %s; %d record write(s) lost since start",
                      row.id, row.status, type(exc).__name__, self.lost_writes)
            if not isinstance(exc, Exception):
                raise

    async def flush(self) -> None:
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
