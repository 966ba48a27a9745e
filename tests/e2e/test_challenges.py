"""Challenge-response against real coordinators (intervals of a fraction of a second here):
the real provider keeps passing; wrong, replayed or weakened answers lead to untrusted."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from darkbloom.crypto import KeyPair
from darkbloom.crypto.challenge import challenge_bytes, status_bytes
from darkbloom.crypto.signing import IdentityKey, canonical_json
from darkbloom.inference.catalog import DEFAULT_MODEL
from darkbloom.protocol.frames import Hardware
from darkbloom.provider.attestation import build
from tests.e2e.harness import MODEL, Coordinator, Provider

FAST = {"challenge_interval_s": 0.3, "challenge_timeout_s": 1.0}


@pytest.fixture
def fast(tmp_path: Path) -> Coordinator:
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


Answer = Callable[[IdentityKey, KeyPair, dict[str, Any]], dict[str, Any]]


def _good(identity: IdentityKey, keys: KeyPair, challenge: dict[str, Any],
          core_dumps_disabled: bool = True) -> dict[str, Any]:
    nonce, stamp = challenge["nonce"], challenge["timestamp"]
    posture = {"platform": "linux", "core_dumps_disabled": core_dumps_disabled, "ptrace_scope": 1,
               "kernel_lockdown": "none", "secure_boot_enabled": False}
    return {"type": "attestation_response", "nonce": nonce, "public_key": keys.public_b64,
            "signature": identity.sign(challenge_bytes(nonce, stamp)),
            "status_signature": identity.sign(status_bytes(nonce, stamp, posture)), **posture}


async def _fake_provider(coordinator: Coordinator, answer: Answer, seconds: float) -> list[dict[str, Any]]:
    """Register with a valid attestation, then answer each challenge with ``answer``."""
    identity, keys = IdentityKey.generate(), KeyPair.generate()
    blob = build(identity, keys.public_b64, Hardware(chip_name="test"), "llama.cpp")
    inner = {**blob["attestation"], "coreDumpsDisabled": True, "ptraceScope": 1}
    raw = canonical_json(inner)
    blob = {"attestation": inner, "attestation_raw": base64.b64encode(raw).decode(),
            "signature": identity.sign(raw)}
    updates: list[dict[str, Any]] = []
    async with websockets.connect(coordinator.ws_url, additional_headers={
            "Authorization": f"Bearer {coordinator.provider_token}"}) as ws:
        await ws.send(json.dumps({
            "type": "register", "public_key": keys.public_b64, "backend": "llama.cpp",
            "models": [{"id": MODEL, "weight_hash": DEFAULT_MODEL.weight_hash}], "attestation": blob}))
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                frame = json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
            except TimeoutError:
                break
            if frame["type"] == "attestation_challenge":
                await ws.send(json.dumps(answer(identity, keys, frame)))
            elif frame["type"] == "trust_update":
                updates.append(frame)
    return updates


def test_wrong_answers_make_a_provider_untrusted_after_three_strikes(fast: Coordinator) -> None:
    def wrong(identity: IdentityKey, keys: KeyPair, challenge: dict[str, Any]) -> dict[str, Any]:
        return {**_good(identity, keys, challenge), "signature": identity.sign(b"something else")}

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
