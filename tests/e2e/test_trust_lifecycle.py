"""A provider's trust lifecycle with real coordinators, real `darkbloom serve` processes and fake
providers over real WebSockets (tests/e2e/fakes.py): nobody is routed before passing a challenge,
one live session per identity key, quarantine across reconnects and restarts, token revocation,
require_posture, and a provider's 4xx as a failed attempt."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from darkbloom.crypto import KeyPair
from darkbloom.crypto.signing import IdentityKey
from tests.e2e.fakes import FakeProvider, good_answer
from tests.e2e.harness import MODEL, Coordinator, Provider, _cli

HI = [{"role": "user", "content": "hi"}]
FAST = {"challenge_interval_s": 0.3, "challenge_timeout_s": 1.0}
CANARY = "fake-provider-message-3b9e"


def _listing(coordinator: Coordinator) -> list[dict[str, Any]]:
    return list(httpx.get(f"{coordinator.base_url}/v1/providers/attestation").json()["providers"])


async def _count(coordinator: Coordinator) -> int:
    return await asyncio.to_thread(coordinator.provider_count)


async def _until(check: Callable[[], object], what: str) -> None:
    """Poll a predicate (plain or async) for up to 20 s."""
    for _ in range(200):
        result = check()
        if await result if inspect.isawaitable(result) else result:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def _count_is(coordinator: Coordinator, n: int) -> bool:
    return await _count(coordinator) == n


def _chat(coordinator: Coordinator, api_key: str | None = None) -> httpx.Response:
    return httpx.post(f"{coordinator.base_url}/v1/chat/completions", timeout=60,
                      json={"model": MODEL, "messages": HI, "max_tokens": 2},
                      headers={"Authorization": f"Bearer {api_key or coordinator.api_key}"})


def _new_consumer(coordinator: Coordinator, account: str) -> str:
    """A funded key of an account that has never been served: routing has no provider it
    prefers for it (the prefix-cache affinity), so near-tied providers are picked at random."""
    key = _cli(["keys", "create", "--label", account, "--account", account], coordinator.env)
    _cli(["admin", "credit", "--account", account, "--amount", "1"], coordinator.env)
    return key


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    coordinator = Coordinator(tmp_path).start()
    yield coordinator
    coordinator.stop()


@pytest.fixture
def fast(tmp_path: Path) -> Iterator[Coordinator]:
    coordinator = Coordinator(tmp_path, **FAST).start()
    yield coordinator
    coordinator.stop()


def test_nobody_is_routed_before_passing_a_challenge(coordinator: Coordinator) -> None:
    async def go() -> None:
        async with FakeProvider(coordinator, answer=None) as silent:  # valid blob, never answers
            assert silent.registered["routable"] is True  # eligible, once it proves its key
            await _until(lambda: silent.challenges > 0, "the first challenge")
            assert await _count(coordinator) == 0
            [entry] = await asyncio.to_thread(_listing, coordinator)
            assert entry["routable"] is False and entry["status"] == "unroutable"
            response = await asyncio.to_thread(_chat, coordinator)
            assert response.status_code == 503 and silent.requests == 0
            async with FakeProvider(coordinator) as answering:  # the same, but it answers
                await _until(lambda: _count_is(coordinator, 1), "the answering provider")
                listing = await asyncio.to_thread(_listing, coordinator)
                routable = {e["provider_id"] for e in listing if e["routable"]}
                assert routable == {answering.registered["provider_id"]}

    asyncio.run(go())


def test_replayed_attestation_is_never_routed_and_leaves_the_genuine_provider_alone(
        tmp_path: Path) -> None:
    # A long answer deadline: a replayer must be unroutable before its challenge times out too.
    coordinator = Coordinator(tmp_path, challenge_interval_s=0.3, challenge_timeout_s=5).start()
    genuine = Provider(coordinator).start()
    try:
        [victim] = _listing(coordinator)
        blob = {"attestation_raw": victim["attestation_raw"],
                "signature": victim["attestation_signature"]}
        key = victim["encryption_public_key"]  # the blob binds the victim's X25519 key

        def with_own_key(identity: IdentityKey, keys: KeyPair, challenge: dict[str, Any]) -> dict[str, Any]:
            return {**good_answer(identity, keys, challenge), "public_key": key}

        async def go() -> None:
            async with FakeProvider(coordinator, blob=blob, public_key=key, answer=None) as silent:
                assert silent.registered["trust_level"] == "self_signed"
                await _until(lambda: silent.challenges > 0, "its challenge")
                for _ in range(3):
                    assert await _count(coordinator) == 1
                    reply = await asyncio.to_thread(_chat, coordinator)
                    assert reply.status_code == 200
                    assert reply.headers["x-provider-id"] == victim["provider_id"]
                assert silent.requests == 0
            # Answering with any other key fails: three strikes, untrusted, and no quarantine
            # of the victim's key (failures of an unproven session prove nothing about it).
            async with FakeProvider(coordinator, blob=blob, public_key=key,
                                    answer=with_own_key) as wrong:
                await _until(lambda: wrong.updates, "three strikes")
                assert "3 failed challenges" in wrong.updates[0]["reason"]

        asyncio.run(go())
        listing = {e["provider_id"]: e for e in _listing(coordinator)}
        assert listing[victim["provider_id"]]["routable"] is True
        assert "quarantined" not in coordinator.log_text()
        assert _chat(coordinator).headers["x-provider-id"] == victim["provider_id"]
        assert genuine.proc is not None and genuine.proc.poll() is None
    finally:
        genuine.stop()
        coordinator.stop()


def test_one_live_session_per_identity_key(coordinator: Coordinator) -> None:
    identity = IdentityKey.generate()

    async def go() -> None:
        async with FakeProvider(coordinator, identity=identity) as first:
            await _until(lambda: _count_is(coordinator, 1), "the first session")
            # A second session of the key that has not proven it leaves the first alone...
            async with FakeProvider(coordinator, identity=identity, answer=None) as unproven:
                await _until(lambda: unproven.challenges > 0, "its challenge")
                await asyncio.sleep(0.5)
                assert await _count(coordinator) == 1 and first.close_code is None
            # ...one that proves it replaces the first, which is closed with 4000; a request in
            # flight on the first fails over to the second, as on a disconnect.
            pending = asyncio.create_task(asyncio.to_thread(_chat, coordinator))
            await _until(lambda: first.requests == 1, "a request on the first session")
            async with FakeProvider(coordinator, identity=identity, on_request=_refuse) as second:
                assert await first.closed() == 4000
                reply = await pending
                assert reply.status_code in (502, 503) and second.requests == 1
                await _until(lambda: _count_is(coordinator, 1), "the second session")
                ids = {e["provider_id"] for e in await asyncio.to_thread(_listing, coordinator)}
                assert ids == {second.registered["provider_id"]}

    asyncio.run(go())


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_quarantine_survives_reconnects_and_restarts(tmp_path: Path, database: str,
                                                     request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("postgres_url") if database == "postgresql" else None
    coordinator = Coordinator(tmp_path, database_url=url, **FAST).start()
    identity = IdentityKey.generate()
    answers = 0

    def regresses(identity: IdentityKey, keys: KeyPair, challenge: dict[str, Any]) -> dict[str, Any]:
        nonlocal answers
        answers += 1  # passes once (proving the key), then reports core dumps re-enabled
        return good_answer(identity, keys, challenge, core_dumps_disabled=answers == 1)

    async def reconnect() -> dict[str, Any]:
        async with FakeProvider(coordinator, identity=identity) as again:
            await asyncio.sleep(1.0)  # several challenge intervals
            assert await _count(coordinator) == 0 and again.challenges == 0
            return again.registered

    try:
        async def first() -> None:
            async with FakeProvider(coordinator, identity=identity, answer=regresses) as fake:
                await _until(lambda: fake.updates, "the untrust")
                assert "posture regression" in fake.updates[0]["reason"]

        asyncio.run(first())
        registered = asyncio.run(reconnect())
        assert registered["routable"] is False and registered["reason"].startswith("quarantined until")
        assert "core dumps were re-enabled" in registered["reason"]
        assert "registered unroutable: quarantined" in coordinator.log_text()
        coordinator.stop()
        coordinator.start()  # same database: the quarantine is read back
        registered = asyncio.run(reconnect())
        assert registered["routable"] is False and registered["reason"].startswith("quarantined until")

        async def other_identity() -> None:  # the quarantine is the key's, not everyone's
            async with FakeProvider(coordinator):
                await _until(lambda: _count_is(coordinator, 1), "another identity")

        asyncio.run(other_identity())
    finally:
        coordinator.stop()


def test_revoking_a_token_closes_its_live_socket_and_the_provider_exits(tmp_path: Path) -> None:
    coordinator = Coordinator(tmp_path, provider_token_poll_s=0.5).start()
    provider = Provider(coordinator).start()
    try:
        listed = _cli(["admin", "provider-token", "list"], coordinator.env)
        token_id, prefix = listed.split()[:2]
        assert coordinator.provider_token.startswith(prefix)
        assert _cli(["admin", "provider-token", "revoke", prefix], coordinator.env) == f"revoked {token_id}"
        assert provider.proc is not None
        provider.proc.wait(30)  # the agent stops on 4001 instead of redialling
        assert provider.proc.returncode != 0
        assert "4001" in provider.log_text()
        coordinator.wait_providers(0)
        assert "provider token revoked (4001)" in coordinator.log_text()

        with pytest.raises(websockets.ConnectionClosed) as refused:  # the same token, again
            asyncio.run(FakeProvider(coordinator).__aenter__())
        assert refused.value.rcvd is not None and refused.value.rcvd.code == 4001
    finally:
        provider.stop()
        coordinator.stop()


def test_require_posture(tmp_path: Path) -> None:
    coordinator = Coordinator(tmp_path, require_posture=json.dumps(
        {"core_dumps_disabled": True, "kernel_lockdown": "integrity"}), **FAST).start()

    def lockdown(level: str) -> Any:
        return lambda identity, keys, challenge: good_answer(identity, keys, challenge,
                                                             kernel_lockdown=level)

    async def go() -> None:
        # The signed blob already says core dumps are on: unroutable and quarantined at once.
        identity = IdentityKey.generate()
        async with FakeProvider(coordinator, identity=identity, coreDumpsDisabled=False) as fake:
            assert fake.registered["routable"] is False
            assert fake.registered["reason"].startswith("require_posture: core_dumps_disabled")
        async with FakeProvider(coordinator, identity=identity) as again:  # fixed, but too late
            assert again.registered["reason"].startswith("quarantined until")
        # The blob meets the policy, the first answer does not.
        async with FakeProvider(coordinator, answer=lockdown("none"), kernelLockdown="integrity") as weak:
            await _until(lambda: weak.updates, "the untrust")
            assert weak.updates[0]["reason"].startswith("require_posture: kernel_lockdown")
            assert await _count(coordinator) == 0
        async with FakeProvider(coordinator, answer=lockdown("confidentiality"),
                                kernelLockdown="confidentiality"):
            await _until(lambda: _count_is(coordinator, 1), "a provider that meets the policy")

    try:
        asyncio.run(go())
    finally:
        coordinator.stop()


def _refuse(frame: dict[str, Any]) -> dict[str, Any]:
    return {"type": "inference_error", "request_id": frame["request_id"], "status_code": 400,
            "error": CANARY, "code": "invalid_request_error"}


def test_a_provider_4xx_is_a_failed_attempt(coordinator: Coordinator) -> None:
    provider = Provider(coordinator).start()
    try:
        async def go() -> None:
            async with FakeProvider(coordinator, on_request=_refuse) as refuser:
                await _until(lambda: _count_is(coordinator, 2), "both providers")
                for i in range(30):  # ties are broken at random: until the refuser was tried
                    # An account of its own each time: one already served would be routed to
                    # the provider that served it, and the refuser would never be tried.
                    key = await asyncio.to_thread(_new_consumer, coordinator, f"fresh-{i}")
                    reply = await asyncio.to_thread(_chat, coordinator, key)
                    assert reply.status_code == 200
                    assert reply.headers["x-provider-id"] != refuser.registered["provider_id"]
                    if refuser.requests:
                        break
                assert refuser.requests >= 1
                provider.stop()
                await _until(lambda: _count_is(coordinator, 1), "the refuser alone")
                reply = await asyncio.to_thread(_chat, coordinator)
                assert reply.status_code in (502, 503), reply.text
                assert CANARY not in reply.text
                assert reply.json()["error"]["type"] == "provider_error"

        asyncio.run(go())
        assert CANARY not in coordinator.log_text()
    finally:
        provider.stop()
