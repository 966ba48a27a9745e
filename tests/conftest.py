"""Fixtures shared by every test tier: a fresh PostgreSQL database per test session."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator

import asyncpg
import pytest

PG_HOST = os.environ.get("DARKBLOOM_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("DARKBLOOM_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("DARKBLOOM_TEST_PG_USER", "postgres")


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def fresh_postgres_database() -> tuple[str, str]:
    """Create an empty database; PostgreSQL being down is a failure, never a silent skip."""
    name = "darkbloom_test_" + secrets.token_hex(6)
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    return name, f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"


def drop_postgres_database(name: str) -> None:
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    name, url = fresh_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(name)
