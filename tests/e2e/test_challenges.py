"""Challenge-response against real coordinators (intervals of a fraction of a second here):
the real provider keeps passing; wrong, replayed or weakened answers lead to untrusted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from darkbloom.crypto import KeyPair
from darkbloom.crypto.challenge import challenge_bytes
from darkbloom.crypto.signing import IdentityKey
from tests.e2e.fakes import Answer, FakeProvider, good_answer
from tests.e2e.harness import MODEL, Coordinator, Provider

FAST = {"challenge_interval_s": 0.3, "challenge_timeout_s": 1.0}


@pytest.fixture
def fast(tmp_path: Path) -> Iterator[Coordinator]:
    coordinator = Coordinator(tmp_path, **FAST).start()
    yield coordinator
    coordinator.stop()


def _listing(coordinator: Coordinator) -> list[dict[str, Any]]:
    return list(httpx.get(f"{coordinator.base_url}/v1/providers/attestation").json()["providers"])


def test_real_provider_keeps_passing(fast: Coordinator) -> None:
    provider = Provider(fast).start()
    try:
        time.sleep(2.5)  # several challenges
        [entry] = _listing(fast)
        assert entry["status"] != "untrusted" and entry["challenge_strikes"] == 0
        reply = fast.client().chat.completions.create(model=MODEL, max_tokens=2,
                                                      messages=[{"role": "user", "content": "hi"}])
        assert reply.usage is not None
        assert "failed a challenge" not in fast.log_text()
    finally:
        provider.stop()


def _good(identity: IdentityKey, keys: KeyPair, challenge: dict[str, Any],
          core_dumps_disabled: bool = True) -> dict[str, Any]:
    return good_answer(identity, keys, challenge, core_dumps_disabled=core_dumps_disabled)


async def _fake_provider(coordinator: Coordinator, answer: Answer, seconds: float) -> list[dict[str, Any]]:
    """Register with a valid attestation, then answer each challenge with ``answer``."""
    async with FakeProvider(coordinator, answer=answer) as fake:
        await asyncio.sleep(seconds)
    return fake.updates


def test_wrong_answers_make_a_provider_untrusted_after_three_strikes(fast: Coordinator) -> None:
    def wrong(identity: IdentityKey, keys: KeyPair, challenge: dict[str, Any]) -> dict[str, Any]:
        other = challenge_bytes("another nonce", challenge["timestamp"])
        return {**_good(identity, keys, challenge), "signature": identity.sign(other)}

    updates = asyncio.run(_fake_provider(fast, wrong, 3.0))
    assert updates and updates[0]["routable"] is False and "3 failed challenges" in updates[0]["reason"]


def test_replayed_answers_are_rejected(fast: Coordinator) -> None:
    first: dict[str, Any] = {}

    def replay(identity: IdentityKey, keys: KeyPair, challenge: dict[str, Any]) -> dict[str, Any]:
        first.setdefault("answer", _good(identity, keys, challenge))
        return dict(first["answer"])  # the first answer, again and again

    updates = asyncio.run(_fake_provider(fast, replay, 3.0))
    assert updates and updates[0]["routable"] is False
    assert "replay or stale" in fast.log_text()


def test_posture_regression_is_untrusted_at_once(fast: Coordinator) -> None:
    def weakened(identity: IdentityKey, keys: KeyPair, challenge: dict[str, Any]) -> dict[str, Any]:
        return _good(identity, keys, challenge, core_dumps_disabled=False)

    updates = asyncio.run(_fake_provider(fast, weakened, 1.5))
    assert updates and "posture regression" in updates[0]["reason"]
    assert "core dumps were re-enabled" in updates[0]["reason"]
