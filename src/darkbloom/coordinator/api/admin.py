"""Admin money routes (api.md §10, billing.md §10): credit, reward and debit an account by email,
and the audit list of admin actions.

A grant needs an ``Idempotency-Key`` header, which becomes the ledger row's reference: retrying
with the same key and body returns the first answer (with ``Idempotent-Replayed: true``) and moves
nothing; the same key with a different body is a 409. A single grant is at most 10 000 USD.
``POST /v1/admin/debit`` (our addition) takes the same body and is refused with 402
``insufficient_funds`` when the balance cannot cover it: nothing is taken, never part of it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from darkbloom.coordinator.api.auth import AdminDep
from darkbloom.coordinator.api.bodies import json_object, openapi_body, rfc3339, string_field
from darkbloom.coordinator.api.ratelimit import FinancialAdminDep
from darkbloom.coordinator.money import MICRO, format_usd, parse_usd
from darkbloom.coordinator.store import admin_actions
from darkbloom.coordinator.store.accounts import SessionIdentity, find_login, normalise_email
from darkbloom.coordinator.store.ledger import InsufficientFunds
from darkbloom.errors import Conflict, InvalidRequest, NotFound, PaymentRequired

router = APIRouter()
MAX_GRANT_MICRO_USD = 10_000 * MICRO  # billing.md §10 Decision
MAX_NOTE_CHARS = 500
MAX_IDEMPOTENCY_KEY_CHARS = 200  # the ledger's reference column
IDEMPOTENCY_HEADER = "Idempotency-Key"
_GRANT_BODY = {**openapi_body(("email", "amount_usd"), email="string", amount_usd="string", note="string"),
               "parameters": [{"name": IDEMPOTENCY_HEADER, "in": "header", "required": True,
                               "schema": {"type": "string", "maxLength": MAX_IDEMPOTENCY_KEY_CHARS}}]}


def usd_field(body: dict[str, Any], name: str, *, decimals: int, cap_micro_usd: int) -> int:
    """``body[name]`` as micro-USD: a string such as ``"5.00"`` (or a JSON integer, exact), above
    zero, at most ``decimals`` decimals and ``cap_micro_usd``; else a 400 naming the field. A JSON
    fraction (``5.5``) is refused: it was a float before we saw it."""
    value = body.get(name)
    if value is None:
        raise InvalidRequest(f"{name} is required", param=name)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise InvalidRequest(f'{name} must be a string of US dollars like "5.00"', param=name)
    try:
        amount = parse_usd(value, decimals)
    except ValueError as exc:
        raise InvalidRequest(f"{name} {exc}", param=name) from None
    if amount <= 0:
        raise InvalidRequest(f"{name} must be greater than 0", param=name)
    if amount > cap_micro_usd:
        raise InvalidRequest(f"{name} must be at most {format_usd(cap_micro_usd, 2)} USD", param=name)
    return amount


def idempotency_key(request: Request) -> str:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if not key:
        raise InvalidRequest(f"the {IDEMPOTENCY_HEADER} header is required: send a new unique value "
                             "(a UUID) for each grant, and the same one to retry it",
                             param=IDEMPOTENCY_HEADER)
    if len(key) > MAX_IDEMPOTENCY_KEY_CHARS:
        raise InvalidRequest(f"{IDEMPOTENCY_HEADER} must be at most {MAX_IDEMPOTENCY_KEY_CHARS} characters",
                             param=IDEMPOTENCY_HEADER)
    if not all("!" <= char <= "~" for char in key):
        raise InvalidRequest(f"{IDEMPOTENCY_HEADER} must be printable ASCII without spaces",
                             param=IDEMPOTENCY_HEADER)
    return key


def _usd_float(micro: int) -> float:
    """The reference's float USD, for display only (``*_micro_usd`` is the exact figure)."""
    return micro / MICRO


def _answer(kind: str, grant: admin_actions.Grant) -> dict[str, Any]:
    body: dict[str, Any] = {"ok": True, "account_id": grant.account_id, "email": grant.email}
    amount = format_usd(grant.amount_micro_usd)
    if kind == "admin_credit":
        body.update(credited_usd=amount, withdrawable=False)
    elif kind == "admin_reward":
        body.update(rewarded_usd=amount, withdrawable=True)
    else:
        body.update(debited_usd=amount)
    body["balance_after"] = _usd_float(grant.balance_after_micro_usd)
    if kind != "admin_credit":
        body["withdrawable_after"] = _usd_float(grant.withdrawable_after_micro_usd)
    body["balance_after_micro_usd"] = grant.balance_after_micro_usd
    return body


async def _grant(request: Request, admin: SessionIdentity | None, kind: str) -> Response:
    key = idempotency_key(request)
    body = await json_object(request)
    email = normalise_email(string_field(body, "email", 1024) or "")
    if email is None:
        raise InvalidRequest("email is not a valid email address", param="email")
    amount = usd_field(body, "amount_usd", decimals=6, cap_micro_usd=MAX_GRANT_MICRO_USD)
    note = string_field(body, "note", MAX_NOTE_CHARS, required=False) or None
    found = await find_login(request.app.state.sessions, email)
    if found is None:
        raise NotFound(f"no account has the email {email}", param="email")
    try:
        grant = await admin_actions.grant(
            request.app.state.sessions, kind, account_id=found[0], email=email, amount_micro_usd=amount,
            note=note, idempotency_key=key, actor=admin_actions.actor_of(admin.account_id if admin else None))
    except admin_actions.IdempotencyConflict as exc:
        raise Conflict(str(exc), param=IDEMPOTENCY_HEADER, code="idempotency_key_reused") from None
    except InsufficientFunds:
        raise PaymentRequired(f"the account's balance cannot cover a debit of {format_usd(amount)} USD; "
                              "nothing was taken") from None
    headers = {"idempotent-replayed": "true"} if grant.replayed else None
    return JSONResponse(_answer(kind, grant), headers=headers)


@router.post("/v1/admin/credit", openapi_extra=_GRANT_BODY)
async def admin_credit(request: Request, admin: FinancialAdminDep) -> Response:
    """Non-withdrawable credit (``admin_credit``)."""
    return await _grant(request, admin, "admin_credit")


@router.post("/v1/admin/reward", openapi_extra=_GRANT_BODY)
async def admin_reward(request: Request, admin: FinancialAdminDep) -> Response:
    """Withdrawable credit (``admin_reward``)."""
    return await _grant(request, admin, "admin_reward")


@router.post("/v1/admin/debit", openapi_extra=_GRANT_BODY)
async def admin_debit(request: Request, admin: FinancialAdminDep) -> Response:
    """Take money back (``admin_debit``): spends non-withdrawable money first (the min rule)."""
    return await _grant(request, admin, "admin_debit")


@router.get("/v1/admin/actions")
async def list_admin_actions(
    request: Request, admin: AdminDep,
    limit: Annotated[int, Query(ge=1, le=admin_actions.MAX_PAGE)] = 50,
    before: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
) -> dict[str, Any]:
    """Newest first; pass the answer's ``next_before`` as ``before`` for the next page."""
    rows = await admin_actions.list_actions(request.app.state.sessions, limit, before)
    return {"actions": [{"id": row.id, "actor": row.actor, "action": row.action,
                         "target_account_id": row.target_account_id,
                         "amount_micro_usd": row.amount_micro_usd, "reference": row.reference,
                         "detail": row.detail, "created_at": rfc3339(row.created_at)} for row in rows],
            "next_before": rows[-1].id if len(rows) == limit else None}
