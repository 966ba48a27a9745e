"""The admin dependency (admin routes come later): the admin key, an admin's session, and
everything else refused, on real SQLite and PostgreSQL behind an in-process app."""

from __future__ import annotations

from datetime import timedelta

import httpx
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.config import CoordinatorSettings
from darkbloom.coordinator.api import errors
from darkbloom.coordinator.api.auth import AdminDep
from darkbloom.coordinator.store import accounts, credentials

ADMIN_KEY = "adm-0123456789abcdef"


def _app(sessions: async_sessionmaker[AsyncSession]) -> FastAPI:
    app = FastAPI()
    errors.install(app)
    app.state.sessions = sessions
    app.state.settings = CoordinatorSettings(admin_key=ADMIN_KEY, admin_emails=[" Ops@Example.com"])

    @app.post("/probe")
    async def probe(admin: AdminDep) -> dict[str, str | None]:
        return {"account_id": admin.account_id if admin else None}

    return app


async def _session(sessions: async_sessionmaker[AsyncSession], email: str) -> str:
    account_id = await accounts.create_account(sessions, email, "h")
    assert account_id is not None
    return (await accounts.open_session(sessions, account_id, timedelta(days=1))).token


async def test_admin_dependency(sessions: async_sessionmaker[AsyncSession]) -> None:
    ops, plain = await _session(sessions, "ops@example.com"), await _session(sessions, "x@example.com")
    key = (await credentials.create_api_key(sessions)).secret
    async with httpx.AsyncClient(transport=httpx.ASGITransport(_app(sessions)),
                                 base_url="http://t") as http:
        async def probe(bearer: str | None) -> httpx.Response:
            headers = {"authorization": f"Bearer {bearer}"} if bearer is not None else {}
            return await http.post("/probe", headers=headers)

        assert (await probe(ADMIN_KEY)).json() == {"account_id": None}
        assert (await probe(ops)).status_code == 200
        for refused in (plain, key, ADMIN_KEY + "x", ADMIN_KEY[:-1]):
            answer = await probe(refused)
            assert answer.status_code in (401, 403), answer.text
            if refused in (plain, key):
                assert answer.json()["error"] == {"message": "admin access required", "type": "forbidden",
                                                  "param": None, "code": "forbidden"}
        assert (await probe(None)).status_code == 401
        assert await accounts.grant_admin(sessions, "x@example.com")
        assert (await probe(plain)).status_code == 200
