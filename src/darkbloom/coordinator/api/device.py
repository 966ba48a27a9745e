"""Device-code login and an account's provider tokens over HTTP (api.md §6, provider.md
"Device-code login", docs/device-login.md).

    darkbloom login ── POST /v1/device/code ──▶ device_code (secret), user_code, /link URL
    person at /link ── POST /v1/device/approve {user_code} (session) ──▶ linked to the account
    darkbloom login ── POST /v1/device/token {device_code} every `interval` s ──▶ the token, once

The provider token is minted through the same store as `darkbloom admin provider-token`, so a
machine linked this way earns into the approving account like any other.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from darkbloom.coordinator.api.auth import SessionDep
from darkbloom.coordinator.api.bodies import json_object, openapi_body, rfc3339, string_field
from darkbloom.coordinator.api.ratelimit import DeviceCodeLimit, FinancialSessionDep
from darkbloom.coordinator.routing.scheduler import Scheduler
from darkbloom.coordinator.store import device_codes as store
from darkbloom.coordinator.store.credentials import (
    MAX_LISTED_TOKENS,
    list_account_provider_tokens,
    revoke_own_provider_token,
)
from darkbloom.errors import Conflict, Gone, InvalidRequest, NotFound, TooManyRequests
from darkbloom.protocol.frames import CLOSE_BAD_TOKEN

router = APIRouter()
# Secrets in the answer: no cache may keep it (RFC 6749 §5.1, which RFC 8628 §3.5 follows).
NO_STORE = {"cache-control": "no-store", "pragma": "no-cache"}
MAX_DEVICE_CODE_CHARS = 128  # a device code is 64; longer is a 400, not a hash of megabytes
MAX_USER_CODE_CHARS = 32  # "abcd-efgh" with room for spaces a person typed


def _now() -> datetime:
    return datetime.now(UTC)


@router.post("/v1/device/code")
async def device_code(request: Request, _limited: DeviceCodeLimit) -> JSONResponse:
    """A new code pair. No body is read: there is nothing to say before signing in."""
    settings = request.app.state.settings
    issued = await store.create(request.app.state.sessions, _now(),
                                timedelta(seconds=settings.device_code_lifetime_s))
    return JSONResponse({"device_code": issued.device_code, "user_code": issued.user_code,
                         "verification_uri": settings.public_url.rstrip("/") + "/link",
                         "expires_in": settings.device_code_lifetime_s,
                         "interval": settings.device_poll_interval_s}, headers=NO_STORE)


@router.post("/v1/device/token", openapi_extra=openapi_body(("device_code",), device_code="string"))
async def device_token(request: Request) -> JSONResponse:
    code = string_field(await json_object(request), "device_code", MAX_DEVICE_CODE_CHARS)
    if not code:
        raise InvalidRequest("device_code is required", param="device_code")
    if not store.is_device_code(code):
        raise NotFound("unknown device code; run `darkbloom login` again", param="device_code",
                       code="invalid_grant")
    interval = request.app.state.settings.device_poll_interval_s
    polled = await store.poll(request.app.state.sessions, code, _now(), timedelta(seconds=interval))
    if polled.outcome == "unknown":
        raise NotFound("unknown device code; run `darkbloom login` again", param="device_code",
                       code="invalid_grant")
    if polled.outcome == "expired":
        raise Gone("this device code has expired; run `darkbloom login` again", code="expired_token")
    if polled.outcome == "consumed":
        raise Gone("this device code was already used to issue a token; run `darkbloom login` "
                   "again", code="expired_token")
    if polled.outcome == "slow_down":
        raise TooManyRequests(f"polling too fast: poll at most every {interval} s", code="slow_down",
                              headers={"retry-after": str(interval)})
    if polled.outcome == "pending":
        return JSONResponse({"status": "authorization_pending"}, headers=NO_STORE)
    return JSONResponse({"status": "authorized", "token": polled.token,
                         "account_id": polled.account_id}, headers=NO_STORE)


@router.post("/v1/device/approve", openapi_extra=openapi_body(("user_code",), user_code="string"))
async def device_approve(request: Request, identity: FinancialSessionDep) -> dict[str, str]:
    typed = string_field(await json_object(request), "user_code", MAX_USER_CODE_CHARS) or ""
    if not typed.strip():
        raise InvalidRequest("user_code is required", param="user_code")
    code = store.normalise_user_code(typed)
    outcome = "unknown" if code is None else await store.approve(
        request.app.state.sessions, code, identity.account_id, _now())
    if outcome == "unknown":
        raise NotFound("no such code: check the code your terminal shows", param="user_code",
                       code="invalid_code")
    if outcome == "expired":
        raise Gone("this code has expired: run `darkbloom login` again for a new one",
                   param="user_code", code="expired_code")
    if outcome == "already_used":
        raise Conflict("this code was already used", param="user_code", code="already_used")
    return {"status": "approved",
            "message": "device linked to your account; it finishes signing in at its next poll "
                       "and earns for this account from then on"}


@router.get("/v1/me/provider-tokens")
async def provider_tokens(
    request: Request, identity: SessionDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LISTED_TOKENS)] = MAX_LISTED_TOKENS,
    before: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
) -> dict[str, Any]:
    """Newest first, ``limit`` a page; while ``truncated``, pass ``next_before`` as ``before``."""
    page = await list_account_provider_tokens(request.app.state.sessions, identity.account_id,
                                              limit, before)
    if page is None:
        raise InvalidRequest("before must be the id of one of your provider tokens (the "
                             "next_before of the previous page)", param="before")
    return {"tokens": [{"id": t.id, "prefix": t.prefix, "label": t.label,
                        "created_at": rfc3339(t.created_at), "last_used_at": rfc3339(t.last_used_at)}
                       for t in page.tokens],
            "truncated": page.truncated,
            "next_before": page.tokens[-1].id if page.truncated else None}


@router.delete("/v1/me/provider-tokens", openapi_extra=openapi_body(("id",), id="string"))
async def revoke_provider_token(request: Request, identity: SessionDep) -> dict[str, str]:
    token_id = string_field(await json_object(request), "id", 64) or ""
    if not token_id:
        raise InvalidRequest("id is required (from GET /v1/me/provider-tokens)", param="id")
    state = request.app.state
    if not await revoke_own_provider_token(state.sessions, identity.account_id, token_id):
        raise NotFound("provider token not found or already revoked", param="id")
    # This coordinator's sockets close now; other coordinators' within provider_token_poll_s.
    scheduler: Scheduler = state.scheduler
    for conn in [p for p in scheduler.providers.values() if p.token_id == token_id and p.home is None]:
        if conn.kick is not None:
            conn.kick(CLOSE_BAD_TOKEN, "provider token revoked")
    return {"status": "revoked"}
