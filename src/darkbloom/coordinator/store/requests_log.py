"""The request log: metadata of every consumer request, never its prompt or completion text."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.coordinator.store.tables import RequestRecord


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
    status_code: int = 500
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


async def record(sessions: async_sessionmaker[AsyncSession], outcome: RequestOutcome) -> None:
    async with sessions.begin() as session:
        session.add(RequestRecord(**asdict(outcome)))


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
