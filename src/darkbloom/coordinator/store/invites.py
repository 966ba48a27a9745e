"""Invite codes (billing.md §8): admin-made codes that credit non-withdrawable money, each use once
per account, at most ``max_uses`` accounts in all.

A redemption is one transaction: the account's balance row is locked (a write first, see
ledger.py), the redemption row inserted (unique per code and account), ``used_count`` raised only
``WHERE used_count < max_uses`` and the ``invite_credit`` ledger row posted; any failure leaves none
of them. Concurrent redemptions of a code's last use queue on the code's row (PostgreSQL) or on the
one SQLite writer, and the conditional update lets exactly one through.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.coordinator.money import MICRO
from darkbloom.coordinator.store import ledger
from darkbloom.coordinator.store.admin_actions import record_action
from darkbloom.coordinator.store.credentials import aware, now
from darkbloom.coordinator.store.tables import InviteCode, InviteRedemption

GENERATED_PREFIX = "INV-"
MAX_INVITE_MICRO_USD = 1_000 * MICRO  # billing.md §8 Decision: at most 1 000 USD a code
MAX_USES = 1_000_000
MAX_LISTED = 1_000
_CODE = re.compile(r"[A-Z0-9][A-Z0-9_-]{2,63}", re.ASCII)


class InviteError(Exception):
    """A code cannot be redeemed; ``reason``: not_found | inactive | expired | exhausted |
    already_used. Nothing was written."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


class InviteExists(Exception):
    """An invite code with this name exists already."""


@dataclass(frozen=True, slots=True)
class InviteInfo:
    code: str
    amount_micro_usd: int
    max_uses: int
    used_count: int
    active: bool
    expires_at: datetime | None
    created_at: datetime
    created_by: str


@dataclass(frozen=True, slots=True)
class Redeemed:
    code: str
    credited_micro_usd: int
    balance_after_micro_usd: int


def normalise_invite_code(text: str) -> str | None:
    """Trimmed and upper-cased; 3-64 letters, digits, hyphens or underscores, starting with a
    letter or digit. None otherwise."""
    if not isinstance(text, str) or len(text) > 128:
        return None
    code = text.strip().upper()
    return code if _CODE.fullmatch(code) else None


def _info(row: InviteCode) -> InviteInfo:
    return InviteInfo(row.code, row.amount_micro_usd, row.max_uses, row.used_count, bool(row.active),
                      aware(row.expires_at) if row.expires_at else None, aware(row.created_at),
                      row.created_by)


async def create_invite(sessions: async_sessionmaker[AsyncSession], *, amount_micro_usd: int,
                        actor: str, code: str | None = None, max_uses: int = 1,
                        expires_at: datetime | None = None) -> InviteInfo:
    """A new active code (``INV-`` + 8 hex when ``code`` is None) and its audit row. Raises
    InviteExists for a name in use; ValueError for amounts or uses out of range."""
    if not 0 < amount_micro_usd <= MAX_INVITE_MICRO_USD or amount_micro_usd % 10_000:
        raise ValueError("amount must be whole cents, above 0 and at most 1000 USD")
    if not 1 <= max_uses <= MAX_USES:
        raise ValueError(f"max_uses must be 1 to {MAX_USES}")
    if code is not None and normalise_invite_code(code) != code:
        raise ValueError("code must be normalised (normalise_invite_code)")
    if expires_at is not None:
        # In UTC before it is stored: SQLite keeps a timestamp's wall-clock time and drops its
        # offset, and every stamp read back is taken as UTC (a +05:00 expiry would run 5 h late).
        expires_at = expires_at.astimezone(UTC) if expires_at.tzinfo else expires_at.replace(tzinfo=UTC)
    for _ in range(5 if code is None else 1):
        name = code or GENERATED_PREFIX + secrets.token_hex(4).upper()
        row = InviteCode(code=name, amount_micro_usd=amount_micro_usd, max_uses=max_uses, used_count=0,
                         active=True, expires_at=expires_at, created_at=now(), created_by=actor)
        try:
            async with ledger.transaction(sessions) as session:
                session.add(row)
                await session.flush()
                await record_action(session, actor=actor, action="invite_create", reference=name,
                                    amount_micro_usd=amount_micro_usd,
                                    detail={"max_uses": max_uses,
                                            "expires_at": expires_at.isoformat() if expires_at else None})
            return _info(row)
        except IntegrityError:
            async with sessions() as session:
                if await session.get(InviteCode, name) is None:
                    raise  # not the name's uniqueness: a real fault
    raise InviteExists(f"invite code {code or 'generated'} exists already")


async def list_invites(sessions: async_sessionmaker[AsyncSession],
                       limit: int = MAX_LISTED) -> list[InviteInfo]:
    """Newest first, at most ``MAX_LISTED``."""
    async with sessions() as session:
        rows = (await session.execute(select(InviteCode).order_by(InviteCode.created_at.desc(),
                                                                  InviteCode.code)
                                      .limit(max(1, min(limit, MAX_LISTED))))).scalars().all()
    return [_info(row) for row in rows]


async def deactivate_invite(sessions: async_sessionmaker[AsyncSession], code: str, *, actor: str) -> bool:
    """Stop a code from being redeemed (uses already made stay); False when there is no such code."""
    async with ledger.transaction(sessions) as session:
        changed = (await session.execute(update(InviteCode).where(InviteCode.code == code)
                                         .values(active=False).returning(InviteCode.code))).first()
        if changed is None:
            return False
        await record_action(session, actor=actor, action="invite_deactivate", reference=code)
    return True


async def redeem_invite(sessions: async_sessionmaker[AsyncSession], account_id: str, text: str) -> Redeemed:
    """Credit the code's amount to ``account_id`` (``invite_credit``, non-withdrawable). Raises
    InviteError with nothing written when the code is unknown, inactive, expired, used up, or
    already redeemed by this account."""
    code = normalise_invite_code(text)
    if code is None:
        raise InviteError("invalid invite code", "not_found")
    try:
        async with ledger.transaction(sessions) as session:
            await ledger.lock(session, account_id)
            invite = await session.get(InviteCode, code)
            if invite is None:
                raise InviteError("invalid invite code", "not_found")
            if await session.get(InviteRedemption, (code, account_id)) is not None:
                raise InviteError("you have already redeemed this invite code", "already_used")
            if not invite.active:
                raise InviteError("this invite code is no longer active", "inactive")
            if invite.expires_at is not None and aware(invite.expires_at) <= now():
                raise InviteError("this invite code has expired", "expired")
            taken = (await session.execute(
                update(InviteCode)
                .where(InviteCode.code == code, InviteCode.used_count < InviteCode.max_uses,
                       InviteCode.active.is_(True))
                .values(used_count=InviteCode.used_count + 1).returning(InviteCode.used_count)
                .execution_options(synchronize_session=False))).first()
            if taken is None:
                # Used up, or deactivated while this request waited for the code's row.
                await session.refresh(invite)
                if not invite.active:
                    raise InviteError("this invite code is no longer active", "inactive")
                raise InviteError("this invite code has been used up", "exhausted")
            session.add(InviteRedemption(code=code, account_id=account_id, created_at=now()))
            await session.flush()
            entry = await ledger.post(session, account_id, invite.amount_micro_usd, "invite_credit",
                                      f"invite:{code}:{account_id}")
    except IntegrityError:
        async with sessions() as session:
            if await session.get(InviteRedemption, (code, account_id)) is None:
                raise
        raise InviteError("you have already redeemed this invite code", "already_used") from None
    return Redeemed(code, invite.amount_micro_usd, entry.balance_after_micro_usd)
