"""The machine's real Redis, a fresh key prefix per test, and every key under it deleted after.

Redis being down is a failure, never a silent skip (as for PostgreSQL in tests/conftest.py)."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from darkbloom.coordinator.cluster._aio import client as cluster_client

REDIS_URL = os.environ.get("DARKBLOOM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

MakeClient = Callable[[], Redis]


@pytest.fixture
def prefix() -> str:
    return f"dbtest-{secrets.token_hex(6)}:"


@pytest.fixture
async def make_client(prefix: str) -> AsyncIterator[MakeClient]:
    """Separate clients (separate connection pools) stand for separate coordinator processes."""
    clients: list[Redis] = []

    def make() -> Redis:
        client = cluster_client(REDIS_URL)
        clients.append(client)
        return client

    try:
        yield make
    finally:
        admin = Redis.from_url(REDIS_URL)
        try:
            keys = [key async for key in admin.scan_iter(match=f"{prefix}*", count=1000)]
            if keys:
                await admin.delete(*keys)
        finally:
            await admin.aclose()
            for client in clients:
                await client.aclose()


@pytest.fixture
def redis(make_client: MakeClient) -> Redis:
    return make_client()
