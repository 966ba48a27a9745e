"""Failure paths with real processes: disconnects, cancels, crashes, restarts, capacity."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.harness import MODEL, Coordinator, Provider

LONG = [{"role": "user", "content": "Write a very long essay about the history of the sea."}]


class _Stream:
    """An open streaming response. Keeps the client and line iterator alive: dropping either
    closes the connection, which the coordinator would rightly treat as a disconnect."""

    def __init__(self, client: httpx.Client, response: httpx.Response) -> None:
        self.client, self.response = client, response
        self.lines = response.iter_lines()

    def close(self) -> None:
        self.response.close()
        self.client.close()


def _long_stream(coordinator: Coordinator, max_tokens: int = 3000) -> _Stream:
    client = httpx.Client(timeout=60)
    request = client.build_request(
        "POST", f"{coordinator.base_url}/v1/chat/completions",
        json={"model": MODEL, "messages": LONG, "max_tokens": max_tokens, "stream": True,
              "temperature": 0, "frequency_penalty": 0},
        headers={"Authorization": f"Bearer {coordinator.api_key}"})
    return _Stream(client, client.send(request, stream=True))


@pytest.fixture
def solo(tmp_path: Path) -> tuple[Coordinator, Provider]:
    coordinator = Coordinator(tmp_path).start()
    provider = Provider(coordinator).start()
    yield coordinator, provider
    provider.stop()
    coordinator.stop()


def test_client_disconnect_cancels_and_frees_the_slot(solo: tuple[Coordinator, Provider]) -> None:
    coordinator, provider = solo
    stream = _long_stream(coordinator)
    received = [next(stream.lines) for _ in range(6)]
    assert any(line.startswith("data: ") for line in received)
    stream.close()  # consumer hangs up mid-stream
    # The single slot must be free at once: a new request is served although the abandoned one
    # still had ~3000 tokens (tens of seconds) left to generate.
    started = time.monotonic()
    reply = coordinator.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert reply.choices[0].message.content is not None
    assert time.monotonic() - started < 15
    # The provider stopped generating: far fewer tokens than the 3000 asked for (~65 tok/s here).
    stopped = re.search(r"cancelled after (\d+) token", provider.log_text())
    assert stopped is not None and int(stopped.group(1)) < 500


def test_cancel_while_queued_never_reaches_provider(solo: tuple[Coordinator, Provider]) -> None:
    coordinator, _ = solo
    holder = _long_stream(coordinator, max_tokens=400)
    next(holder.lines)
    waiting = httpx.Client(timeout=0.5)
    with pytest.raises(httpx.ReadTimeout):  # queued behind the holder, then abandoned
        waiting.post(f"{coordinator.base_url}/v1/chat/completions",
                     json={"model": MODEL, "messages": LONG, "max_tokens": 2},
                     headers={"Authorization": f"Bearer {coordinator.api_key}"})
    waiting.close()
    holder.close()
    reply = coordinator.client().chat.completions.create(model=MODEL, messages=LONG, max_tokens=2)
    assert reply.usage is not None and reply.usage.completion_tokens == 2


def test_provider_killed_mid_stream_gives_client_an_error(solo: tuple[Coordinator, Provider]) -> None:
    coordinator, provider = solo
    stream = coordinator.client().chat.completions.create(model=MODEL, messages=LONG, max_tokens=3000,
                                                          temperature=0,
                                                          stream=True)
    seen = 0
    with pytest.raises(openai.APIError) as info:
        for _ in stream:
            seen += 1
            if seen == 5:
                provider.kill()
    assert "provider disconnected" in str(info.value.message)
    assert seen >= 5
    coordinator.wait_providers(0)
    # Non-streaming request with no provider left: a clean 503, not a hang.
    with pytest.raises(openai.InternalServerError) as failure:
        coordinator.client().chat.completions.create(model=MODEL, messages=LONG, max_tokens=2)
    assert failure.value.status_code == 503


def test_provider_killed_before_answer_non_streaming(solo: tuple[Coordinator, Provider]) -> None:
    coordinator, provider = solo
    result: dict[str, BaseException] = {}

    def call() -> None:
        try:
            coordinator.client().chat.completions.create(model=MODEL, messages=LONG, max_tokens=2000,
                                                         temperature=0)
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(1.5)
    provider.kill()
    thread.join(30)
    assert not thread.is_alive()
    error = result["error"]
    assert isinstance(error, openai.APIStatusError) and error.status_code in (502, 503)


def test_provider_reconnects_after_coordinator_restart(solo: tuple[Coordinator, Provider]) -> None:
    coordinator, provider = solo
    coordinator.stop()
    time.sleep(1)
    coordinator.start()  # same port, same database: the same API key keeps working
    coordinator.wait_providers(1, timeout=30)
    reply = coordinator.client().chat.completions.create(model=MODEL, messages=LONG, max_tokens=3)
    assert reply.usage is not None and reply.usage.completion_tokens == 3
    assert provider.proc is not None and provider.proc.poll() is None


def test_new_provider_process_is_served(solo: tuple[Coordinator, Provider]) -> None:
    coordinator, provider = solo
    provider.stop()
    coordinator.wait_providers(0)
    provider.start()
    reply = coordinator.client().chat.completions.create(model=MODEL, messages=LONG, max_tokens=3)
    assert reply.choices[0].message.content is not None


def test_two_providers_are_both_used(tmp_path: Path) -> None:
    coordinator = Coordinator(tmp_path).start()
    providers = [Provider(coordinator, f"p{i}", threads=1).start() for i in range(2)]
    try:
        async def burst() -> set[str]:
            client = coordinator.async_client()
            calls = [client.chat.completions.with_raw_response.create(
                model=MODEL, messages=LONG, max_tokens=24) for _ in range(4)]
            replies = await asyncio.gather(*calls)
            return {r.headers["x-provider-id"] for r in replies}

        assert len(asyncio.run(burst())) == 2
    finally:
        for provider in providers:
            provider.stop()
        coordinator.stop()


def test_queue_full_and_queue_timeout_are_503(tmp_path: Path) -> None:
    coordinator = Coordinator(tmp_path, queue_max_per_model=1, queue_timeout_s=3).start()
    provider = Provider(coordinator).start()
    headers = {"Authorization": f"Bearer {coordinator.api_key}"}
    body = {"model": MODEL, "messages": LONG, "max_tokens": 2}
    try:
        holder = _long_stream(coordinator, max_tokens=1500)  # takes the only slot
        next(holder.lines)
        with httpx.Client(timeout=30) as http:
            results: dict[str, httpx.Response] = {}
            waiter = threading.Thread(target=lambda: results.setdefault(
                "queued", http.post(f"{coordinator.base_url}/v1/chat/completions", json=body,
                                    headers=headers)))
            waiter.start()
            time.sleep(0.5)  # the waiter now fills the one-entry queue
            full = coordinator.client().chat.completions
            with pytest.raises(openai.InternalServerError) as info:
                full.create(model=MODEL, messages=LONG, max_tokens=2)
            assert info.value.status_code == 503
            assert info.value.response.json()["error"]["type"] == "model_not_available"
            assert info.value.response.headers["retry-after"] == "1"
            waiter.join(20)
            queued = results["queued"]
            assert queued.status_code == 503  # waited the 3 s queue timeout
            assert "became free" in queued.json()["error"]["message"]
        holder.close()
    finally:
        provider.stop()
        coordinator.stop()
