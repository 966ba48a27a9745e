"""Hostile review of issue 10: provider_reputation rows when more than one coordinator holds a
record for the same provider identity (the scale-out of issue 10: a provider fails over from one
coordinator to another, or two coordinators restart at different times)."""

from __future__ import annotations

import time

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.coordinator.routing.registry import ProviderConn
from darkbloom.coordinator.routing.reputation import Reputations
from darkbloom.coordinator.store.reputation import ReputationStore
from darkbloom.crypto import KeyPair
from darkbloom.protocol.frames import Hardware


def _session(pid: str) -> ProviderConn:
    keys = KeyPair.generate()
    conn = ProviderConn(id=pid, account_id=None, models=frozenset({"m"}), public_key=keys.public,
                        public_key_b64=keys.public_b64, max_concurrency=1, hardware=Hardware(),
                        backend="test", version="0")
    conn.identity_key, conn.last_pass = "IDKEY", time.monotonic()
    return conn


async def test_two_coordinators_add_to_one_record(sessions: async_sessionmaker[AsyncSession]) -> None:
    """Coordinator A and coordinator B each load the identity's row (B while the provider's
    session on A is still live, or before A's last flush), each count the jobs they saw, and
    each flush its absolute counters: the row ends with B's count alone. Counters should be
    added as deltas (jobs_failed = jobs_failed + :delta), so no coordinator's events are lost."""
    store = ReputationStore(sessions)
    a, b = Reputations(store.load, store.save), Reputations(store.load, store.save)
    on_a, on_b = _session("on-a"), _session("on-b")
    await a.attach(on_a)
    await b.attach(on_b)
    for _ in range(3):
        a.failed(on_a)
    b.succeeded(on_b, 500.0)
    await a.flush()
    await b.flush()
    stored = await store.load("IDKEY")
    assert stored is not None
    assert (stored.jobs_failed, stored.jobs_succeeded) == (3, 1)
