"""A request's money on real SQLite and PostgreSQL: reservation under heavy concurrency, settlement
that conserves every micro-dollar, refunds, self-served requests, the excess rule, orphans."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.coordinator.store import charging, ledger
from darkbloom.coordinator.store.credentials import ensure_account
from darkbloom.coordinator.store.db import make_engine, make_sessionmaker
from darkbloom.coordinator.store.tables import (
    Account,
    LedgerEntry,
    ProviderEarning,
    Referral,
    Reservation,
    UsageRecord,
)

Sessions = async_sessionmaker[AsyncSession]
PRICE_IN, PRICE_OUT = 1_000_000, 2_000_000  # $1 / $2 per million: one token in = 1 µ$, out = 2 µ$


async def _accounts(sessions: Sessions, *ids: str) -> None:
    async with sessions.begin() as session:
        for account_id in ids:
            await ensure_account(session, account_id)


def _hold(
    request_id: str, amount: int, account: str = "alice", prompt: int = 100, max_tokens: int = 400
) -> charging.Hold:
    return charging.Hold(request_id, account, amount, PRICE_IN, PRICE_OUT, prompt, max_tokens)


def _served(
    prompt: int,
    completion: int,
    provider_account: str | None = "operator",
    status: str = "completed",
    plausible: bool = True,
) -> charging.Served:
    return charging.Served(
        prompt_tokens=prompt,
        completion_tokens=completion,
        status=status,
        endpoint="/v1/chat/completions",
        model="m",
        api_key_id="k",
        provider_id="p1",
        provider_account_id=provider_account,
        provider_key="K",
        plausible=plausible,
        ttft_ms=1.0,
        duration_ms=2.0,
    )


async def _kinds(sessions: Sessions, request_id: str) -> dict[tuple[str, str], int]:
    async with sessions() as session:
        rows = (
            await session.execute(
                select(LedgerEntry.account_id, LedgerEntry.kind, LedgerEntry.amount_micro_usd).where(
                    LedgerEntry.request_id == request_id
                )
            )
        ).all()
    sums: dict[tuple[str, str], int] = {}
    for account, kind, amount in rows:
        sums[(account, kind)] = sums.get((account, kind), 0) + amount
    return sums


async def test_a_thousand_concurrent_reservations_take_exactly_the_affordable_ones(
    sessions: Sessions, database_url: str
) -> None:
    """Two engines stand for two coordinator processes sharing the database."""
    await _accounts(sessions, "alice")
    await ledger.credit(sessions, "alice", 250 * 1000 + 999, "admin_credit", "seed", withdrawable=False)
    other = make_engine(database_url)
    pools = (sessions, make_sessionmaker(other))

    async def reserve(i: int) -> bool:
        try:
            await charging.reserve(pools[i % 2], _hold(f"r{i}", 1000))
        except ledger.InsufficientFunds:
            return False
        return True

    try:
        won = await asyncio.gather(*(reserve(i) for i in range(1000)))
    finally:
        await other.dispose()
    assert sum(won) == 250
    assert await ledger.balance(sessions, "alice") == ledger.Balances(999, 0)
    async with sessions() as session:
        total = (
            await session.execute(
                select(func.sum(LedgerEntry.amount_micro_usd)).where(LedgerEntry.account_id == "alice")
            )
        ).scalar_one()
        lowest = (await session.execute(select(func.min(LedgerEntry.balance_after_micro_usd)))).scalar_one()
        held = (await session.execute(select(func.count()).select_from(Reservation))).scalar_one()
    assert (total, lowest, held) == (999, 999, 250)
    assert await ledger.audit(sessions) == []


async def test_settlement_splits_refunds_and_records(sessions: Sessions) -> None:
    await _accounts(sessions, "alice", "operator", "friend")
    await ledger.credit(sessions, "alice", 10_000, "admin_credit", "seed", withdrawable=False)
    async with sessions.begin() as session:
        session.add(
            Referral(
                account_id="alice", referrer_account_id="friend", code="FRIEND", created_at=datetime.now(UTC)
            )
        )
    await charging.reserve(sessions, _hold("r1", 900))  # 100 in + 400 out at the cap
    settled = await charging.settle(
        sessions, _hold("r1", 900), _served(100, 150), fee_bps=1000, referral_pct=20
    )
    # cost = 100·1 + 150·2 = 400; fee 10% = 40, of which 20% (8) to the referrer.
    assert settled == charging.Settled(400, 500, 360, 32, 8, False)
    assert await _kinds(sessions, "r1") == {
        ("alice", "reserve"): -900,
        ("alice", "refund"): 500,
        ("operator", "payout"): 360,
        (ledger.PLATFORM_ACCOUNT_ID, "platform_fee"): 32,
        ("friend", "referral_reward"): 8,
    }
    assert await ledger.balance(sessions, "alice") == ledger.Balances(9_600, 0)
    assert await ledger.balance(sessions, "operator") == ledger.Balances(360, 360)  # withdrawable
    assert await ledger.balance(sessions, "friend") == ledger.Balances(8, 8)
    async with sessions() as session:
        usage = (await session.execute(select(UsageRecord))).scalar_one()
        earning = (await session.execute(select(ProviderEarning))).scalar_one()
    assert (
        usage.cost_micro_usd,
        usage.provider_payout_micro_usd,
        usage.platform_fee_micro_usd,
        usage.referral_reward_micro_usd,
        usage.status,
        usage.self_routed,
    ) == (400, 360, 32, 8, "completed", False)
    assert (earning.account_id, earning.job_id, earning.amount_micro_usd, earning.provider_key) == (
        "operator",
        "r1",
        360,
        "K",
    )
    # Exactly one ending: a second settlement, a refund, an orphan sweep all change nothing.
    assert (
        await charging.settle(sessions, _hold("r1", 900), _served(100, 150), fee_bps=0, referral_pct=0)
        is None
    )
    assert await charging.refund(sessions, "r1", "alice") == 0
    assert await charging.refund_orphans(sessions, None, datetime.now(UTC) + timedelta(days=1)) == 0
    assert await ledger.audit(sessions) == []


async def test_the_minimum_charge_and_no_reward_for_ones_own_referral(sessions: Sessions) -> None:
    await _accounts(sessions, "alice", "operator")
    await ledger.credit(sessions, "alice", 10_000, "admin_credit", "seed", withdrawable=False)
    async with sessions.begin() as session:  # the referrer is the serving provider's account
        session.add(
            Referral(
                account_id="alice", referrer_account_id="operator", code="OP", created_at=datetime.now(UTC)
            )
        )
    await charging.reserve(sessions, _hold("r1", 900))
    settled = await charging.settle(sessions, _hold("r1", 900), _served(3, 1), fee_bps=5000, referral_pct=50)
    assert settled is not None and settled.cost_micro_usd == 100  # 3 + 2 raised to the minimum
    assert (settled.payout_micro_usd, settled.platform_fee_micro_usd, settled.referral_reward_micro_usd) == (
        50,
        50,
        0,
    )


async def test_self_served_is_free_and_refunded_in_full(sessions: Sessions) -> None:
    await _accounts(sessions, "alice")
    await ledger.credit(sessions, "alice", 1_000, "admin_credit", "seed", withdrawable=False)
    await charging.reserve(sessions, _hold("r1", 900))
    settled = await charging.settle(
        sessions, _hold("r1", 900), _served(100, 100, provider_account="alice"), fee_bps=1000, referral_pct=20
    )
    assert settled == charging.Settled(0, 900, 0, 0, 0, True)
    assert await ledger.balance(sessions, "alice") == ledger.Balances(1_000, 0)
    await charging.reserve(sessions, _hold("r2", 0))  # X-Darkbloom-Route: self holds nothing
    assert (
        await charging.settle(
            sessions, _hold("r2", 0), _served(5, 5, provider_account="alice"), fee_bps=0, referral_pct=0
        )
    ) == charging.Settled(0, 0, 0, 0, 0, True)
    async with sessions() as session:
        rows = (await session.execute(select(UsageRecord.self_routed, UsageRecord.cost_micro_usd))).all()
    assert sorted(rows) == [(True, 0), (True, 0)]
    assert await ledger.audit(sessions) == []


async def test_a_cost_above_the_hold_is_charged_only_when_plausible_and_affordable(
    sessions: Sessions,
) -> None:
    await _accounts(sessions, "alice", "operator")
    await ledger.credit(sessions, "alice", 1_000, "admin_credit", "seed", withdrawable=False)
    await charging.reserve(sessions, _hold("r1", 300))
    settled = await charging.settle(sessions, _hold("r1", 300), _served(100, 150), fee_bps=0, referral_pct=0)
    assert settled is not None and settled.cost_micro_usd == 400  # 100 more, debited
    assert (await _kinds(sessions, "r1"))[("alice", "reserve")] == -400  # the hold and the excess
    await charging.reserve(sessions, _hold("r2", 300))
    implausible = await charging.settle(
        sessions, _hold("r2", 300), _served(100, 150, plausible=False), fee_bps=0, referral_pct=0
    )
    assert implausible is not None and implausible.cost_micro_usd == 300  # clamped to the hold
    await charging.reserve(sessions, _hold("r3", 300))  # 0 left: the excess cannot be covered
    unaffordable = await charging.settle(
        sessions, _hold("r3", 300), _served(100, 150), fee_bps=0, referral_pct=0
    )
    assert unaffordable is not None and unaffordable.cost_micro_usd == 300
    assert await ledger.balance(sessions, "alice") == ledger.Balances(0, 0)
    assert await ledger.audit(sessions) == []


async def test_refunds_and_orphans(sessions: Sessions) -> None:
    await _accounts(sessions, "alice", "operator")
    await ledger.credit(sessions, "alice", 10_000, "admin_credit", "seed", withdrawable=False)
    await charging.reserve(sessions, _hold("failed", 1_000), coordinator_id="me")
    assert await charging.refund(sessions, "failed", "alice") == 1_000
    assert await charging.refund(sessions, "failed", "alice") == 0
    await charging.reserve(sessions, _hold("mine", 1_000), coordinator_id="me")
    await charging.reserve(sessions, _hold("theirs-young", 1_000), coordinator_id="them")
    await charging.reserve(sessions, _hold("theirs-old", 1_000), coordinator_id="them")
    async with sessions.begin() as session:
        await session.execute(
            update(Reservation)
            .where(Reservation.request_id == "theirs-old")
            .values(created_at=datetime.now(UTC) - timedelta(hours=2))
        )
    cutoff = datetime.now(UTC) - timedelta(hours=1)
    assert await charging.refund_orphans(sessions, "me", cutoff) == 2
    kinds = await _kinds(sessions, "theirs-old")
    assert kinds[("alice", "refund")] == 1_000
    async with sessions() as session:
        states = dict((await session.execute(select(Reservation.request_id, Reservation.state))).all())
        orphan_refs = (
            (
                await session.execute(
                    select(LedgerEntry.reference).where(
                        LedgerEntry.kind == "refund", LedgerEntry.reference.like("orphan:%")
                    )
                )
            )
            .scalars()
            .all()
        )
    assert states == {
        "failed": "refunded",
        "mine": "refunded",
        "theirs-young": "open",
        "theirs-old": "refunded",
    }
    assert sorted(orphan_refs) == ["orphan:mine", "orphan:theirs-old"]
    # The request a sweep refunded cannot be settled afterwards.
    assert (
        await charging.settle(sessions, _hold("mine", 1_000), _served(1, 1), fee_bps=0, referral_pct=0)
        is None
    )
    assert await ledger.balance(sessions, "alice") == ledger.Balances(9_000, 0)
    assert await ledger.audit(sessions) == []


async def test_a_billing_hold_refuses_new_reservations(sessions: Sessions) -> None:
    await _accounts(sessions, "alice")
    await ledger.credit(sessions, "alice", 10_000, "admin_credit", "seed", withdrawable=False)
    async with sessions.begin() as session:
        await session.execute(update(Account).where(Account.id == "alice").values(billing_hold=True))
    try:
        await charging.reserve(sessions, _hold("r1", 100))
    except charging.BillingHold:
        pass
    else:
        raise AssertionError("a held account reserved money")
    assert await ledger.balance(sessions, "alice") == ledger.Balances(10_000, 0)
