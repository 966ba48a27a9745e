"""Several coordinators on one PostgreSQL and one Redis (issue 10, docs/scale-out.md), with real
processes on loopback: a provider connected to coordinator A serves a consumer who called B, sealed
end to end; cancels cross too; slots are shared; killing a coordinator loses no committed money and
its providers come back on another. The load test's providers are SIMULATED (sim_provider.py)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import drop_postgres_database, fresh_postgres_database
from tests.e2e.harness import MODEL, OPERATOR, Coordinator, Provider, _cli

HI = [{"role": "user", "content": "Say hi."}]
REDIS = "redis://127.0.0.1:6379/0"
pytestmark = pytest.mark.timeout(600)


class Cluster:
    """Coordinators sharing one fresh PostgreSQL database and one Redis namespace."""

    def __init__(self, workdir: Path, n: int, **settings: object) -> None:
        self.database, url = fresh_postgres_database()
        prefix = f"test-{uuid.uuid4().hex[:10]}"
        self.coordinators: list[Coordinator] = []
        for i in range(n):
            (workdir / f"c{i}").mkdir(parents=True, exist_ok=True)
            c = Coordinator(workdir / f"c{i}", database_url=url, redis_url=REDIS,
                            redis_prefix=prefix, **settings)
            if self.coordinators:  # one network: the first one's key and provider token
                c.api_key = self.coordinators[0].api_key
                c.provider_token = self.coordinators[0].provider_token
            self.coordinators.append(c.start())
        self.providers: list[Provider] = []

    def close(self) -> None:
        for p in self.providers:
            p.stop()
        for c in self.coordinators:
            c.stop()
        drop_postgres_database(self.database)

    def audit(self) -> None:
        self.coordinators[0].audit()


def _listing(c: Coordinator) -> list[dict[str, object]]:
    return list(httpx.get(f"{c.base_url}/v1/providers/attestation", timeout=10).json()["providers"])


def _crossed(c: Coordinator) -> dict[str, float]:
    """darkbloom's cluster_requests_total on one coordinator, by direction."""
    text = httpx.get(f"{c.base_url}/metrics", timeout=10).text
    return {family_sample.labels["direction"]: family_sample.value
            for family in text_string_to_metric_families(text) if family.name == "cluster_requests"
            for family_sample in family.samples if family_sample.name == "cluster_requests_total"}


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path, 2, metrics_public="true")
    yield cluster
    cluster.close()


def test_a_consumer_of_b_is_served_by_a_provider_of_a(pair: Cluster) -> None:
    a, b = pair.coordinators
    provider = Provider(a).start()
    pair.providers.append(provider)
    b.wait_providers(1)  # B routes to it too
    [seen] = _listing(b)
    assert seen["provider_id"] == _listing(a)[0]["provider_id"]

    client = b.client()
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=HI, max_tokens=8)  # type: ignore[arg-type]
    assert raw.http_response.status_code == 200
    assert raw.http_response.headers["x-provider-id"] == seen["provider_id"]
    assert raw.parse().choices[0].message.content
    chunks = list(client.chat.completions.create(model=MODEL, messages=HI,  # type: ignore[arg-type]
                                                 max_tokens=8, stream=True))
    assert any(c.choices and c.choices[0].delta.content for c in chunks)
    # A relayed ciphertext only: it never logged a request of its own.
    assert "attempt 1 on provider" not in a.log_text()
    # Both crossed the bus, and the operators can see that they did.
    assert _crossed(b) == {"sent": 2.0, "carried": 0.0}
    assert _crossed(a) == {"sent": 0.0, "carried": 2.0}
    # B paid the provider's operator: the account its identity proved itself with (from the
    # database, not from what Redis says).
    operator_key = _cli(["keys", "create", "--account", OPERATOR], b.env)
    earned = httpx.get(f"{b.base_url}/v1/provider/account-earnings", timeout=10,
                       headers={"Authorization": f"Bearer {operator_key}"}).json()
    assert earned["count"] == 2, earned
    pair.audit()


def test_a_cancel_on_b_frees_the_slot_on_a(pair: Cluster) -> None:
    a, b = pair.coordinators
    pair.providers.append(Provider(a).start())  # one llama.cpp slot
    b.wait_providers(1)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Write a very long essay."}],
            "max_tokens": 3000, "stream": True}
    with httpx.stream("POST", f"{b.base_url}/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {b.api_key}"}) as response:
        lines = response.iter_lines()
        assert any(next(lines).startswith("data: ") for _ in range(6))
    # The consumer hung up on B: the cancel crossed to A, the provider stopped and its one slot
    # is free for the next request (through A this time).
    reply = a.client().chat.completions.create(model=MODEL, messages=HI, max_tokens=4)  # type: ignore[arg-type]
    assert reply.choices[0].message.content is not None
    pair.audit()


def test_killing_a_coordinator_loses_no_money_and_its_provider_moves(pair: Cluster) -> None:
    a, b = pair.coordinators
    provider = Provider(a, fallbacks=(b,)).start()
    pair.providers.append(provider)
    b.wait_providers(1)
    [old] = _listing(b)
    assert b.client().chat.completions.create(model=MODEL, messages=HI, max_tokens=4)  # type: ignore[arg-type]
    assert a.proc is not None
    a.proc.kill()
    a.proc.wait()
    killed = time.monotonic()
    # B forgets A's session when A's presence lapses; the provider reconnects to B meanwhile.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        listing = _listing(b)  # the new session only: A's lapsed with A
        if [p["provider_id"] for p in listing if p["status"] in ("online", "serving")] \
                and old["provider_id"] not in [p["provider_id"] for p in listing]:
            break
        time.sleep(0.2)
    print(f"\nprovider routable on B {time.monotonic() - killed:.2f} s after A was killed")
    reply = b.client().chat.completions.create(model=MODEL, messages=HI, max_tokens=4)  # type: ignore[arg-type]
    assert reply.choices[0].message.content is not None
    pair.audit()


def test_200_concurrent_streams_over_4_simulated_providers_on_2_coordinators(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 2, queue_max_per_model=200)
    try:
        for i, c in enumerate(cluster.coordinators):
            for j in range(2):
                cluster.providers.append(Provider(c, f"sim{i}{j}", slots=8, simulated=True,
                                                  sim_tokens=24, sim_token_s=0.02).start(wait=False))
        for c in cluster.coordinators:
            c.wait_providers(4, timeout=60)

        async def one(c: Coordinator) -> str:
            client = openai.AsyncOpenAI(base_url=f"{c.base_url}/v1", api_key=c.api_key,
                                        max_retries=0, timeout=120)
            try:
                stream = await client.chat.completions.create(
                    model=MODEL, messages=HI, max_tokens=24, stream=True)  # type: ignore[arg-type]
                pieces = 0
                async for chunk in stream:
                    pieces += bool(chunk.choices and chunk.choices[0].delta.content)
                return "ok" if pieces == 24 else f"short:{pieces}"
            except openai.APIError as exc:
                return f"{type(exc).__name__}:{getattr(exc, 'status_code', '')}"
            finally:
                await client.close()

        async def go() -> list[str]:
            return list(await asyncio.gather(*(one(cluster.coordinators[i % 2]) for i in range(200))))

        outcomes = asyncio.run(go())
        assert outcomes.count("ok") == 200, sorted(set(outcomes))
        cluster.audit()
    finally:
        cluster.close()
