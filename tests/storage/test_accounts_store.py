"""Accounts, sessions and key revocation against real SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable
from datetime import timedelta

from sqlalchemy import inspect, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.coordinator.store import accounts, credentials
from darkbloom.coordinator.store.db import make_engine
from darkbloom.coordinator.store.tables import ApiKey, LoginSession

IDLE = timedelta(days=30)


async def test_migration_0006_adds_the_account_columns_and_sessions(
        database_url: str, sessions: async_sessionmaker[AsyncSession]) -> None:
    engine = make_engine(database_url)
    async with engine.connect() as conn:
        columns = await conn.run_sync(lambda c: {col["name"] for col in inspect(c).get_columns("accounts")})
        tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    await engine.dispose()
    assert {"email", "password_hash", "is_admin"} <= columns
    assert "sessions" in tables


async def test_signup_is_unique_by_email_in_any_case(sessions: async_sessionmaker[AsyncSession]) -> None:
    first = accounts.normalise_email("  Alice@Example.COM ")
    assert first == "alice@example.com"
    account_id = await accounts.create_account(sessions, first, "hash")
    assert account_id is not None
    again = accounts.normalise_email("ALICE@example.com")
    assert again is not None
    assert await accounts.create_account(sessions, again, "other") is None
    assert await accounts.find_login(sessions, again) == (account_id, "hash")
    info = await accounts.get_account(sessions, account_id)
    assert info is not None and info.email == first and not info.is_admin
    assert info.created_at.tzinfo is not None


async def test_concurrent_signups_with_one_email_make_one_account(
        sessions: async_sessionmaker[AsyncSession]) -> None:
    made = await asyncio.gather(*(accounts.create_account(sessions, "race@example.com", "h")
                                  for _ in range(8)))
    assert sum(m is not None for m in made) == 1


async def test_a_session_is_stored_hashed_and_expires_when_idle(
        sessions: async_sessionmaker[AsyncSession]) -> None:
    account_id = await accounts.create_account(sessions, "bob@example.com", "h")
    assert account_id is not None
    issued = await accounts.open_session(sessions, account_id, IDLE)
    assert issued.token.startswith(accounts.SESSION_PREFIX)
    async with sessions() as session:
        row = (await session.execute(select(LoginSession))).scalar_one()
    assert row.token_hash == credentials.hash_secret(issued.token) != issued.token
    assert row.csrf_hash == credentials.hash_secret(issued.csrf_token)

    found = await accounts.find_session(sessions, issued.token, IDLE)
    assert found is not None and found.account_id == account_id and found.email == "bob@example.com"
    assert accounts.csrf_matches(found.csrf_hash, issued.csrf_token)
    assert not accounts.csrf_matches(found.csrf_hash, issued.token)

    # Used 29 days later: still alive, and the use slides the expiry forward another 30 days.
    later = credentials.now() + timedelta(days=29)
    assert await accounts.find_session(sessions, issued.token, IDLE, at=later) is not None
    assert await accounts.find_session(sessions, issued.token, IDLE,
                                       at=later + timedelta(days=29)) is not None
    # Then 31 idle days: gone.
    assert await accounts.find_session(sessions, issued.token, IDLE, at=later + timedelta(days=60)) is None
    assert await accounts.find_session(sessions, "dbs-" + "0" * 64, IDLE) is None
    assert await accounts.find_session(sessions, issued.csrf_token, IDLE) is None


async def test_logout_deletes_the_session_and_grant_sets_the_flag(
        sessions: async_sessionmaker[AsyncSession]) -> None:
    account_id = await accounts.create_account(sessions, "carol@example.com", "h")
    assert account_id is not None
    issued = await accounts.open_session(sessions, account_id, IDLE)
    found = await accounts.find_session(sessions, issued.token, IDLE)
    assert found is not None and not found.is_admin
    assert await accounts.grant_admin(sessions, "carol@example.com")
    assert not await accounts.grant_admin(sessions, "nobody@example.com")
    found = await accounts.find_session(sessions, issued.token, IDLE)
    assert found is not None and found.is_admin
    await accounts.close_session(sessions, found.session_id)
    assert await accounts.find_session(sessions, issued.token, IDLE) is None


async def test_keys_are_listed_and_revoked_only_by_their_owner(
        sessions: async_sessionmaker[AsyncSession]) -> None:
    mine = await credentials.create_api_key(sessions, "acct-a", "laptop")
    other = await credentials.create_api_key(sessions, "acct-b")
    assert mine.secret.startswith("sk-db-") and len(mine.secret) == 6 + 64
    int(mine.secret[6:], 16)
    listed = await credentials.list_api_keys(sessions, "acct-a")
    assert [(k.id, k.prefix, k.label) for k in listed] == [(mine.id, mine.secret[:12], "laptop")]

    def revoke(account: str, **which: str) -> Awaitable[tuple[str, str | None]]:
        return credentials.revoke_own_api_key(sessions, account, **which)

    assert await revoke("acct-a", secret=other.secret) == ("forbidden", None)
    assert await revoke("acct-a", key_id=other.id) == ("forbidden", None)
    assert await credentials.lookup_api_key(sessions, other.secret) is not None
    assert await revoke("acct-a", secret=mine.secret) == ("revoked", mine.id)
    assert await revoke("acct-a", key_id=mine.id) == ("not_found", None)
    assert await revoke("acct-a", key_id="nope") == ("not_found", None)
    assert await credentials.lookup_api_key(sessions, mine.secret) is None
    assert await credentials.list_api_keys(sessions, "acct-a") == []
    assert await revoke("acct-b", key_id=other.id) == ("revoked", other.id)


async def test_keys_minted_in_the_old_format_still_work(sessions: async_sessionmaker[AsyncSession]) -> None:
    old = "sk-db-" + secrets.token_urlsafe(32)
    async with sessions.begin() as session:
        await credentials.ensure_account(session, "acct-old")
        session.add(ApiKey(id="old-key", account_id="acct-old", prefix=old[:12],
                           key_hash=credentials.hash_secret(old), created_at=credentials.now()))
    found = await credentials.lookup_api_key(sessions, old)
    assert found is not None and found.account_id == "acct-old"
