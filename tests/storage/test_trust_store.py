"""Quarantine and provider-token revocation against real SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.coordinator.store import credentials
from darkbloom.coordinator.store.db import make_engine
from darkbloom.coordinator.store.quarantine import QuarantineEntry, active_quarantines, add_quarantine
from darkbloom.coordinator.trust.quarantine import Quarantine


async def test_quarantine_table_is_migrated(database_url: str,
                                            sessions: async_sessionmaker[AsyncSession]) -> None:
    engine = make_engine(database_url)
    async with engine.connect() as conn:
        columns = await conn.run_sync(
            lambda c: {col["name"] for col in inspect(c).get_columns("provider_quarantine")})
        version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()
    await engine.dispose()
    assert {"identity_key", "serial", "reason", "until"} <= columns
    assert version >= "0005"


async def test_quarantine_survives_a_restart(sessions: async_sessionmaker[AsyncSession]) -> None:
    first = Quarantine(sessions, 3600)
    await first.load()
    assert first.check("key-a", None) is None
    entry = first.add("key-a", "SERIAL-1", "posture regression: core dumps were re-enabled")
    assert first.check("key-a", None) == entry  # in memory at once, before the row is written
    await first.flush()

    restarted = Quarantine(sessions, 3600)  # a new coordinator process on the same database
    await restarted.load()
    found = restarted.check("key-a", None)
    assert found is not None and found.reason.startswith("posture regression")
    assert abs(found.until - entry.until) < timedelta(seconds=1)
    assert restarted.check("another-key", "SERIAL-1") is not None  # the serial is barred too
    assert restarted.check("another-key", None) is None
    assert restarted.check("key-a", None, now=entry.until + timedelta(seconds=1)) is None


async def test_expired_quarantines_are_not_loaded(sessions: async_sessionmaker[AsyncSession]) -> None:
    now = datetime.now(UTC)
    await add_quarantine(sessions, QuarantineEntry("old", None, "long ago", now - timedelta(minutes=1)))
    await add_quarantine(sessions, QuarantineEntry("new", None, "just now", now + timedelta(hours=1)))
    assert [e.identity_key for e in await active_quarantines(sessions)] == ["new"]


async def test_revoke_provider_token_by_id_prefix_or_token(
        sessions: async_sessionmaker[AsyncSession]) -> None:
    a = await credentials.create_provider_token(sessions, label="a")
    b = await credentials.create_provider_token(sessions, label="b")
    c = await credentials.create_provider_token(sessions, label="c")
    found = await credentials.find_provider_token(sessions, a.secret)
    assert found is not None and found.token_id == a.id
    # Ambiguous or unknown references revoke nothing.
    assert sorted(await credentials.revoke_provider_token(sessions, "darkbloom-pt-")) == \
        sorted([a.id, b.id, c.id])
    assert await credentials.revoke_provider_token(sessions, "no-such-id") == []
    assert await credentials.revoked_provider_tokens(sessions, {a.id, b.id, c.id}) == set()

    assert await credentials.revoke_provider_token(sessions, a.prefix) == [a.id]
    assert await credentials.revoke_provider_token(sessions, b.id[:10]) == [b.id]
    assert await credentials.revoke_provider_token(sessions, c.secret) == [c.id]
    assert await credentials.revoke_provider_token(sessions, a.prefix) == []  # already revoked
    assert await credentials.revoked_provider_tokens(sessions, {a.id, b.id, c.id, "x"}) == \
        {a.id, b.id, c.id}
    assert await credentials.find_provider_token(sessions, a.secret) is None
    assert {t.id for t in await credentials.list_provider_tokens(sessions)} == {a.id, b.id, c.id}
