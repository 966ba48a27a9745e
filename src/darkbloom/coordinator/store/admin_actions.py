"""The audit log of admin actions (billing.md §10): every grant, debit, price or invite-code change
is one ``admin_actions`` row written in the same transaction as the change itself, so a change
without its row (or a row without its change) cannot exist."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.coordinator.store import ledger
from darkbloom.coordinator.store.credentials import aware, now
from darkbloom.coordinator.store.tables import AdminAction, Balance

ADMIN_KEY_ACTOR = "admin-key"  # the actor when the configured admin key was used
MAX_DETAIL_CHARS = 8192
MAX_PAGE = 200


@dataclass(frozen=True, slots=True)
class ActionRecord:
    id: int
    actor: str
    action: str
    target_account_id: str | None
    amount_micro_usd: int | None
    reference: str | None
    detail: dict[str, Any] | None
    created_at: datetime


def actor_of(admin_account_id: str | None) -> str:
    """The ``actor`` for an admin route: the admin's account id, or ``admin-key``."""
    return admin_account_id or ADMIN_KEY_ACTOR


async def record_action(session: AsyncSession, *, actor: str, action: str,
                        target_account_id: str | None = None, amount_micro_usd: int | None = None,
                        reference: str | None = None, detail: Mapping[str, Any] | None = None) -> None:
    """Write one audit row inside the caller's transaction (it commits or rolls back with the
    change). ``detail`` is a small JSON object of what the admin asked for; never secrets."""
    text = None
    if detail is not None:
        text = json.dumps(dict(detail), separators=(",", ":"), sort_keys=True, ensure_ascii=False)
        if len(text) > MAX_DETAIL_CHARS:
            raise ValueError(f"admin action detail is over {MAX_DETAIL_CHARS} characters")
    session.add(AdminAction(actor=actor, action=action, target_account_id=target_account_id,
                            amount_micro_usd=amount_micro_usd, reference=reference, detail=text,
                            created_at=now()))
    await session.flush()


def _record(row: AdminAction) -> ActionRecord:
    detail = json.loads(row.detail) if row.detail else None
    return ActionRecord(row.id, row.actor, row.action, row.target_account_id, row.amount_micro_usd,
                        row.reference, detail if isinstance(detail, dict) else None, aware(row.created_at))


async def find_action(session: AsyncSession, action: str, reference: str) -> ActionRecord | None:
    """The first ``action`` recorded with ``reference`` (an admin grant's Idempotency-Key)."""
    row = (await session.execute(select(AdminAction).where(
        AdminAction.action == action, AdminAction.reference == reference)
        .order_by(AdminAction.id).limit(1))).scalar_one_or_none()
    return _record(row) if row else None


async def list_actions(sessions: async_sessionmaker[AsyncSession], limit: int = 50,
                       before: int | None = None) -> list[ActionRecord]:
    """Newest first, at most ``MAX_PAGE``; ``before`` is the id of the last row of the previous page."""
    query = select(AdminAction)
    if before is not None:
        query = query.where(AdminAction.id < before)
    async with sessions() as session:
        rows = (await session.execute(query.order_by(AdminAction.id.desc())
                                      .limit(max(1, min(limit, MAX_PAGE))))).scalars().all()
    return [_record(row) for row in rows]


# --- admin grants: credit, reward, debit ------------------------------------------------------------

GRANT_KINDS = ("admin_credit", "admin_reward", "admin_debit")


class IdempotencyConflict(Exception):
    """The Idempotency-Key already names a different movement; nothing was written."""


@dataclass(frozen=True, slots=True)
class Grant:
    account_id: str
    email: str
    amount_micro_usd: int
    note: str | None
    balance_after_micro_usd: int
    withdrawable_after_micro_usd: int
    replayed: bool  # True: the key's first result, no second movement


def _replay(action: ActionRecord, account_id: str, amount: int, note: str | None, actor: str) -> Grant:
    """The first grant's answer, for the same admin's retry of the same request only: another
    admin's grant that happens to reuse the key is a conflict, not a silent no-op."""
    detail = action.detail or {}
    if (action.target_account_id, action.amount_micro_usd, detail.get("note")) != (account_id, amount, note):
        raise IdempotencyConflict("this Idempotency-Key was already used for a different request")
    if action.actor != actor:
        raise IdempotencyConflict("this Idempotency-Key was already used by another admin")
    return Grant(account_id, str(detail.get("email", "")), amount, note,
                 int(detail["balance_after_micro_usd"]), int(detail["withdrawable_after_micro_usd"]),
                 replayed=True)


async def grant(sessions: async_sessionmaker[AsyncSession], kind: str, *, account_id: str, email: str,
                amount_micro_usd: int, note: str | None, idempotency_key: str, actor: str) -> Grant:
    """Move ``amount_micro_usd`` into (credit, reward) or out of (debit) an account, with its ledger
    row (reference = the Idempotency-Key, ``actor`` = the admin) and its audit row in one
    transaction. The same key with the same request returns the first result and moves nothing;
    with another request it raises IdempotencyConflict. A debit the balance cannot cover raises
    ledger.InsufficientFunds with nothing written."""
    if kind not in GRANT_KINDS:
        raise ValueError(f"{kind!r} is not an admin grant")
    signed = -amount_micro_usd if kind == "admin_debit" else amount_micro_usd
    try:
        async with ledger.transaction(sessions) as session:
            await ledger.lock(session, account_id)
            if await ledger.existing(session, kind, idempotency_key) is not None:  # indexed, unlike actions
                if (first := await find_action(session, kind, idempotency_key)) is None:
                    raise IdempotencyConflict("this Idempotency-Key is already used by another movement")
                return _replay(first, account_id, amount_micro_usd, note, actor)
            try:
                entry = await ledger.post(session, account_id, signed, kind, idempotency_key, actor=actor)
            except ledger.ReferenceConflict:
                entry = None
            if entry is None or entry.replayed:  # the key names a movement no admin action made
                raise IdempotencyConflict("this Idempotency-Key is already used by another movement")
            withdrawable = (await session.execute(select(Balance.withdrawable_micro_usd).where(
                Balance.account_id == account_id))).scalar_one()
            result = Grant(account_id, email, amount_micro_usd, note, entry.balance_after_micro_usd,
                           withdrawable, replayed=False)
            await record_action(session, actor=actor, action=kind, target_account_id=account_id,
                                amount_micro_usd=amount_micro_usd, reference=idempotency_key,
                                detail={"email": email, "note": note,
                                        "balance_after_micro_usd": result.balance_after_micro_usd,
                                        "withdrawable_after_micro_usd": withdrawable})
            return result
    except IntegrityError:
        # The same key, for another account, committed first (the ledger's unique (kind, reference)).
        async with sessions() as session:
            first = await find_action(session, kind, idempotency_key)
            if first is None and await ledger.existing(session, kind, idempotency_key) is None:
                raise  # not the key's uniqueness: a real fault
        if first is None:
            raise IdempotencyConflict("this Idempotency-Key is already used by another movement") from None
        return _replay(first, account_id, amount_micro_usd, note, actor)
