"""The reservation is written while the request is dispatched (issue 14: it was in every request's
time to first token), on real SQLite and PostgreSQL: nothing is returned before the hold stands,
a refused hold cancels the attempt, and every other way out leaves no hold open."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.config import CoordinatorSettings
from darkbloom.coordinator.commit import Committed
from darkbloom.coordinator.pipeline import Call, Pipeline
from darkbloom.coordinator.prepare import Preparer, Tokenizers
from darkbloom.coordinator.pricing import PriceBook
from darkbloom.coordinator.recorder import Recorder
from darkbloom.coordinator.store import charging, ledger
from darkbloom.coordinator.store.credentials import KeyIdentity, ensure_account
from darkbloom.coordinator.store.tables import Reservation
from darkbloom.errors import NoProviderAvailable, PaymentRequired
from darkbloom.inference.catalog import DEFAULT_MODEL, Catalog

Sessions = async_sessionmaker[AsyncSession]
FUNDS = 10_000_000
BODY = b'{"model": "%s", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}' % (
    DEFAULT_MODEL.id.encode())


@pytest.fixture(scope="module")
def catalog() -> Iterator[tuple[Catalog, Tokenizers]]:
    catalog = Catalog()
    yield catalog, Tokenizers(catalog)


@dataclass
class _Provider:
    id: str = "provider-1"
    account_id: str | None = None
    identity_key: str | None = None


@dataclass
class _Attempt:
    request_id: str = "attempt-1"
    provider: _Provider = field(default_factory=_Provider)


@dataclass
class _Dispatcher:
    cancelled: list[Any] = field(default_factory=list)

    def cancel(self, attempt: Any) -> None:
        self.cancelled.append(attempt)


class _Committer:
    """Answers at once with a first chunk (or fails), and says whether a hold stood by then."""

    def __init__(self, sessions: Sessions, fail: Exception | None = None) -> None:
        self.sessions = sessions
        self.fail = fail
        self.dispatcher = _Dispatcher()
        self.calls = 0
        self.hold_open_at_commit: bool | None = None

    async def commit(self, prepared: Any, route: Any) -> Committed:
        self.calls += 1
        try:
            self.hold_open_at_commit = bool(await _open_reservations(self.sessions))
        except asyncio.CancelledError:
            # Cancelled before its first chunk (the hold was refused first): the real Committer
            # cancels its attempt on the way out, as this one records.
            self.dispatcher.cancelled.append(_Attempt())
            raise
        if self.fail is not None:
            raise self.fail
        return Committed(_Attempt(), b"data: {}", 1, prepared)  # type: ignore[arg-type]


def _pipeline(sessions: Sessions, committer: _Committer, catalog: tuple[Catalog, Tokenizers]) -> Pipeline:
    settings = CoordinatorSettings()
    return Pipeline(settings, Preparer(settings, catalog[0], catalog[1]), committer,  # type: ignore[arg-type]
                    PriceBook(catalog[0], sessions), sessions, Recorder(sessions, "c1"), "c1")


async def _fund(sessions: Sessions, account: str, amount: int = FUNDS) -> None:
    async with sessions.begin() as session:
        await ensure_account(session, account)
    if amount:
        await ledger.credit(sessions, account, amount, "admin_credit", f"seed-{account}",
                            withdrawable=False)


async def _open_reservations(sessions: Sessions) -> list[str]:
    async with sessions() as session:
        return list((await session.execute(select(Reservation.request_id).where(
            Reservation.state == charging.OPEN))).scalars())


async def _become_payer(pipeline: Pipeline, account: str = "carol") -> None:
    """One request whose hold stood (then refunded): the account is dispatched at once from now."""
    opened = await pipeline.open(_call(account))
    pipeline.close(opened, None, None, 0)
    await pipeline.drain()


def _call(account: str) -> Call:
    return Call("/v1/chat/completions", BODY, KeyIdentity(None, account), None)


async def test_a_payer_is_dispatched_while_its_hold_is_written(
        sessions: Sessions, catalog: tuple[Catalog, Tokenizers], monkeypatch: pytest.MonkeyPatch) -> None:
    """An account new here reserves first; once a hold of its stood, its next requests are
    dispatched at once, and their first chunk comes back only with the hold in place."""
    await _fund(sessions, "alice")
    committer = _Committer(sessions)
    pipeline = _pipeline(sessions, committer, catalog)
    first = await pipeline.open(_call("alice"))
    assert committer.hold_open_at_commit  # new here: reserved before the dispatch
    pipeline.close(first, None, None, 0)  # nothing relayed: the whole hold goes back
    await pipeline.drain()
    real_reserve = charging.reserve

    async def slow(*args: Any, **kwargs: Any) -> None:
        await asyncio.sleep(0.2)
        await real_reserve(*args, **kwargs)

    monkeypatch.setattr(charging, "reserve", slow)
    second = await pipeline.open(_call("alice"))
    assert committer.calls == 2 and committer.hold_open_at_commit is False
    assert committer.dispatcher.cancelled == []
    assert await _open_reservations(sessions) == [second.hold.request_id]
    pipeline.close(second, None, None, 0)
    await pipeline.drain()
    await pipeline.recorder.flush()
    assert await _open_reservations(sessions) == []
    assert await ledger.balance(sessions, "alice") == ledger.Balances(FUNDS, 0)


async def test_a_broke_account_never_reaches_a_provider_and_one_run_dry_is_cancelled(
        sessions: Sessions, catalog: tuple[Catalog, Tokenizers]) -> None:
    await _fund(sessions, "bob", 0)
    committer = _Committer(sessions)
    pipeline = _pipeline(sessions, committer, catalog)
    for _ in range(2):
        with pytest.raises(PaymentRequired):
            await pipeline.open(_call("bob"))
    assert committer.calls == 0, "an account that cannot pay was dispatched"
    await ledger.credit(sessions, "bob", FUNDS, "admin_credit", "topup", withdrawable=False)
    opened = await pipeline.open(_call("bob"))  # reserved first, then dispatched
    assert committer.calls == 1 and committer.hold_open_at_commit
    left = await ledger.balance(sessions, "bob")  # spent elsewhere: not enough for another hold
    await ledger.debit(sessions, "bob", left.balance_micro_usd - 1, "admin_debit", "spent")
    # Its last hold stood: dispatched alongside the reservation, refused, cancelled.
    with pytest.raises(PaymentRequired):
        await pipeline.open(_call("bob"))
    assert committer.calls == 2 and len(committer.dispatcher.cancelled) == 1
    with pytest.raises(PaymentRequired):  # refused: back to reserving first
        await pipeline.open(_call("bob"))
    assert committer.calls == 2
    pipeline.close(opened, None, None, 0)
    await pipeline.drain()
    await pipeline.recorder.flush()
    assert await ledger.audit(sessions) == []


async def test_a_failed_commit_refunds_the_hold_written_alongside_it(
        sessions: Sessions, catalog: tuple[Catalog, Tokenizers], monkeypatch: pytest.MonkeyPatch) -> None:
    """The commit fails before the slow reservation has committed: the refund waits for it, or
    the hold would stay open until an orphan sweep."""
    await _fund(sessions, "carol")
    real_reserve = charging.reserve

    async def slow(*args: Any, **kwargs: Any) -> None:
        await asyncio.sleep(0.2)
        await real_reserve(*args, **kwargs)

    committer = _Committer(sessions)
    pipeline = _pipeline(sessions, committer, catalog)
    await _become_payer(pipeline)
    monkeypatch.setattr(charging, "reserve", slow)
    committer.fail = NoProviderAvailable("none")
    with pytest.raises(NoProviderAvailable):
        await pipeline.open(_call("carol"))
    await pipeline.recorder.flush()
    assert committer.hold_open_at_commit is False  # the dispatch did not wait for the hold
    assert await _open_reservations(sessions) == []
    assert await ledger.balance(sessions, "carol") == ledger.Balances(FUNDS, 0)
    assert await ledger.audit(sessions) == []


async def test_a_consumer_leaving_during_both_leaves_no_hold(
        sessions: Sessions, catalog: tuple[Catalog, Tokenizers], monkeypatch: pytest.MonkeyPatch) -> None:
    await _fund(sessions, "dave")
    real_reserve = charging.reserve
    reserved = asyncio.Event()

    async def slow(*args: Any, **kwargs: Any) -> None:
        await real_reserve(*args, **kwargs)
        reserved.set()
        await asyncio.sleep(0.3)

    class _Never(_Committer):
        async def commit(self, prepared: Any, route: Any) -> Committed:
            self.calls += 1
            await asyncio.Event().wait()
            raise AssertionError

    pipeline = _pipeline(sessions, _Committer(sessions), catalog)
    await _become_payer(pipeline, "dave")
    pipeline.committer = _Never(sessions)  # type: ignore[assignment]
    monkeypatch.setattr(charging, "reserve", slow)
    opening = asyncio.create_task(pipeline.open(_call("dave")))
    await reserved.wait()
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await opening
    await pipeline.recorder.flush()
    assert await _open_reservations(sessions) == []
    assert await ledger.balance(sessions, "dave") == ledger.Balances(FUNDS, 0)
