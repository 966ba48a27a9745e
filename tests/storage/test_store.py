"""Migrations, credentials and the request log against real SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.coordinator.store import credentials
from darkbloom.coordinator.store.db import alembic_config, make_engine, upgrade
from darkbloom.coordinator.store.requests_log import RequestOutcome, recent, record
from darkbloom.coordinator.store.tables import ApiKey, ProviderToken


async def test_migrations_are_idempotent_and_complete(database_url: str) -> None:
    await upgrade(database_url)
    await upgrade(database_url)  # a restart applies nothing twice
    engine = make_engine(database_url)
    async with engine.connect() as conn:
        tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
        version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()
    await engine.dispose()
    assert {"accounts", "api_keys", "provider_tokens", "requests", "alembic_version"} <= tables
    assert version == ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()


async def test_api_keys_are_stored_only_as_hashes(sessions: async_sessionmaker[AsyncSession]) -> None:
    issued = await credentials.create_api_key(sessions, label="laptop")
    assert issued.secret.startswith("sk-db-") and len(issued.secret) >= len("sk-db-") + 43
    identity = await credentials.lookup_api_key(sessions, issued.secret)
    assert identity is not None and identity.key_id == issued.id and identity.account_id == "local"
    async with sessions() as session:
        row = (await session.execute(select(ApiKey))).scalar_one()
        dump = repr([getattr(row, c.key) for c in ApiKey.__table__.columns])
    assert issued.secret not in dump and row.key_hash == credentials.hash_secret(issued.secret)
    assert row.prefix == issued.secret[:12]
    assert await credentials.lookup_api_key(sessions, issued.secret + "x") is None
    assert await credentials.lookup_api_key(sessions, "garbage") is None


async def test_revoked_key_stops_working(sessions: async_sessionmaker[AsyncSession]) -> None:
    issued = await credentials.create_api_key(sessions)
    assert await credentials.revoke_api_key(sessions, issued.id)
    assert not await credentials.revoke_api_key(sessions, issued.id)
    assert await credentials.lookup_api_key(sessions, issued.secret) is None


async def test_provider_tokens(sessions: async_sessionmaker[AsyncSession]) -> None:
    issued = await credentials.create_provider_token(sessions, account_id="acct1", label="mac")
    assert issued.secret.startswith("darkbloom-pt-") and len(issued.secret) == len("darkbloom-pt-") + 64
    assert await credentials.lookup_provider_token(sessions, issued.secret) == "acct1"
    assert await credentials.lookup_provider_token(sessions, "darkbloom-pt-" + "0" * 64) is None
    async with sessions() as session:
        row = (await session.execute(select(ProviderToken))).scalar_one()
    assert row.token_hash != issued.secret


async def test_request_log_round_trip(sessions: async_sessionmaker[AsyncSession]) -> None:
    base = datetime.now(UTC)
    for i in range(3):
        await record(sessions, RequestOutcome(
            id=f"req{i}", endpoint="/v1/chat/completions", model="smollm2-135m", stream=bool(i % 2),
            created_at=base + timedelta(seconds=i), api_key_id="k", account_id="local",
            provider_id="p", status="completed", status_code=200, prompt_tokens=10 + i,
            completion_tokens=5, ttft_ms=12.5, duration_ms=99.0, attempts=1, bytes_out=1234))
    rows = await recent(sessions, limit=2)
    assert [r.id for r in rows] == ["req2", "req1"]
    assert rows[0].prompt_tokens == 12 and rows[0].stream is False and rows[1].stream is True
    assert rows[0].ttft_ms == 12.5


async def test_receipts_by_x_request_id_and_account(sessions: async_sessionmaker[AsyncSession]) -> None:
    from darkbloom.coordinator.store.requests_log import find_receipt

    base = datetime.now(UTC)
    for i, account in enumerate(("a", "a", "b")):
        await record(sessions, RequestOutcome(
            id=f"r{i}", endpoint="/v1/chat/completions", model="m", stream=False,
            created_at=base + timedelta(seconds=i), account_id=account, status="completed",
            status_code=200, x_request_id="same-id", receipt=f'{{"n":{i}}}', receipt_signature="sig"))
    assert await find_receipt(sessions, "same-id", "a") == ('{"n":1}', "sig")
    assert await find_receipt(sessions, "same-id", "b") == ('{"n":2}', "sig")
    assert await find_receipt(sessions, "other-id", "a") is None


async def test_key_minimum_trust_level(sessions: async_sessionmaker[AsyncSession]) -> None:
    issued = await credentials.create_api_key(sessions, min_trust_level="hardware")
    identity = await credentials.lookup_api_key(sessions, issued.secret)
    assert identity is not None and identity.min_trust_level == "hardware"
