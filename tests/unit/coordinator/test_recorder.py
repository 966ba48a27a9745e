"""The recorder never loses a request row silently; every value is bounded to fit its column."""

from __future__ import annotations

import asyncio
import logging
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.coordinator.recorder import Recorder, coordinator_id
from darkbloom.coordinator.store.requests_log import RequestOutcome, bounded
from darkbloom.logcontext import REQUEST_ID

SECRET = "zebra-canary-in-an-exception-message"


def outcome(**fields: Any) -> RequestOutcome:
    base: dict[str, Any] = {"id": "r1", "endpoint": "/v1/chat/completions", "model": "m",
                            "stream": True, "created_at": datetime.now(UTC)}
    return RequestOutcome(**{**base, **fields})


class BrokenSessions:
    """A database that fails every write with ``error`` (whose message quotes the request)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.writes = 0

    def begin(self) -> Any:
        self.writes += 1
        raise self.error


def recorder(error: BaseException) -> tuple[Recorder, BrokenSessions]:
    broken = BrokenSessions(error)
    return Recorder(cast(async_sessionmaker[AsyncSession], broken), "c0ffee"), broken


@pytest.mark.parametrize("error", [RuntimeError(SECRET), OverflowError(SECRET), ValueError(SECRET)])
async def test_a_failed_write_is_logged_and_counted(error: Exception,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    rec, broken = recorder(error)
    caplog.set_level(logging.ERROR, "darkbloom.coordinator.recorder")
    rec.submit(outcome(prompt_tokens=2**63))
    await rec.flush()
    assert broken.writes == 1 and rec.lost_writes == 1
    [line] = [r.getMessage() for r in caplog.records]
    assert "r1" in line and type(error).__name__ in line and "1 record write(s) lost" in line
    assert SECRET not in caplog.text


async def test_losses_accumulate_across_begin_and_submit() -> None:
    rec, broken = recorder(RuntimeError(SECRET))
    rec.begin(outcome())
    rec.submit(outcome(status="completed", status_code=200))
    rec.submit(outcome(id="r2"))
    await rec.flush()
    assert broken.writes == 3 and rec.lost_writes == 3


async def test_a_cancelled_write_is_counted_too() -> None:
    rec, _ = recorder(asyncio.CancelledError())
    rec.submit(outcome())
    await rec.flush()
    assert rec.lost_writes == 1


async def test_the_write_logs_under_the_requests_id(caplog: pytest.LogCaptureFixture) -> None:
    from darkbloom.logcontext import RequestIdFilter

    caplog.handler.addFilter(RequestIdFilter())
    caplog.set_level(logging.ERROR, "darkbloom.coordinator.recorder")
    rec, _ = recorder(RuntimeError(SECRET))
    token = REQUEST_ID.set("trace-me-123")
    try:
        rec.submit(outcome())
    finally:
        REQUEST_ID.reset(token)
    await rec.flush()
    assert [getattr(r, "request_id", None) for r in caplog.records] == ["trace-me-123"]


def test_numbers_are_clamped_to_their_columns() -> None:
    values = bounded({"prompt_tokens": 2**63, "completion_tokens": -5, "status_code": 10**30,
                      "attempts": 2**31, "bytes_out": 2**70, "ttft_ms": math.inf,
                      "duration_ms": math.nan, "stream": True})
    assert values == {"prompt_tokens": 2**31 - 1, "completion_tokens": 0, "status_code": 2**31 - 1,
                      "attempts": 2**31 - 1, "bytes_out": 2**63 - 1, "ttft_ms": 1e12,
                      "duration_ms": 0.0, "stream": True}
    assert bounded({"ttft_ms": -1.0, "duration_ms": 12.5}) == {"ttft_ms": 0.0, "duration_ms": 12.5}


def test_strings_are_cut_to_their_columns_and_made_storable() -> None:
    values = bounded({"model": "m" * 300, "error_code": "e\x00" * 100, "x_request_id": None,
                      "endpoint": "/v1/\ud800x", "receipt": "r" * 100_000})
    assert values["model"] == "m" * 256 and values["error_code"] == "e" * 64
    assert values["x_request_id"] is None and values["endpoint"] == "/v1/?x"
    assert values["receipt"] == "r" * 100_000  # Text: no length to cut to


def test_coordinator_id_is_kept_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "state" / "coordinator-id"
    first = coordinator_id(path)
    assert coordinator_id(path) == first and len(first) == 16
    path.write_text("not-an-id\n")
    assert coordinator_id(path) not in (first, "not-an-id")
