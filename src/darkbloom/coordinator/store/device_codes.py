"""Device-code login (api.md §6, provider.md, RFC 8628 shape): a machine asks for a code pair,
a signed-in person approves the short user code, and the machine's poll takes a provider token
for that person's account, once.

Every function takes ``now`` (a UTC datetime) instead of reading the clock, so tests control
time. Races are settled by the database, not by this process: each step is one transaction whose
first statement is a conditional UPDATE (the row lock on PostgreSQL, the write lock on SQLite),
so two polls of an approved code can never both mint a token, and an approval cannot land on a
code that expired or was approved meanwhile.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.coordinator.store.credentials import hash_secret, mint_provider_token
from darkbloom.coordinator.store.tables import DeviceCode

# No 0/O, 1/I/L (provider.md): a person reads it off one screen and types it into another.
USER_CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
USER_CODE_CHARS = 8
DEVICE_CODE_BYTES = 32  # 64 hex characters
# Expired codes are kept this long (a late poll gets 410 rather than 404), then deleted.
KEEP_EXPIRED = timedelta(days=1)
TOKEN_LABEL = "device login"

Sessions = async_sessionmaker[AsyncSession]


def aware(stamp: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stamp here is UTC."""
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def new_user_code() -> str:
    return "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(USER_CODE_CHARS))


def display_user_code(code: str) -> str:
    """``ABCDEFGH`` as the person sees it: ``ABCD-EFGH``."""
    return f"{code[:4]}-{code[4:]}"


def normalise_user_code(text: str) -> str | None:
    """What a person typed as a user code, upper-cased without its dash and spaces, or None if
    it cannot be one (wrong length, a letter outside the alphabet)."""
    code = "".join(text.split()).replace("-", "").upper()
    if len(code) != USER_CODE_CHARS or any(c not in USER_CODE_ALPHABET for c in code):
        return None
    return code


def is_device_code(text: str) -> bool:
    return len(text) == 2 * DEVICE_CODE_BYTES and all(c in "0123456789abcdef" for c in text)


@dataclass(frozen=True, slots=True)
class IssuedCode:
    device_code: str  # the secret: returned once, stored hashed
    user_code: str  # ABCD-EFGH
    expires_at: datetime


async def create(sessions: Sessions, now: datetime, lifetime: timedelta) -> IssuedCode:
    """A new code pair, valid for ``lifetime``. Codes expired for a day are deleted on the way
    (the table holds no more than a day's codes)."""
    async with sessions.begin() as session:
        await session.execute(delete(DeviceCode).where(DeviceCode.expires_at < now - KEEP_EXPIRED))
    for attempt in range(8):  # a user code already in use (31^8 of them): draw again
        device_code = secrets.token_hex(DEVICE_CODE_BYTES)
        user_code = new_user_code()
        try:
            async with sessions.begin() as session:
                session.add(DeviceCode(id=secrets.token_hex(12), device_code_hash=hash_secret(device_code),
                                       user_code=user_code, status="pending", created_at=now,
                                       expires_at=now + lifetime))
        except IntegrityError:
            if attempt == 7:
                raise
            continue
        return IssuedCode(device_code, display_user_code(user_code), now + lifetime)
    raise AssertionError("unreachable")


PollOutcome = Literal["pending", "authorized", "unknown", "expired", "consumed", "slow_down"]


@dataclass(frozen=True, slots=True)
class Poll:
    outcome: PollOutcome
    token: str | None = None  # the provider token, on "authorized" only
    account_id: str | None = None


async def poll(sessions: Sessions, device_code: str, now: datetime, interval: timedelta) -> Poll:
    """The device's poll. ``slow_down`` when the last admitted poll of this code was less than
    ``interval`` ago (a refused poll does not move that time, so a client that slows down is
    admitted at once). An approved code is consumed by exactly one poll, in the transaction that
    mints its token."""
    digest = hash_secret(device_code)
    async with sessions.begin() as session:
        admitted = await session.execute(
            update(DeviceCode)
            .where(DeviceCode.device_code_hash == digest,
                   DeviceCode.status.in_(("pending", "approved")), DeviceCode.expires_at > now,
                   or_(DeviceCode.last_poll_at.is_(None), DeviceCode.last_poll_at <= now - interval))
            .values(last_poll_at=now))
        row = (await session.execute(select(DeviceCode.id, DeviceCode.status, DeviceCode.account_id,
                                            DeviceCode.expires_at)
                                     .where(DeviceCode.device_code_hash == digest))).first()
        if row is None:
            return Poll("unknown")
        if not admitted.rowcount:  # type: ignore[attr-defined]
            if row.status == "consumed":
                return Poll("consumed")
            if aware(row.expires_at) <= now:
                return Poll("expired")
            return Poll("slow_down")
        if row.status == "pending" or row.account_id is None:
            return Poll("pending")
        # This transaction holds the row (its UPDATE came first): nobody else can consume it.
        token = await mint_provider_token(session, row.account_id, TOKEN_LABEL, now)
        await session.execute(update(DeviceCode).where(DeviceCode.id == row.id)
                              .values(status="consumed", token_id=token.id))
    return Poll("authorized", token.secret, row.account_id)


ApproveOutcome = Literal["approved", "unknown", "expired", "already_used"]


async def approve(sessions: Sessions, user_code: str, account_id: str, now: datetime) -> ApproveOutcome:
    """Link a pending, unexpired code to ``account_id``. ``user_code`` is already normalised
    (``normalise_user_code``)."""
    async with sessions.begin() as session:
        done = await session.execute(
            update(DeviceCode)
            .where(DeviceCode.user_code == user_code, DeviceCode.status == "pending",
                   DeviceCode.expires_at > now)
            .values(status="approved", account_id=account_id, approved_at=now))
        if done.rowcount:  # type: ignore[attr-defined]
            return "approved"
        row = (await session.execute(select(DeviceCode.status, DeviceCode.expires_at)
                                     .where(DeviceCode.user_code == user_code))).first()
    if row is None:
        return "unknown"
    if row.status != "pending":
        return "already_used"
    return "expired"
