"""The request log: metadata of every consumer request, never its prompt or completion text.

A committed request's row is written ``in_progress`` and rewritten when the request ends; rows a
crash left ``in_progress`` are marked ``interrupted`` when their coordinator starts again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, String, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.coordinator.store.tables import RequestRecord
from darkbloom.protocol.trust import SignedReceipt

IN_PROGRESS, INTERRUPTED = "in_progress", "interrupted"
_INT32_MAX, _INT64_MAX = 2**31 - 1, 2**63 - 1
_MS_MAX = 1e12  # about 31 years: any larger duration is a bug, not a measurement


@dataclass(slots=True)
class RequestOutcome:
    id: str
    endpoint: str
    model: str
    stream: bool
    created_at: datetime
    api_key_id: str | None = None
    account_id: str | None = None
    provider_id: str | None = None
    status: str = "failed"
    status_code: int = 500  # 0 while in_progress or interrupted: no final status was recorded
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_ms: float | None = None
    duration_ms: float = 0.0
    error_code: str | None = None
    attempts: int = 0
    bytes_out: int = 0
    x_request_id: str | None = None
    receipt: str | None = None
    receipt_signature: str | None = None
    coordinator_id: str | None = None
    ended_at: datetime | None = None

    def keep_receipt(self, signed: SignedReceipt | None) -> None:
        """Record the receipt for GET /v1/receipts/{id}: hashes and counts, never text."""
        if signed is not None:
            self.receipt = signed.receipt.canonical().decode("ascii")
            self.receipt_signature = signed.signature


def bounded(values: dict[str, Any]) -> dict[str, Any]:
    """Every value made to fit its column: counts and times clamped, strings cut and made
    encodable, so that no value can make the database refuse the row."""
    columns = RequestRecord.__table__.columns
    out = dict(values)
    for name, value in values.items():
        kind = columns[name].type
        if value is None or isinstance(value, bool | datetime):
            continue
        if isinstance(value, int):
            out[name] = min(max(value, 0), _INT64_MAX if isinstance(kind, BigInteger) else _INT32_MAX)
        elif isinstance(value, float):
            out[name] = min(max(value, 0.0), _MS_MAX) if value == value else 0.0  # NaN -> 0
        elif isinstance(value, str):
            text = value.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
            length = kind.length if isinstance(kind, String) else None
            out[name] = text[:length] if length else text
    return out


async def record(sessions: async_sessionmaker[AsyncSession], outcome: RequestOutcome) -> None:
    """Insert the request's row, or update it if it was written when the request was committed."""
    row = RequestRecord(**bounded(asdict(outcome)), updated_at=datetime.now(UTC))
    async with sessions.begin() as session:
        await session.merge(row)


async def mark_interrupted(sessions: async_sessionmaker[AsyncSession], coordinator_id: str | None) -> int:
    """This coordinator's rows still in progress: requests its previous run died serving."""
    async with sessions.begin() as session:
        result = await session.execute(
            update(RequestRecord)
            .where(RequestRecord.status == IN_PROGRESS, RequestRecord.coordinator_id == coordinator_id)
            .values(status=INTERRUPTED, error_code=INTERRUPTED, updated_at=datetime.now(UTC)))
    return int(getattr(result, "rowcount", 0) or 0)


async def recent(sessions: async_sessionmaker[AsyncSession], limit: int = 100) -> list[RequestRecord]:
    async with sessions() as session:
        rows = await session.execute(
            select(RequestRecord).order_by(RequestRecord.created_at.desc()).limit(limit))
        return list(rows.scalars())


async def find_receipt(sessions: async_sessionmaker[AsyncSession], x_request_id: str,
                       account_id: str) -> tuple[str, str] | None:
    """The newest receipt recorded under this X-Request-ID for this account."""
    async with sessions() as session:
        row = (await session.execute(
            select(RequestRecord.receipt, RequestRecord.receipt_signature)
            .where(RequestRecord.x_request_id == x_request_id, RequestRecord.account_id == account_id,
                   RequestRecord.receipt.is_not(None))
            .order_by(RequestRecord.created_at.desc()).limit(1))).first()
    return (row.receipt, row.receipt_signature) if row else None
