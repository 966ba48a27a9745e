"""Invite codes over HTTP (api.md §8, billing.md §8): redeem with a key (or session); admins create,
list and deactivate them. Redemption and creation are financial-tier rate limited."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from darkbloom.coordinator.api.admin import usd_field
from darkbloom.coordinator.api.auth import AdminDep
from darkbloom.coordinator.api.bodies import json_object, openapi_body, rfc3339, string_field
from darkbloom.coordinator.api.ratelimit import FinancialAdminDep, FinancialKeyDep
from darkbloom.coordinator.money import format_usd
from darkbloom.coordinator.store import invites
from darkbloom.coordinator.store.admin_actions import actor_of
from darkbloom.coordinator.store.credentials import now
from darkbloom.coordinator.store.ledger import BalanceLimit
from darkbloom.errors import Conflict, InvalidRequest, NotFound

router = APIRouter()
MAX_CODE_CHARS = 128
MAX_TIMESTAMP_CHARS = 64
MAX_LIFETIME = timedelta(days=36_525)
# InviteError.reason -> the error's code (400 unless unknown, which is a 404).
_REFUSALS = {"inactive": "invite_inactive", "expired": "invite_expired", "exhausted": "invite_exhausted",
             "already_used": "already_used"}


def _code_field(body: dict[str, Any], required: bool) -> str | None:
    text = string_field(body, "code", MAX_CODE_CHARS, required=required)
    if text is None:
        return None
    code = invites.normalise_invite_code(text)
    if code is None and not required:
        raise InvalidRequest("code must be 3-64 letters, digits, hyphens or underscores, starting with "
                             "a letter or digit", param="code")
    return code


def _max_uses(body: dict[str, Any]) -> int:
    value = body.get("max_uses")
    if value is None or (value == 0 and not isinstance(value, bool)):  # the reference's "0 or missing"
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= invites.MAX_USES:
        raise InvalidRequest(f"max_uses must be a whole number from 1 to {invites.MAX_USES}",
                             param="max_uses")
    return value


def _expires_at(body: dict[str, Any]) -> datetime | None:
    text = string_field(body, "expires_at", MAX_TIMESTAMP_CHARS, required=False)
    if text is None:
        return None
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest('expires_at must be an RFC 3339 time like "2027-01-31T00:00:00Z"',
                             param="expires_at") from None
    if stamp.tzinfo is None:
        raise InvalidRequest("expires_at needs a time zone (Z or +hh:mm)", param="expires_at")
    if stamp <= now():
        raise InvalidRequest("expires_at must be in the future", param="expires_at")
    if stamp > now() + MAX_LIFETIME:  # also keeps far-future stamps inside the databases' range
        raise InvalidRequest("expires_at must be within 100 years", param="expires_at")
    return stamp.astimezone(UTC)


def _listing(info: invites.InviteInfo) -> dict[str, Any]:
    return {"code": info.code, "amount_usd": format_usd(info.amount_micro_usd, 2),
            "amount_micro_usd": info.amount_micro_usd, "max_uses": info.max_uses,
            "used_count": info.used_count, "active": info.active, "expires_at": rfc3339(info.expires_at),
            "created_at": rfc3339(info.created_at)}


@router.post("/v1/invite/redeem", openapi_extra=openapi_body(("code",), code="string"))
async def redeem(request: Request, identity: FinancialKeyDep) -> dict[str, Any]:
    code = string_field(await json_object(request), "code", MAX_CODE_CHARS) or ""
    try:
        done = await invites.redeem_invite(request.app.state.sessions, identity.account_id, code)
    except invites.InviteError as exc:
        if exc.reason == "not_found":
            raise NotFound("invalid invite code", param="code") from None
        raise InvalidRequest(exc.message, param="code", code=_REFUSALS[exc.reason]) from None
    except BalanceLimit:
        raise InvalidRequest("this account cannot hold more money", param="code") from None
    return {"credited_usd": format_usd(done.credited_micro_usd, 2),
            "balance_usd": format_usd(done.balance_after_micro_usd),
            "credited_micro_usd": done.credited_micro_usd,
            "balance_micro_usd": done.balance_after_micro_usd}


@router.post("/v1/admin/invite-codes", status_code=201, openapi_extra=openapi_body(
    ("amount_usd",), code="string", amount_usd="string", max_uses="integer", expires_at="string"))
async def create_invite(request: Request, admin: FinancialAdminDep) -> Response:
    body = await json_object(request)
    code = _code_field(body, required=False)
    amount = usd_field(body, "amount_usd", decimals=2, cap_micro_usd=invites.MAX_INVITE_MICRO_USD)
    max_uses, expires_at = _max_uses(body), _expires_at(body)
    try:
        made = await invites.create_invite(request.app.state.sessions, amount_micro_usd=amount, code=code,
                                           max_uses=max_uses, expires_at=expires_at,
                                           actor=actor_of(admin.account_id if admin else None))
    except invites.InviteExists:
        raise Conflict(f"invite code {code} exists already", param="code") from None
    return JSONResponse({"code": made.code, "amount_usd": format_usd(made.amount_micro_usd, 2),
                         "amount_micro_usd": made.amount_micro_usd, "max_uses": made.max_uses,
                         "expires_at": rfc3339(made.expires_at)}, status_code=201)


@router.get("/v1/admin/invite-codes")
async def list_invites(request: Request, admin: AdminDep) -> dict[str, Any]:
    return {"invite_codes": [_listing(info) for info in
                             await invites.list_invites(request.app.state.sessions)]}


@router.delete("/v1/admin/invite-codes", openapi_extra=openapi_body(("code",), code="string"))
async def deactivate_invite(request: Request, admin: AdminDep) -> dict[str, str]:
    code = _code_field(await json_object(request), required=True)
    if code is None or not await invites.deactivate_invite(
            request.app.state.sessions, code, actor=actor_of(admin.account_id if admin else None)):
        raise NotFound("no such invite code", param="code")
    return {"status": "deactivated"}
