"""Hostile review of issue 10's network layer against a real coordinator process: a provider that
replays someone else's public attestation (a FakeProvider over a real WebSocket, for the frames
no honest provider sends), and a consumer looking for a route the rate limits do not cover.
Tests marked ``xfail(strict=True)`` pin problems in files this review did not own; they turn
into XPASS failures when fixed, so the marker goes with the fix."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.fakes import FakeProvider
from tests.e2e.harness import MODEL, Coordinator, _cli

ADMIN_KEY = "adm-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    started = Coordinator(tmp_path_factory.mktemp("hostile-network"), admin_key=ADMIN_KEY).start()
    try:
        yield started
    finally:
        started.stop()


async def _listing(coordinator: Coordinator) -> dict[str, dict[str, Any]]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{coordinator.base_url}/v1/providers/attestation", timeout=10)
    return {entry["provider_id"]: entry for entry in response.json()["providers"]}


async def _until(check: Any, what: str) -> Any:
    for _ in range(300):
        if value := await check():
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_replayed_attestation_cannot_spend_the_victims_challenge_record(
        coordinator: Coordinator) -> None:
    """The victim's attestation is public (GET /v1/providers/attestation). A session registered
    with it is keyed by the victim's identity but can never answer a challenge; every bogus
    attestation_response it sends is a strike. Before the fix each strike went into the
    victim's reputation record (challenge pass rate, persisted), with no bound on how many."""

    async def go() -> None:
        async with FakeProvider(coordinator) as victim:
            victim_id = victim.registered["provider_id"]

            async def victim_routable() -> bool:
                entry = (await _listing(coordinator)).get(victim_id)
                return bool(entry and entry["routable"])

            await _until(victim_routable, "the victim's first pass")
            async with FakeProvider(coordinator, blob=victim.blob, public_key=victim.public_key,
                                    answer=None) as replay:
                replay_id = replay.registered["provider_id"]
                assert replay.registered["trust_level"] == "self_signed"
                for _ in range(12):
                    await replay.send({"type": "attestation_response", "nonce": uuid.uuid4().hex,
                                       "signature": "AAAA", "public_key": victim.public_key})

                async def struck() -> dict[str, dict[str, Any]] | None:
                    listing = await _listing(coordinator)
                    entry = listing.get(replay_id)
                    return listing if entry and entry["challenge_strikes"] >= 12 else None

                listing = await _until(struck, "the replaying session's strikes")
                reputation = listing[victim_id]["reputation"]
                assert reputation["challenges_failed"] == 0, reputation
                assert reputation["challenges_passed"] >= 1
                assert listing[victim_id]["routable"] is True

    asyncio.run(go())


def test_count_tokens_spends_the_inference_allowance(coordinator: Coordinator) -> None:
    """count_tokens parses and tokenizes a Messages body (off the loop, in the same tokenizer pool
    inference uses) for any API key, as often as it is called: the inference tier (10 at once,
    then 1/s) is the only thing that bounds an account's tokenizer use, and it is not applied."""
    account = "acct-" + uuid.uuid4().hex[:12]
    key = _cli(["keys", "create", "--account", account], coordinator.env)
    body = {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}
    statuses = []
    with httpx.Client(timeout=30) as client:
        for _ in range(15):
            statuses.append(client.post(f"{coordinator.base_url}/v1/messages/count_tokens",
                                        json=body, headers={"x-api-key": key}).status_code)
    assert 429 in statuses, statuses


def test_stats_and_leaderboard_answer_odd_parameters_with_4xx(coordinator: Coordinator) -> None:
    """Public, unauthenticated routes: nothing a caller puts in the query string makes a 5xx, and
    nothing in the answer names an account."""
    with httpx.Client(base_url=coordinator.base_url, timeout=30) as client:
        for query in ("limit=0", "limit=201", "limit=-1", "limit=1e3", "limit=%EF%BC%95",
                      "limit=" + "9" * 5000, "window=forever", "window=24h&window=7d",
                      "metric=account_id", "metric=" + "x" * 100, "window=%00", "limit=%20"):
            status = client.get(f"/v1/leaderboard?{query}").status_code
            assert 400 <= status < 500, (query, status)
        for query in ("window=lifetime", "window=1D", "window=%207d%20"):
            assert client.get(f"/v1/network/totals?{query}").status_code == 200, query
        assert client.get("/v1/leaderboard?limit=200&metric=jobs").status_code == 200
        stats = client.get("/v1/stats?providers=all&limit=99999")
        assert stats.status_code == 200
        for text in (stats.text, client.get("/v1/leaderboard").text):
            assert "operator" not in text and "local" not in text  # the harness's account ids



def test_metrics_labels_stay_bounded_whatever_the_caller_sends(coordinator: Coordinator) -> None:
    """Paths, methods and query strings are the caller's: none becomes a label value. /metrics
    is off by default, and the admin route wants the admin key (an API key is not enough)."""
    marker = uuid.uuid4().hex
    with httpx.Client(base_url=coordinator.base_url, timeout=30) as client:
        for i in range(20):
            client.get(f"/v1/{marker}/{i}?x={marker}")
            client.request("PROPFIND", f"/v1/models/{marker}-{i}")
            client.get(f"/v1/models/{marker}-{i}")
        assert client.get("/metrics").status_code == 404
        assert client.get("/v1/admin/metrics").status_code == 401
        assert client.get("/v1/admin/metrics", headers={
            "Authorization": f"Bearer {coordinator.api_key}"}).status_code == 403
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        assert client.get("/v1/admin/metrics?format=xml", headers=admin).status_code == 400
        text = client.get("/v1/admin/metrics?format=prom", headers=admin).text
        snapshot = client.get("/v1/admin/metrics", headers=admin).text
    for exposition in (text, snapshot):
        assert marker not in exposition
        assert "PROPFIND" not in exposition


def test_a_provider_cannot_write_text_into_the_coordinators_log(coordinator: Coordinator) -> None:
    """A provider holds the prompt in plaintext; the coordinator must never log prompt text. The
    ``code`` of an inference_error is the provider's own string (no length or alphabet bound) and
    commit.py logs it on every failed attempt, so a provider can copy prompts, or forged log
    lines, into the operator's logs."""
    marker = "PROMPT-" + uuid.uuid4().hex

    def refuse(frame: dict[str, Any]) -> dict[str, Any]:
        return {"type": "inference_error", "request_id": frame["request_id"], "error": "no",
                "status_code": 500, "code": f"{marker}\nINFO forged line"}

    async def go() -> None:
        async with FakeProvider(coordinator, on_request=refuse) as fake:
            fake_id = fake.registered["provider_id"]

            async def routable() -> bool:
                entry = (await _listing(coordinator)).get(fake_id)
                return bool(entry and entry["routable"])

            await _until(routable, "the fake's first pass")
            async with httpx.AsyncClient(timeout=60) as client:
                await client.post(f"{coordinator.base_url}/v1/chat/completions", json={
                    "model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]},
                    headers={"Authorization": f"Bearer {coordinator.api_key}"})
            assert fake.requests >= 1

    asyncio.run(go())
    assert marker not in coordinator.log_text()
