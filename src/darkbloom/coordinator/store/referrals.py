"""Referral codes and who referred whom (billing.md §7).

An account registers one code (3-20 letters, digits or inner hyphens, stored upper-case; asking
again returns the code it has). An account can be referred once, never by itself, and the link is
permanent. Rewards are written at settlement by the request pipeline, which reads ``referrals``;
this module only reads them back (``referral_reward`` ledger rows) for the stats.

Writes go through ``ledger.transaction`` and start by locking the account's balance row: a write
first (SQLite's write lock for the whole transaction) and one writer per account on PostgreSQL, so
concurrent applies for one account are decided one after the other and exactly one wins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.coordinator.store import ledger
from darkbloom.coordinator.store.credentials import now
from darkbloom.coordinator.store.tables import Balance, LedgerEntry, Referral, ReferralCode

_CODE = re.compile(r"[A-Z0-9](?:[A-Z0-9-]{1,18})[A-Z0-9]", re.ASCII)
MAX_CODE_INPUT = 64  # longer input is refused before it is even normalised


class ReferralError(Exception):
    """A referral could not be registered or applied; the message says why, for the caller.
    ``reason``: invalid | taken | unknown | self | already_referred."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


def normalise_code(text: str) -> str | None:
    """The stored form of a referral code (trimmed, upper-case), or None when it is not 3-20
    letters, digits and hyphens with no hyphen at either end."""
    if not isinstance(text, str) or len(text) > MAX_CODE_INPUT:
        return None
    code = text.strip().upper()
    return code if _CODE.fullmatch(code) else None


def _valid(code: str) -> str:
    normalised = normalise_code(code)
    if normalised is None:
        raise ReferralError("invalid referral code: use 3-20 letters, digits or hyphens, with no "
                            "hyphen at either end", "invalid")
    return normalised


@dataclass(frozen=True, slots=True)
class RegisteredCode:
    code: str
    created: bool  # False: the account already had this code


@dataclass(frozen=True, slots=True)
class AppliedReferral:
    code: str
    referrer_account_id: str


@dataclass(frozen=True, slots=True)
class ReferralStats:
    code: str
    total_referred: int
    total_rewards_micro_usd: int
    balance_micro_usd: int


@dataclass(frozen=True, slots=True)
class ReferralInfo:
    code: str | None  # this account's own code
    referred_by: str | None  # the code this account was referred with


async def _own_code(session: AsyncSession, account_id: str) -> str | None:
    return (await session.execute(select(ReferralCode.code)
                                  .where(ReferralCode.account_id == account_id))).scalar_one_or_none()


async def register_code(sessions: async_sessionmaker[AsyncSession], account_id: str,
                        code: str) -> RegisteredCode:
    """Give ``account_id`` the referral code ``code``; an account that has one keeps it (and gets
    it back). Raises ReferralError when the code is invalid or another account holds it."""
    wanted = _valid(code)
    try:
        async with ledger.transaction(sessions) as session:
            await ledger.lock(session, account_id)
            if (existing := await _own_code(session, account_id)) is not None:
                return RegisteredCode(existing, created=False)
            if await session.get(ReferralCode, wanted) is not None:
                raise ReferralError(f"referral code {wanted} is taken; choose another", "taken")
            session.add(ReferralCode(code=wanted, account_id=account_id, created_at=now()))
            await session.flush()
    except IntegrityError:
        # Another account registered the same code at the same moment (PostgreSQL: its lock is
        # on another account's row, so only the primary key sees the race).
        async with sessions() as session:
            if (existing := await _own_code(session, account_id)) is not None:
                return RegisteredCode(existing, created=False)
            if await session.get(ReferralCode, wanted) is None:
                raise  # not the code's primary key: a real fault
        raise ReferralError(f"referral code {wanted} is taken; choose another", "taken") from None
    return RegisteredCode(wanted, created=True)


async def apply_referral(sessions: async_sessionmaker[AsyncSession], account_id: str,
                         code: str) -> AppliedReferral:
    """Record that ``code``'s owner referred ``account_id``: once, permanently, never itself.
    Raises ReferralError (nothing written) for an invalid or unknown code, the account's own code,
    or an account that was already referred; of concurrent applies exactly one succeeds."""
    wanted = _valid(code)
    try:
        async with ledger.transaction(sessions) as session:
            await ledger.lock(session, account_id)
            referrer = (await session.execute(select(ReferralCode.account_id)
                                              .where(ReferralCode.code == wanted))).scalar_one_or_none()
            if referrer is None:
                raise ReferralError(f"unknown referral code {wanted}", "unknown")
            if referrer == account_id:
                raise ReferralError("you cannot use your own referral code", "self")
            if await session.get(Referral, account_id) is not None:
                raise ReferralError("this account has already been referred; a referral is permanent",
                                    "already_referred")
            session.add(Referral(account_id=account_id, referrer_account_id=referrer, code=wanted,
                                 created_at=now()))
            await session.flush()
    except IntegrityError:
        # A concurrent apply for this account committed first (the primary key caught it).
        if await referrer_of(sessions, account_id) is None:
            raise
        raise ReferralError("this account has already been referred; a referral is permanent",
                            "already_referred") from None
    return AppliedReferral(wanted, referrer)


async def referrer_of(sessions: async_sessionmaker[AsyncSession], account_id: str) -> str | None:
    """The account that referred ``account_id``, if any (for settlement's referral reward)."""
    async with sessions() as session:
        return (await session.execute(select(Referral.referrer_account_id)
                                      .where(Referral.account_id == account_id))).scalar_one_or_none()


async def referral_stats(sessions: async_sessionmaker[AsyncSession],
                         account_id: str) -> ReferralStats | None:
    """The referrer's code, how many accounts it referred, the rewards it earned (its
    ``referral_reward`` ledger rows) and its balance; None when the account has no code."""
    async with sessions() as session:
        code = await _own_code(session, account_id)
        if code is None:
            return None
        referred = (await session.execute(select(func.count()).select_from(Referral)
                                          .where(Referral.referrer_account_id == account_id))).scalar_one()
        rewards = (await session.execute(
            select(func.coalesce(func.sum(LedgerEntry.amount_micro_usd), 0))
            .where(LedgerEntry.account_id == account_id, LedgerEntry.kind == "referral_reward"))).scalar_one()
        balance = (await session.execute(select(Balance.balance_micro_usd)
                                         .where(Balance.account_id == account_id))).scalar_one_or_none()
    return ReferralStats(code, int(referred), int(rewards), int(balance or 0))


async def referral_info(sessions: async_sessionmaker[AsyncSession], account_id: str) -> ReferralInfo:
    """The account's own code and the code it was referred with (either may be None)."""
    async with sessions() as session:
        code = await _own_code(session, account_id)
        referred_by = (await session.execute(select(Referral.code)
                                             .where(Referral.account_id == account_id))).scalar_one_or_none()
    return ReferralInfo(code, referred_by)
