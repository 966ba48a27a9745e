"""Alembic environment: async engine, URL from the caller (or the coordinator settings)."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from darkbloom.coordinator.store.db import make_engine
from darkbloom.coordinator.store.tables import Base

target_metadata = Base.metadata


def _url() -> str:
    url = context.config.attributes.get("database_url")
    if url:
        return str(url)
    from darkbloom.config import get_coordinator_settings

    return get_coordinator_settings().database_url


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Several coordinators starting at once on one database: one migrates, the others
            # wait here and then find the schema at head (the lock ends with the transaction).
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(4242104210)")
        context.run_migrations()


async def _run_async() -> None:
    engine = make_engine(_url())
    async with engine.connect() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_async())
