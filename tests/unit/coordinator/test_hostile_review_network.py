"""Hostile review of issue 10's rate limits (api/ratelimit.py), on the in-process app of
test_ratelimit.py with its fake clock: a client that rotates source addresses."""

from __future__ import annotations

from collections.abc import Iterator

import limits.aio.storage.memory
import pytest

from darkbloom.coordinator.api import ratelimit
from tests.unit.coordinator.test_ratelimit import Clock, _app, _client


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    fake = Clock()
    monkeypatch.setattr(limits.aio.storage.memory, "time", fake)
    monkeypatch.setattr(ratelimit, "time", fake)
    yield fake


async def test_signup_from_one_ipv6_subnet_shares_one_allowance(clock: Clock) -> None:
    """Anyone with IPv6 holds a /64 (2^64 addresses): keyed by the full address, the per-IP
    sign-up limit is one new address per attempt away. A /64 is one client, as a v4 address is."""
    app = _app()
    statuses = []
    for host in range(1, 6):
        async with _client(app, f"2001:db8:1:2::{host:x}") as client:
            statuses.append((await client.post("/signup")).status_code)
    assert statuses == [200, 200, 200, 429, 429]
    async with _client(app, "2001:db8:1:3::1") as other:  # the next /64: someone else
        assert (await other.post("/signup")).status_code == 200


async def test_an_ipv4_client_on_a_dual_stack_socket_is_one_client(clock: Clock) -> None:
    """A dual-stack listener reports an IPv4 peer as ::ffff:a.b.c.d: the same client as a.b.c.d."""
    app = _app()
    async with _client(app, "198.51.100.9") as v4, _client(app, "::ffff:198.51.100.9") as mapped:
        for _ in range(2):
            assert (await v4.post("/signup")).status_code == 200
        assert (await mapped.post("/signup")).status_code == 200
        assert (await mapped.post("/signup")).status_code == 429


async def test_a_peer_without_an_address_is_still_limited(clock: Clock) -> None:
    app = _app()
    async with _client(app, "not-an-address") as client:
        assert [(await client.post("/signup")).status_code for _ in range(4)] == [200, 200, 200, 429]


async def test_password_guessing_from_one_ipv6_subnet_is_one_client(
        clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    """Online guessing is limited per (client, email); with the client the full IPv6 address, an
    attacker holding a /64 guesses one account's password without limit, one address a guess."""
    from darkbloom.coordinator.api import accounts

    async def nobody(sessions: object, email: str) -> None:
        return None

    monkeypatch.setattr(accounts.store, "find_login", nobody)
    app = _app()
    app.state.sessions = None
    app.include_router(accounts.router)
    statuses = []
    for host in range(1, 6):
        async with _client(app, f"2001:db8:1:2::{host:x}") as client:
            statuses.append((await client.post("/v1/auth/login", json={
                "email": "victim@example.com", "password": f"guess number {host}"})).status_code)
    assert 429 in statuses, statuses
