"""Hostile review of a request's money (issue 9) on real SQLite and PostgreSQL, through the real
pipeline where it decides when a hold ends: a consumer that leaves while its reservation commits,
and a coordinator that starts while another's request is still running."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.config import CoordinatorSettings
from darkbloom.coordinator.pipeline import Call, Pipeline
from darkbloom.coordinator.prepare import Preparer, Tokenizers
from darkbloom.coordinator.pricing import PriceBook
from darkbloom.coordinator.recorder import Recorder
from darkbloom.coordinator.store import charging, ledger
from darkbloom.coordinator.store.credentials import KeyIdentity, ensure_account
from darkbloom.coordinator.store.tables import Reservation
from darkbloom.inference.catalog import DEFAULT_MODEL, Catalog

Sessions = async_sessionmaker[AsyncSession]
FUNDS = 10_000_000


@pytest.fixture(scope="module")
def catalog() -> Iterator[tuple[Catalog, Tokenizers]]:
    catalog = Catalog()
    yield catalog, Tokenizers(catalog)


class _NeverCommits:
    """A committer whose providers never answer: the request stays in commit until cancelled."""

    async def commit(self, *_: Any) -> Any:
        await asyncio.Event().wait()


def _pipeline(sessions: Sessions, settings: CoordinatorSettings, catalog: tuple[Catalog, Tokenizers] | None,
              coordinator_id: str) -> Pipeline:
    preparer = Preparer(settings, catalog[0], catalog[1]) if catalog else None
    prices = PriceBook(catalog[0], sessions) if catalog else None
    return Pipeline(settings, preparer, _NeverCommits(), prices, sessions,  # type: ignore[arg-type]
                    Recorder(sessions, coordinator_id), coordinator_id)


async def _fund(sessions: Sessions, account: str, amount: int = FUNDS) -> None:
    async with sessions.begin() as session:
        await ensure_account(session, account)
    await ledger.credit(sessions, account, amount, "admin_credit", f"seed-{account}", withdrawable=False)


async def _open_reservations(sessions: Sessions) -> list[str]:
    async with sessions() as session:
        return list((await session.execute(select(Reservation.request_id).where(
            Reservation.state == charging.OPEN))).scalars())


async def test_a_consumer_leaving_while_its_reservation_commits_gets_it_back(
        sessions: Sessions, catalog: tuple[Catalog, Tokenizers], monkeypatch: pytest.MonkeyPatch) -> None:
    """The consumer hanging up cancels ``open``. Cancelled after the reservation's transaction had
    committed but before ``reserve`` returned (the commit is an await), ``open`` had no hold to give
    back: the money stayed held, with nothing to refund it but the next restart of this very
    coordinator. The reservation now always finishes, and is then refunded."""
    await _fund(sessions, "alice")
    real_reserve = charging.reserve

    async def committed_then_slow(*args: Any, **kwargs: Any) -> None:
        await real_reserve(*args, **kwargs)
        await asyncio.sleep(0.5)  # committed in the database; not yet returned to the pipeline

    monkeypatch.setattr(charging, "reserve", committed_then_slow)
    pipeline = _pipeline(sessions, CoordinatorSettings(), catalog, "c1")
    body = b'{"model": "%s", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}' % (
        DEFAULT_MODEL.id.encode())
    opening = asyncio.create_task(pipeline.open(Call("/v1/chat/completions", body, KeyIdentity(None, "alice"),
                                                     None)))
    for _ in range(100):
        if await _open_reservations(sessions):
            break
        await asyncio.sleep(0.01)
    assert await _open_reservations(sessions), "the reservation was never made"
    opening.cancel()  # the consumer hangs up
    with pytest.raises(asyncio.CancelledError):
        await opening
    await pipeline.recorder.flush()
    assert await _open_reservations(sessions) == []
    assert await ledger.balance(sessions, "alice") == ledger.Balances(FUNDS, 0)
    assert await ledger.audit(sessions) == []


async def test_the_orphan_sweep_spares_a_request_that_can_still_be_running(sessions: Sessions) -> None:
    """Another coordinator's start refunds the holds it finds older than the longest a request can
    live. That was taken as one response deadline (+5 min), but a request may wait in the queue
    and then spend a whole deadline on each of its attempts before the last one answers: a
    request still streaming was refunded, and its settlement then found nothing open (a free
    answer, the provider unpaid)."""
    settings = CoordinatorSettings(response_deadline_s=200, queue_timeout_s=30, max_attempts=3,
                                   orphan_reservation_s=60)
    await _fund(sessions, "alice")
    hold = charging.Hold("live", "alice", 5_000, 1, 1, 10, 10)
    await charging.reserve(sessions, hold, "coordinator-a")
    # Queued 30 s, two attempts that ran out their 200 s deadlines, then the third answering:
    # 530 s after the reservation it is still within its own deadline.
    await _age(sessions, "live", 30 + 2 * 200 + 100)
    other = _pipeline(sessions, settings, None, "coordinator-b")
    assert await other.refund_orphans() == 0
    assert await _open_reservations(sessions) == ["live"]
    await _age(sessions, "live", 30 + 3 * 200 + 301)  # past any request's life: an orphan
    assert await other.refund_orphans() == 1
    assert await ledger.balance(sessions, "alice") == ledger.Balances(FUNDS, 0)


async def _age(sessions: Sessions, request_id: str, seconds: float) -> None:
    async with sessions.begin() as session:
        await session.execute(update(Reservation).where(Reservation.request_id == request_id).values(
            created_at=datetime.now(UTC) - timedelta(seconds=seconds)))


async def test_two_movements_on_one_account_in_a_settlement_keep_the_audit_clean(sessions: Sessions) -> None:
    """Settlement moved money with each account's balance as locked before any movement; when one
    account took two movements (a provider linked to the ``platform`` account earning its payout
    and the fee), the second row's withdrawable delta counted the first's again and the audit
    failed."""
    await _fund(sessions, "alice")
    async with sessions.begin() as session:
        await ensure_account(session, ledger.PLATFORM_ACCOUNT_ID)
    hold = charging.Hold("r1", "alice", 10_000, 1_000_000, 1_000_000, 100, 100)
    await charging.reserve(sessions, hold)
    served = charging.Served(
        prompt_tokens=100, completion_tokens=50, status="completed", endpoint="/v1/chat/completions",
        model="m", api_key_id="k", provider_id="p", provider_account_id=ledger.PLATFORM_ACCOUNT_ID,
        provider_key="K", plausible=True)
    settled = await charging.settle(sessions, hold, served, fee_bps=1000, referral_pct=0)
    assert settled is not None and (settled.payout_micro_usd, settled.platform_fee_micro_usd) == (135, 15)
    assert await ledger.balance(sessions, ledger.PLATFORM_ACCOUNT_ID) == ledger.Balances(150, 135)
    assert await ledger.audit(sessions) == []
