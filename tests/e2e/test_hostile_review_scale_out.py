"""Hostile review of scale-out (issue 10) with real coordinator processes on one PostgreSQL and one
Redis: a coordinator SIGKILLed mid-stream, and a careless operator who starts a second process on
a live coordinator's state dir. Providers are SIMULATED (tests/e2e/sim_provider.py)."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from darkbloom.client.blind import MEDIA_TYPE, open_response, seal_to_providers
from tests.e2e.harness import MODEL, Coordinator, Provider
from tests.e2e.test_scale_out import REDIS, Cluster

pytestmark = pytest.mark.timeout(600)


def _usage(c: Coordinator) -> list[dict[str, Any]]:
    response = httpx.get(f"{c.base_url}/v1/payments/usage", timeout=10,
                         headers={"Authorization": f"Bearer {c.api_key}"})
    assert response.status_code == 200, response.text
    return list(response.json()["usage"])


def _balance(c: Coordinator) -> int:
    response = httpx.get(f"{c.base_url}/v1/billing/wallet/balance", timeout=10,
                         headers={"Authorization": f"Bearer {c.api_key}"})
    assert response.status_code == 200, response.text
    return int(response.json()["credit_balance_micro_usd"])


def _stream(c: Coordinator, max_tokens: int) -> contextlib.AbstractContextManager[httpx.Response]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell a long story."}],
            "max_tokens": max_tokens, "stream": True}
    return httpx.stream("POST", f"{c.base_url}/v1/chat/completions", json=body, timeout=120,
                        headers={"Authorization": f"Bearer {c.api_key}"})


def _pieces(lines: list[str]) -> int:
    count = 0
    for line in lines:
        if line.startswith("data: {"):
            event = json.loads(line[6:])
            count += bool(event.get("choices") and event["choices"][0]["delta"].get("content"))
    return count


def test_killing_the_providers_coordinator_mid_stream_ends_the_stream_and_refunds_it(
        tmp_path: Path) -> None:
    """A consumer of B streaming from a provider of A: A is SIGKILLed mid-answer. B ends the
    stream with a terminal error in the caller's dialect (no hang), refunds the hold in full as
    for a provider failing mid-stream on one coordinator (tests/e2e/test_money.py), and the
    ledger stays consistent."""
    pair = Cluster(tmp_path, 2)
    try:
        a, b = pair.coordinators
        pair.providers.append(Provider(a, "sim", simulated=True, sim_tokens=200, sim_token_s=0.05,
                                       fallbacks=(b,)).start())
        b.wait_providers(1)
        before, balance = len(_usage(b)), _balance(b)
        lines: list[str] = []
        with _stream(b, 400) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                lines.append(line)
                if _pieces(lines) == 5 and a.proc is not None and a.proc.poll() is None:
                    a.proc.kill()
                    a.proc.wait()
        assert 5 <= _pieces(lines) < 200
        last = [line for line in lines if line][-1]
        assert json.loads(last.removeprefix("data: "))["error"]["type"] == "provider_error"
        assert "data: [DONE]" not in lines
        deadline = time.monotonic() + 10
        while _balance(b) != balance and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _balance(b) == balance
        assert len(_usage(b)) == before
        pair.audit()
    finally:
        pair.close()


def test_a_consumer_blind_client_of_b_seals_to_a_provider_of_a(tmp_path: Path) -> None:
    """B listed A's providers without their attestation, so client.blind found none to seal to:
    consumer-blind mode did not scale out. Now B lists the blob (checked by B too), the client
    checks it itself, and B relays the ciphertext A's provider answers with."""
    pair = Cluster(tmp_path, 2)
    try:
        a, b = pair.coordinators
        pair.providers.append(Provider(a).start())
        b.wait_providers(1)
        listing = httpx.get(f"{b.base_url}/v1/providers/attestation", timeout=10).json()["providers"]
        body = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "Hi."}]}
        sealed, channels = seal_to_providers(body, listing, insecure_accept_self_signed=True)
        response = httpx.post(f"{b.base_url}/v1/chat/completions", content=sealed, timeout=60,
                              headers={"Authorization": f"Bearer {b.api_key}",
                                       "Content-Type": MEDIA_TYPE})
        assert response.status_code == 200, response.text
        payloads = open_response(channels, response.headers["x-provider-id"], response.text,
                                 stream=False)
        assert json.loads(payloads[0].removeprefix("data: "))["choices"][0]["message"]["content"]
        pair.audit()
    finally:
        pair.close()


def test_a_second_process_on_a_live_coordinators_state_dir_does_not_refund_its_requests(
        tmp_path: Path) -> None:
    pair = Cluster(tmp_path, 1)
    twin: Coordinator | None = None
    try:
        [live] = pair.coordinators
        pair.providers.append(Provider(live, "sim", simulated=True, sim_tokens=120,
                                       sim_token_s=0.15).start())
        before = len(_usage(live))
        with _stream(live, 200) as response:
            lines = response.iter_lines()
            assert any(next(lines).startswith("data: {") for _ in range(6))
            (tmp_path / "twin").mkdir()
            twin = Coordinator(tmp_path / "twin", database_url=live.env["DARKBLOOM_DATABASE_URL"],
                               redis_url=REDIS, redis_prefix=live.env["DARKBLOOM_REDIS_PREFIX"],
                               state_dir=live.env["DARKBLOOM_STATE_DIR"])
            twin.api_key, twin.provider_token = live.api_key, live.provider_token
            with contextlib.suppress(AssertionError, TimeoutError):  # refusing to start is fine
                twin.start()
            rest = list(lines)
        assert "data: [DONE]" in rest
        deadline = time.monotonic() + 30
        while len(_usage(live)) == before and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(_usage(live)) == before + 1  # the answer was settled, not refunded as an orphan
        pair.audit()
    finally:
        if twin is not None:
            twin.stop()
        pair.close()
