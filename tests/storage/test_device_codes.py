"""Device-code login in the store (api.md §6), on SQLite and PostgreSQL, with a clock the test
passes in: pending, slow_down, approval, the token issued exactly once (also to polls racing
each other on separate connections), expiry, and the user-code rules."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.coordinator.store import device_codes as store
from darkbloom.coordinator.store.accounts import create_account
from darkbloom.coordinator.store.credentials import find_provider_token
from darkbloom.coordinator.store.tables import DeviceCode, ProviderToken

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
LIFETIME = timedelta(seconds=900)
INTERVAL = timedelta(seconds=5)
Sessions = async_sessionmaker[AsyncSession]


async def _account(sessions: Sessions) -> str:
    made = await create_account(sessions, f"op-{id(sessions)}-{T0.timestamp()}@example.com", "x")
    assert made is not None
    return made


def test_user_codes_are_typed_forgivingly() -> None:
    assert store.normalise_user_code("abcd-efgh") == "ABCDEFGH"
    assert store.normalise_user_code(" ABCD EFGH ") == "ABCDEFGH"
    assert store.normalise_user_code("ABCDEFGH") == "ABCDEFGH"
    for bad in ("ABCD-EFG", "ABCD-EFGHJ", "ABCD-EF0H", "ABCD-EF1H", "ABCD-EFIH", "ABCD-EFLH",
                "ABCD-EFOH", "", "ÄBCD-EFGH"):
        assert store.normalise_user_code(bad) is None, bad
    assert store.is_device_code("0" * 64) and not store.is_device_code("0" * 63)
    assert not store.is_device_code("A" * 64)  # lower-case hex only, as issued


async def test_codes_are_issued_hashed_with_the_right_shapes(sessions: Sessions) -> None:
    issued = await store.create(sessions, T0, LIFETIME)
    assert re.fullmatch(r"[0-9a-f]{64}", issued.device_code)
    assert re.fullmatch(r"[ABCDEFGHJKMNPQRSTUVWXYZ23456789]{4}-[ABCDEFGHJKMNPQRSTUVWXYZ23456789]{4}",
                        issued.user_code)
    assert issued.expires_at == T0 + LIFETIME
    async with sessions() as session:
        row = (await session.execute(select(DeviceCode))).scalar_one()
    assert row.device_code_hash != issued.device_code and issued.device_code not in row.device_code_hash
    assert row.user_code == issued.user_code.replace("-", "") and row.status == "pending"


async def test_the_whole_flow_issues_one_token_for_the_approving_account(sessions: Sessions) -> None:
    account = await _account(sessions)
    issued = await store.create(sessions, T0, LIFETIME)
    code = issued.device_code
    assert (await store.poll(sessions, code, T0, INTERVAL)).outcome == "pending"
    assert (await store.poll(sessions, code, T0 + timedelta(seconds=4.9), INTERVAL)).outcome == "slow_down"
    # A refused poll does not move the clock of the code: the next one on time is admitted.
    assert (await store.poll(sessions, code, T0 + INTERVAL, INTERVAL)).outcome == "pending"

    typed = store.normalise_user_code(issued.user_code.lower())
    assert typed is not None
    assert await store.approve(sessions, typed, account, T0 + timedelta(seconds=6)) == "approved"
    assert await store.approve(sessions, typed, account, T0 + timedelta(seconds=7)) == "already_used"
    assert await store.approve(sessions, "ABCDEFGH" if typed != "ABCDEFGH" else "ABCDEFGJ", account,
                               T0) == "unknown"

    authorized = await store.poll(sessions, code, T0 + timedelta(seconds=10), INTERVAL)
    assert authorized.outcome == "authorized" and authorized.account_id == account
    assert authorized.token is not None and re.fullmatch(r"darkbloom-pt-[0-9a-f]{64}", authorized.token)
    found = await find_provider_token(sessions, authorized.token)
    assert found is not None and found.account_id == account
    for later in (15, 60, 3600):
        again = await store.poll(sessions, code, T0 + timedelta(seconds=later), INTERVAL)
        assert again.outcome == "consumed"
    assert (await store.poll(sessions, "f" * 64, T0, INTERVAL)).outcome == "unknown"
    async with sessions() as session:
        row = (await session.execute(select(DeviceCode))).scalar_one()
        tokens = (await session.execute(select(func.count()).select_from(ProviderToken))).scalar_one()
    assert row.status == "consumed" and row.token_id == found.token_id and tokens == 1


async def test_expiry(sessions: Sessions) -> None:
    account = await _account(sessions)
    pending = await store.create(sessions, T0, LIFETIME)
    approved = await store.create(sessions, T0, LIFETIME)
    user = store.normalise_user_code(approved.user_code)
    assert user is not None
    assert await store.approve(sessions, user, account, T0 + LIFETIME - timedelta(seconds=1)) == "approved"
    end = T0 + LIFETIME
    assert (await store.poll(sessions, pending.device_code, end, INTERVAL)).outcome == "expired"
    # Approved in time, but the device came back too late: no token after expiry.
    assert (await store.poll(sessions, approved.device_code, end, INTERVAL)).outcome == "expired"
    late = store.normalise_user_code(pending.user_code)
    assert late is not None and await store.approve(sessions, late, account, end) == "expired"
    # A day after expiry the rows go (the next code issued clears them): then they are unknown.
    await store.create(sessions, end + store.KEEP_EXPIRED + timedelta(seconds=1), LIFETIME)
    assert (await store.poll(sessions, pending.device_code, end + timedelta(days=2), INTERVAL)).outcome \
        == "unknown"


@pytest.mark.parametrize("racers", [12])
async def test_concurrent_polls_after_approval_mint_one_token(sessions: Sessions, racers: int) -> None:
    """Each poll runs on its own connection at the same instant (PostgreSQL: concurrent
    transactions; SQLite: the write lock): exactly one takes the token."""
    account = await _account(sessions)
    for round_ in range(3):
        now = T0 + timedelta(minutes=round_)
        issued = await store.create(sessions, now, LIFETIME)
        user = store.normalise_user_code(issued.user_code)
        assert user is not None and await store.approve(sessions, user, account, now) == "approved"
        polls = await asyncio.gather(*(store.poll(sessions, issued.device_code, now, INTERVAL)
                                       for _ in range(racers)))
        outcomes = sorted(p.outcome for p in polls)
        assert outcomes.count("authorized") == 1, outcomes
        assert set(outcomes) <= {"authorized", "slow_down", "consumed"}
    async with sessions() as session:
        tokens = (await session.execute(select(func.count()).select_from(ProviderToken))).scalar_one()
    assert tokens == 3


async def test_concurrent_approvals_link_one_account(sessions: Sessions) -> None:
    first, second = await _account(sessions), await create_account(sessions, "second@example.com", "x")
    assert second is not None
    issued = await store.create(sessions, T0, LIFETIME)
    user = store.normalise_user_code(issued.user_code)
    assert user is not None
    results = await asyncio.gather(*(store.approve(sessions, user, who, T0) for who in (first, second) * 4))
    assert sorted(results).count("approved") == 1 and set(results) == {"approved", "already_used"}
