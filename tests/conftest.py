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


# --- where the suite's time goes -------------------------------------------------------------

_FILE_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Setup, call and teardown time per test file (a module's stack starts in its first setup)."""
    path = report.nodeid.partition("::")[0]
    _FILE_SECONDS[path] = _FILE_SECONDS.get(path, 0.0) + report.duration


@pytest.hookimpl(trylast=True)  # after the slowest tests, next to the result line
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The slowest files, after the slowest tests: a suite kept near 20 minutes needs to see
    which files to make cheaper, and a module-scoped stack's start is in no single test's call."""
    if not _FILE_SECONDS:
        return
    total = sum(_FILE_SECONDS.values())
    terminalreporter.section("slowest 15 files")
    for path, seconds in sorted(_FILE_SECONDS.items(), key=lambda item: -item[1])[:15]:
        terminalreporter.write_line(f"{seconds:8.1f}s {100 * seconds / total:5.1f}%  {path}")
    terminalreporter.write_line(f"{total:8.1f}s in all ({len(_FILE_SECONDS)} files)")
