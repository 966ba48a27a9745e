"""Routing with real processes (protocol.md §7): /v1/models reports what is really online, health
from heartbeats keeps requests off a machine that cannot take them, a provider below the minimum
version is refused, and reputation follows a provider identity across reconnects and restarts on
both databases."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from darkbloom.crypto import KeyPair
from darkbloom.inference.catalog import DEFAULT_MODEL
from darkbloom.protocol.frames import CLOSE_VERSION_TOO_OLD
from tests.e2e.fakes import FakeProvider
from tests.e2e.harness import MODEL, Coordinator, Provider

HI = [{"role": "user", "content": "Say hi."}]


def _listing(coordinator: Coordinator) -> list[dict[str, Any]]:
    return list(httpx.get(f"{coordinator.base_url}/v1/providers/attestation").json()["providers"])


def _until(check: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_models_report_real_providers_trust_and_prices(stack: Coordinator) -> None:
    [model] = [m for m in httpx.get(f"{stack.base_url}/v1/models").json()["data"] if m["id"] == MODEL]
    meta = model["metadata"]
    assert meta["provider_count"] == 1
    assert meta["attested_providers"] == 1  # the provider proved its identity key
    assert meta["trust_level"] == "self_signed"
    assert (meta["input_price"], meta["output_price"]) == (DEFAULT_MODEL.input_price,
                                                           DEFAULT_MODEL.output_price)
    retrieved = httpx.get(f"{stack.base_url}/v1/models/{MODEL}").json()["metadata"]
    assert retrieved["provider_count"] == 1 and retrieved["trust_level"] == "self_signed"


def test_a_critically_hot_provider_gets_no_requests(tmp_path: Path) -> None:
    """A fake provider that would never answer, but reports a critical thermal state: every
    request goes to the real provider, none to it (without the gate, about half would wait
    out the first-response timer there)."""
    coordinator = Coordinator(tmp_path, first_response_timeout_s=30).start()
    provider = Provider(coordinator).start()

    async def go() -> int:
        async with FakeProvider(coordinator) as hot:
            await hot.send({"type": "heartbeat", "system_metrics": {"thermal_state": "critical"}})
            await asyncio.to_thread(coordinator.wait_providers, 2)
            client = coordinator.async_client()
            replies = await asyncio.gather(*(client.chat.completions.create(
                model=MODEL, messages=HI, max_tokens=2) for _ in range(4)))  # type: ignore[arg-type]
            assert all(r.choices[0].message.content is not None for r in replies)
            await hot.send({"type": "heartbeat", "backend_capacity": {
                "slots": [{"model": MODEL, "state": "crashed"}]}})
            await client.chat.completions.create(model=MODEL, messages=HI,  # type: ignore[arg-type]
                                                 max_tokens=2)
            return hot.requests

    try:
        assert asyncio.run(go()) == 0
    finally:
        provider.stop()
        coordinator.stop()


def test_a_provider_below_the_minimum_version_is_refused_with_4003(tmp_path: Path) -> None:
    coordinator = Coordinator(tmp_path, min_provider_version="2.0.0").start()

    async def register(version: str) -> int | None:
        async with websockets.connect(coordinator.ws_url, additional_headers={
                "Authorization": f"Bearer {coordinator.provider_token}"}) as ws:
            await ws.send(json.dumps({
                "type": "register", "public_key": KeyPair.generate().public_b64, "version": version,
                "models": [{"id": MODEL, "weight_hash": DEFAULT_MODEL.weight_hash}]}))
            try:
                reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
                return None if reply["type"] == "registered" else -1
            except websockets.ConnectionClosed:
                return ws.close_code

    try:
        assert asyncio.run(register("1.9.9")) == CLOSE_VERSION_TOO_OLD
        assert asyncio.run(register("not-a-version")) == CLOSE_VERSION_TOO_OLD
        assert asyncio.run(register("2.0.0")) is None
    finally:
        coordinator.stop()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_reputation_follows_the_identity_across_reconnects_and_restarts(
        tmp_path: Path, database: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("postgres_url") if database == "postgresql" else None
    coordinator = Coordinator(tmp_path, database_url=url, reputation_flush_s=0.2).start()
    provider = Provider(coordinator).start()
    client = coordinator.client()

    def reputation() -> dict[str, Any]:
        [entry] = _listing(coordinator)
        return dict(entry["reputation"])

    try:
        for _ in range(2):
            chunks = list(client.chat.completions.create(model=MODEL, messages=HI,  # type: ignore[arg-type]
                                                         max_tokens=16, stream=True))
            assert chunks
        first = reputation()
        assert first["successful_jobs"] == 2 and first["failed_jobs"] == 0
        assert first["avg_response_time_ms"] is not None
        assert first["challenges_passed"] >= 1
        key = _listing(coordinator)[0]["identity_public_key"]

        provider.kill()  # a new process, the same identity key (its config directory)
        provider = Provider(coordinator).start()
        assert _listing(coordinator)[0]["identity_public_key"] == key
        assert reputation()["successful_jobs"] == 2

        time.sleep(0.5)  # one flush interval, then a clean restart writes the rest
        coordinator.stop()
        coordinator.start()
        coordinator.wait_providers(1)
        after = _until(lambda: (r := reputation())["challenges_passed"] > first["challenges_passed"]
                       and r, "a challenge after the restart")
        assert after["successful_jobs"] == 2
        assert after["score"] > 0.5  # every job succeeded and every challenge passed
    finally:
        provider.stop()
        coordinator.stop()
