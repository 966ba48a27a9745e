"""Referral codes over HTTP (api.md §8, billing.md §7), session auth; register and apply are
financial-tier rate limited. ``stats`` and ``info`` answer 404 until the account has a code."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from darkbloom.coordinator.api.auth import SessionDep
from darkbloom.coordinator.api.bodies import json_object, openapi_body, string_field
from darkbloom.coordinator.api.ratelimit import FinancialSessionDep
from darkbloom.coordinator.money import format_usd
from darkbloom.coordinator.store import referrals
from darkbloom.errors import InvalidRequest, NotFound

router = APIRouter()
_CODE_BODY = openapi_body(("code",), code="string")


def _share(request: Request) -> int:
    return int(request.app.state.settings.referral_share_pct)


def _earnings_note(request: Request) -> str:
    """billing.md §7: with no platform fee there is nothing to share, and we say so."""
    if request.app.state.settings.platform_fee_bps == 0:
        return "; the platform fee is 0% for now, so referrals earn nothing yet"
    return f"; you earn {_share(request)}% of the platform fee on your referrals' requests"


async def _code(request: Request) -> str:
    return string_field(await json_object(request), "code", referrals.MAX_CODE_INPUT) or ""


def _refused(exc: referrals.ReferralError) -> InvalidRequest:
    return InvalidRequest(exc.message, param="code", code="referral_error")


@router.post("/v1/referral/register", openapi_extra=_CODE_BODY)
async def register(request: Request, identity: FinancialSessionDep) -> dict[str, Any]:
    try:
        done = await referrals.register_code(request.app.state.sessions, identity.account_id,
                                             await _code(request))
    except referrals.ReferralError as exc:
        raise _refused(exc) from None
    said = "referral code registered" if done.created else "you already have this referral code"
    return {"code": done.code, "share_percent": _share(request), "message": said + _earnings_note(request)}


@router.post("/v1/referral/apply", openapi_extra=_CODE_BODY)
async def apply(request: Request, identity: FinancialSessionDep) -> dict[str, Any]:
    try:
        done = await referrals.apply_referral(request.app.state.sessions, identity.account_id,
                                              await _code(request))
    except referrals.ReferralError as exc:
        raise _refused(exc) from None
    return {"status": "applied", "code": done.code,
            "message": f"referral code {done.code} applied to this account; the link is permanent"}


@router.get("/v1/referral/stats")
async def stats(request: Request, identity: SessionDep) -> dict[str, Any]:
    found = await referrals.referral_stats(request.app.state.sessions, identity.account_id)
    if found is None:
        raise NotFound("this account is not a referrer: register a code first")
    return {"code": found.code, "share_percent": _share(request), "total_referred": found.total_referred,
            "total_rewards_micro_usd": found.total_rewards_micro_usd,
            "total_rewards_usd": format_usd(found.total_rewards_micro_usd),
            "balance_micro_usd": found.balance_micro_usd, "balance_usd": format_usd(found.balance_micro_usd)}


@router.get("/v1/referral/info")
async def info(request: Request, identity: SessionDep) -> dict[str, Any]:
    found = await referrals.referral_info(request.app.state.sessions, identity.account_id)
    if found.code is None:
        raise NotFound("this account is not a referrer: register a code first")
    return {"code": found.code, "share_percent": _share(request), "referred_by": found.referred_by}
