"""A provider given several coordinators fails over among them (docs/provider-failover.md).

Two real coordinator processes share one PostgreSQL database, so both accept the same provider
token and API key; one real `darkbloom serve` (llama.cpp) gets both URLs as repeated
`--coordinator` options. No Redis: each coordinator routes only to providers connected to it,
which is exactly what shows where the provider is. Run with -s to see the measured failover time
(printed, never asserted: tests do not assert wall-clock numbers).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import drop_postgres_database, fresh_postgres_database
from tests.e2e.harness import MODEL, Coordinator, Provider

pytestmark = pytest.mark.e2e

WAIT_S = 60  # generous: a loaded CI machine, a model load; the printed time is the real figure


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Coordinator, Coordinator]]:
    name, url = fresh_postgres_database()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = Coordinator(tmp_path / "a", database_url=url)
    b = Coordinator(tmp_path / "b", database_url=url)
    try:
        a.start()  # migrates, mints the key and the token in the shared database
        b.api_key, b.provider_token = a.api_key, a.provider_token
        b.start()
        yield a, b
    finally:
        b.stop()
        a.stop()
        drop_postgres_database(name)


def listed(coordinator: Coordinator) -> list[dict[str, Any]]:
    try:
        response = httpx.get(f"{coordinator.base_url}/v1/providers/attestation", timeout=2)
    except httpx.HTTPError:
        return []
    providers: list[dict[str, Any]] = response.json()["providers"]
    return providers


def wait_routable(coordinator: Coordinator, since: float) -> float:
    """Seconds from `since` until the coordinator lists one routable provider."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if any(p["routable"] for p in listed(coordinator)):
            return time.monotonic() - since
        time.sleep(0.05)
    raise TimeoutError(f"no routable provider on {coordinator.base_url}; "
                       f"see {coordinator.workdir}/*.log")


def chat_status(coordinator: Coordinator) -> int:
    raw = coordinator.client().chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=4)
    raw.parse()
    return raw.status_code


def test_provider_fails_over_when_its_coordinator_dies(
        pair: tuple[Coordinator, Coordinator]) -> None:
    a, b = pair
    provider = Provider(a, fallbacks=(b,))
    try:
        provider.start()  # registered on A, the first URL
        wait_routable(a, time.monotonic())
        assert chat_status(a) == 200
        assert listed(b) == []  # one session at a time: B does not count this provider's slots

        assert a.proc is not None
        a.proc.kill()  # SIGKILL: no goodbye, the socket just closes
        killed = time.monotonic()
        a.proc.wait()
        elapsed = wait_routable(b, killed)
        print(f"\nprovider routable on coordinator B {elapsed:.2f} s after A was SIGKILLed")
        assert chat_status(b) == 200
        assert len(listed(b)) == 1

        # Round robin wraps around: A is back (same port, same database), B is stopped cleanly.
        a.start()
        assert listed(a) == []  # the provider stays on B while B is up
        stopped = time.monotonic()
        b.stop()
        elapsed = wait_routable(a, stopped)
        print(f"provider routable on coordinator A {elapsed:.2f} s after B was stopped (SIGTERM)")
        assert chat_status(a) == 200

        assert provider.proc is not None and provider.proc.poll() is None
        text = provider.log_text()
        assert f"connected to coordinator {b.ws_url}" in text
        assert text.count(f"connected to coordinator {a.ws_url}") == 2
        assert a.provider_token not in text
        assert "Say hi" not in text
    finally:
        provider.stop()
