"""Load and fault tests (issue 10), bounded and on loopback. Providers here are SIMULATED
(tests/e2e/sim_provider.py: the real provider agent replaying a recorded token stream) so that
the load is on the coordinator and the wire, not on two CPU cores running a model.

What they show: a provider SIGKILLed under load fails over or ends its requests cleanly while
the other requests are unaffected, and the books still balance; a restarted coordinator has its
providers back and routable in seconds."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.harness import MODEL, Coordinator, Provider

HI = [{"role": "user", "content": "Say hi."}]
pytestmark = pytest.mark.timeout(600)


def _balance(coordinator: Coordinator) -> int:
    answer = httpx.get(f"{coordinator.base_url}/v1/payments/balance", timeout=10,
                       headers={"Authorization": f"Bearer {coordinator.api_key}"})
    return int(answer.json()["balance_micro_usd"])


def _usage_total(coordinator: Coordinator) -> tuple[int, int]:
    """(rows, summed cost) of the consumer's usage records."""
    answer = httpx.get(f"{coordinator.base_url}/v1/payments/usage?limit=1000", timeout=10,
                       headers={"Authorization": f"Bearer {coordinator.api_key}"})
    rows = answer.json()["usage"]
    return len(rows), sum(int(r["cost_micro_usd"]) for r in rows)


async def _stream(client: openai.AsyncOpenAI, tokens: int) -> str:
    """One streamed chat: "ok" with every chunk, or the error class a client would see."""
    try:
        stream = await client.chat.completions.create(model=MODEL, messages=HI,  # type: ignore[arg-type]
                                                      max_tokens=tokens, stream=True)
        pieces = 0
        async for chunk in stream:
            pieces += bool(chunk.choices and chunk.choices[0].delta.content)
        return "ok" if pieces == tokens else f"short:{pieces}"
    except openai.APIError as exc:
        return type(exc).__name__


def test_a_provider_sigkilled_under_load(tmp_path: Path) -> None:
    coordinator = Coordinator(tmp_path, queue_max_per_model=100).start()
    providers = [Provider(coordinator, f"sim{i}", slots=4, simulated=True, sim_tokens=40,
                          sim_token_s=0.05).start() for i in range(3)]
    before = _balance(coordinator)

    async def go() -> list[str]:
        client = coordinator.async_client()
        tasks = [asyncio.create_task(_stream(client, 40)) for _ in range(36)]
        await asyncio.sleep(1.0)  # every provider is mid-answer
        providers[0].kill()
        return list(await asyncio.gather(*tasks))

    try:
        outcomes = asyncio.run(go())
        ok = outcomes.count("ok")
        # The killed provider's committed streams end with an error event; those it had not
        # started fail over; nothing hangs and nothing else is touched.
        assert ok >= 36 - 4, sorted(outcomes)
        assert set(outcomes) <= {"ok", "APIError"} | {f"short:{n}" for n in range(40)}, outcomes
        rows, charged = _usage_total(coordinator)
        assert rows == ok  # a stream the provider broke is refunded in full (billing.md §4)
        assert before - _balance(coordinator) == charged
        coordinator.audit()
        # The survivors still serve.
        assert asyncio.run(_stream(coordinator.async_client(), 40)) == "ok"
    finally:
        for provider in providers:
            provider.stop()
        coordinator.stop()


def test_providers_are_back_and_routable_soon_after_a_coordinator_restart(tmp_path: Path) -> None:
    coordinator = Coordinator(tmp_path).start()
    providers = [Provider(coordinator, f"sim{i}", slots=2, simulated=True).start() for i in range(2)]
    try:
        coordinator.wait_providers(2)
        coordinator.stop()
        stopped = time.monotonic()
        coordinator.start()
        ready = time.monotonic()
        coordinator.wait_providers(2, timeout=30)
        back = time.monotonic()
        print(f"\nproviders back and routable {back - ready:.2f} s after the restarted coordinator "
              f"was ready ({back - stopped:.2f} s after it stopped)")
        assert asyncio.run(_stream(coordinator.async_client(), 16)) == "ok"
    finally:
        for provider in providers:
            provider.stop()
        coordinator.stop()
