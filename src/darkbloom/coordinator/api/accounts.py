"""Sign-up, sign-in, sessions and API keys over HTTP (api.md §6, issue 9 "Sessions")."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from darkbloom.coordinator.api.auth import CSRF_COOKIE, SESSION_COOKIE, SessionDep, is_admin
from darkbloom.coordinator.api.bodies import json_object, openapi_body, rfc3339, string_field
from darkbloom.coordinator.api.ratelimit import (
    FINANCIAL,
    FinancialSessionDep,
    SignupLimit,
    client_key,
    enforce,
)
from darkbloom.coordinator.store import accounts as store
from darkbloom.coordinator.store.credentials import (
    create_api_key,
    list_api_keys,
    revoke_own_api_key,
)
from darkbloom.errors import (
    AuthenticationFailed,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    TooManyRequests,
)

T = TypeVar("T")
router = APIRouter()
MAX_LABEL_CHARS = 128
# argon2 (tens of ms and 64 MiB a call) runs on its own few threads, not the default executor that
# request parsing and tokenizing use, and only this many sign-ins wait for it: more get a 429.
MAX_PASSWORD_WAITING = 32
_password_pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="argon2")
_password_waiting = 0


def password_waiting() -> int:
    return _password_waiting


async def _password_work(work: Callable[..., T], *args: Any) -> T:
    global _password_waiting
    if _password_waiting >= MAX_PASSWORD_WAITING:
        raise TooManyRequests("too many sign-ins at once; retry in a moment", code="rate_limited",
                             headers={"retry-after": "1"})
    _password_waiting += 1
    try:
        return await asyncio.get_running_loop().run_in_executor(_password_pool, work, *args)
    finally:
        _password_waiting -= 1


_CREDENTIALS = openapi_body(("email", "password"), email="string", password="string")


def _credentials(body: dict[str, Any]) -> tuple[str, str]:
    email = store.normalise_email(string_field(body, "email", 1024) or "")
    if email is None:
        raise InvalidRequest("email is not a valid email address", param="email")
    password = string_field(body, "password", store.PASSWORD_MAX_CHARS) or ""
    return email, password


def _idle(request: Request) -> timedelta:
    return timedelta(days=request.app.state.settings.session_idle_days)


# Answers that carry a secret (a session token, an API key) are never kept by a cache.
NO_STORE = {"cache-control": "no-store", "pragma": "no-cache"}


def _secure_cookies(request: Request) -> bool:
    """Secure cookies when this request came over TLS or the console's public URL is https: behind
    a TLS-terminating proxy the hop to the coordinator is plain http, yet browsers use https."""
    return request.url.scheme == "https" or \
        request.app.state.settings.public_url.lower().startswith("https://")


async def _signed_in(request: Request, account_id: str, email: str, status: int) -> Response:
    issued = await store.open_session(request.app.state.sessions, account_id, _idle(request))
    response = JSONResponse({"account_id": account_id, "email": email,
                             "session_token": issued.token, "csrf_token": issued.csrf_token},
                            status_code=status, headers=NO_STORE)
    max_age, secure = int(_idle(request).total_seconds()), _secure_cookies(request)
    response.set_cookie(SESSION_COOKIE, issued.token, max_age=max_age, httponly=True, samesite="lax",
                        secure=secure)
    # The console's scripts send this back as X-CSRF-Token (double submit, checked against the
    # session's stored hash); readable by this origin's scripts only, useless without the session.
    response.set_cookie(CSRF_COOKIE, issued.csrf_token, max_age=max_age, samesite="strict",
                        secure=secure)
    return response


@router.post("/v1/auth/signup", status_code=201, openapi_extra=_CREDENTIALS)
async def signup(request: Request, _limited: SignupLimit) -> Response:
    email, password = _credentials(await json_object(request))
    if email in request.app.state.settings.admin_emails:
        # Nobody verifies email ownership: whoever signed up first would be an admin.
        raise Forbidden("this address is reserved for an administrator; the operator creates it "
                        "with `darkbloom admin grant --email ... --create`", param="email")
    if problem := store.password_problem(password):
        raise InvalidRequest(problem, param="password")
    hashed = await _password_work(store.hash_password, password)
    account_id = await store.create_account(request.app.state.sessions, email, hashed)
    if account_id is None:
        raise Conflict("an account with this email already exists", param="email", code="email_taken")
    return await _signed_in(request, account_id, email, 201)


@router.post("/v1/auth/login", openapi_extra=_CREDENTIALS)
async def login(request: Request) -> Response:
    email, password = _credentials(await json_object(request))
    # Online guessing: the financial tier per client and address (per address alone would let
    # anyone lock a person out; per client alone, one client could try every address).
    await enforce(request, FINANCIAL, "login", client_key(request.client.host) if request.client else "",
                  email)
    found = await store.find_login(request.app.state.sessions, email)
    # Verified even when the email is unknown (against a dummy hash), so both failures take as long.
    ok = await _password_work(store.verify_password, found[1] if found else None, password)
    if not found or not ok:
        raise AuthenticationFailed("incorrect email or password", code="invalid_credentials")
    return await _signed_in(request, found[0], email, 200)


@router.post("/v1/auth/logout")
async def logout(request: Request, identity: SessionDep) -> Response:
    await store.close_session(request.app.state.sessions, identity.session_id)
    response = JSONResponse({"status": "signed_out"})
    secure = _secure_cookies(request)
    response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="lax", secure=secure)
    response.delete_cookie(CSRF_COOKIE, samesite="strict", secure=secure)
    return response


@router.get("/v1/me")
async def me(request: Request, identity: SessionDep) -> dict[str, Any]:
    account = await store.get_account(request.app.state.sessions, identity.account_id)
    if account is None:
        raise NotFound("account not found")
    return {"account_id": account.account_id, "email": account.email,
            "is_admin": is_admin(identity, request.app.state.settings.admin_emails),
            "created_at": rfc3339(account.created_at)}


@router.post("/v1/auth/keys", openapi_extra=openapi_body((), label="string"))
async def create_key(request: Request, identity: FinancialSessionDep) -> Response:
    label = string_field(await json_object(request), "label", MAX_LABEL_CHARS, required=False) or ""
    issued = await create_api_key(request.app.state.sessions, identity.account_id, label)
    return JSONResponse({"api_key": issued.secret, "account_id": issued.account_id, "id": issued.id,
                         "prefix": issued.prefix, "label": label,
                         "created_at": rfc3339(issued.created_at)}, headers=NO_STORE)


@router.get("/v1/auth/keys")
async def list_keys(request: Request, identity: SessionDep) -> dict[str, Any]:
    keys = await list_api_keys(request.app.state.sessions, identity.account_id)
    return {"keys": [{"id": k.id, "prefix": k.prefix, "label": k.label,
                      "created_at": rfc3339(k.created_at), "last_used_at": rfc3339(k.last_used_at)}
                     for k in keys]}


@router.delete("/v1/auth/keys", openapi_extra=openapi_body((), key="string", id="string"))
async def revoke_key(request: Request, identity: SessionDep) -> dict[str, str]:
    body = await json_object(request)
    secret = string_field(body, "key", 256, required=False)
    key_id = string_field(body, "id", 64, required=False)
    if not secret and not key_id:
        raise InvalidRequest("give the key to revoke as 'key' (the full key) or 'id'", param="key")
    state = request.app.state
    outcome, revoked = await revoke_own_api_key(state.sessions, identity.account_id,
                                                secret=secret or None, key_id=None if secret else key_id)
    if outcome == "forbidden":
        raise Forbidden("you can only revoke your own keys")
    if revoked is None:
        raise NotFound("key not found or already revoked")
    state.key_cache.forget(revoked)
    return {"status": "revoked"}
