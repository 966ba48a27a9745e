"""Request rows through their lifecycle on real SQLite and PostgreSQL: written at commit, updated
at the end, marked interrupted after a crash, and never lost to an out-of-range value."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.coordinator.recorder import Recorder
from darkbloom.coordinator.store.db import make_engine
from darkbloom.coordinator.store.requests_log import RequestOutcome, mark_interrupted, record
from darkbloom.coordinator.store.tables import Base, RequestRecord


def outcome(rid: str, **fields: Any) -> RequestOutcome:
    base: dict[str, Any] = {"id": rid, "endpoint": "/v1/chat/completions", "model": "smollm2-135m",
                            "stream": True, "created_at": datetime.now(UTC), "provider_id": "p",
                            "attempts": 1, "prompt_tokens": 7, "ttft_ms": 3.5}
    return RequestOutcome(**{**base, **fields})


async def rows(sessions: async_sessionmaker[AsyncSession]) -> dict[str, RequestRecord]:
    async with sessions() as session:
        return {r.id: r for r in (await session.execute(select(RequestRecord))).scalars()}


async def test_migrations_match_the_tables(database_url: str,
                                           sessions: async_sessionmaker[AsyncSession]) -> None:
    """Every column and index the ORM declares exists after upgrade, and nothing else."""
    engine = make_engine(database_url)
    async with engine.connect() as conn:
        diff = await conn.run_sync(
            lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata))
    await engine.dispose()
    assert diff == []


async def test_a_committed_request_is_visible_in_progress_then_ended(
        sessions: async_sessionmaker[AsyncSession]) -> None:
    recorder = Recorder(sessions, "c1")
    live = outcome("live")
    recorder.begin(live)
    await recorder.flush()
    row = (await rows(sessions))["live"]
    assert (row.status, row.status_code, row.coordinator_id) == ("in_progress", 0, "c1")
    assert (row.prompt_tokens, row.provider_id, row.ended_at) == (7, "p", None)
    assert row.updated_at is not None
    live.status, live.status_code, live.completion_tokens, live.duration_ms = "completed", 200, 5, 40.0
    live.receipt, live.receipt_signature = '{"n":1}', "sig"
    recorder.submit(live)
    await recorder.flush()
    [row] = (await rows(sessions)).values()
    assert (row.status, row.status_code, row.completion_tokens) == ("completed", 200, 5)
    assert row.duration_ms == 40.0
    assert row.receipt == '{"n":1}' and row.ended_at is not None and recorder.lost_writes == 0


async def test_the_end_is_written_after_the_commit_even_when_submitted_at_once(
        sessions: async_sessionmaker[AsyncSession]) -> None:
    recorder = Recorder(sessions, "c1")
    for i in range(20):  # a short body: begin and submit in the same tick
        recorder.begin(outcome(f"r{i}", stream=False))
        recorder.submit(outcome(f"r{i}", stream=False, status="completed", status_code=200))
    await recorder.flush()
    assert {r.status for r in (await rows(sessions)).values()} == {"completed"}
    assert recorder.lost_writes == 0


async def test_a_request_that_failed_before_commit_is_recorded_once(
        sessions: async_sessionmaker[AsyncSession]) -> None:
    recorder = Recorder(sessions, "c1")
    recorder.submit(outcome("bad", provider_id=None, status_code=400, error_code="invalid_request_error"))
    await recorder.flush()
    [row] = (await rows(sessions)).values()
    assert (row.status, row.status_code, row.coordinator_id) == ("failed", 400, "c1")


async def test_out_of_range_values_keep_the_row(sessions: async_sessionmaker[AsyncSession]) -> None:
    """Issue 8 item 9: a prompt_tokens of 2**63 used to lose the row without a trace."""
    recorder = Recorder(sessions, "c1")
    recorder.submit(outcome("huge", prompt_tokens=2**63, completion_tokens=2**63, bytes_out=2**80,
                            duration_ms=float("inf"), ttft_ms=float("nan"), model="m" * 1000,
                            error_code="e" * 1000, status="completed", status_code=200))
    await recorder.flush()
    assert recorder.lost_writes == 0
    row = (await rows(sessions))["huge"]
    assert (row.prompt_tokens, row.completion_tokens, row.bytes_out) == (2**31 - 1, 2**31 - 1, 2**63 - 1)
    assert (row.duration_ms, row.ttft_ms) == (1e12, 0.0)
    assert len(row.model) == 256 and len(row.error_code or "") == 64


async def test_a_restart_marks_its_own_unfinished_rows_interrupted(
        sessions: async_sessionmaker[AsyncSession]) -> None:
    mine, other = Recorder(sessions, "c1"), Recorder(sessions, "c2")
    mine.begin(outcome("cut"))
    mine.begin(outcome("done", created_at=datetime.now(UTC) - timedelta(seconds=1)))
    mine.submit(outcome("done", status="completed", status_code=200))
    other.begin(outcome("elsewhere"))
    await mine.flush()
    await other.flush()
    assert await mark_interrupted(sessions, "c1") == 1
    assert await mark_interrupted(sessions, "c1") == 0  # a second start finds nothing new
    found = await rows(sessions)
    cut = found["cut"]
    assert (cut.status, cut.error_code, cut.status_code) == ("interrupted", "interrupted", 0)
    assert cut.ended_at is None  # when it ended is unknown
    assert cut.prompt_tokens == 7 and cut.provider_id == "p"
    assert found["done"].status == "completed"
    assert found["elsewhere"].status == "in_progress"  # another coordinator's live request


async def test_record_is_an_upsert(sessions: async_sessionmaker[AsyncSession]) -> None:
    await record(sessions, outcome("u", status="in_progress", status_code=0))
    await record(sessions, outcome("u", status="cancelled", status_code=499))
    [row] = (await rows(sessions)).values()
    assert (row.status, row.status_code) == ("cancelled", 499)
