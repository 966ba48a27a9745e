"""Hostile review of the routing lifecycle and request validation (issue 8), end to end with a
real coordinator and a real llama.cpp provider: a request that used to kill the provider's
process, one that hung a coordinator thread for good, and a first frame that held the event loop
for seconds before any token was checked. Every test here failed before its fix."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from darkbloom.client.blind import MEDIA_TYPE, open_error, seal_to_providers
from tests.e2e.harness import MODEL, Coordinator, Provider

HI = [{"role": "user", "content": "hi"}]


class Stack:
    def __init__(self, workdir: Path) -> None:
        self.coordinator = Coordinator(workdir).start()
        self.provider = Provider(self.coordinator, threads=1).start()

    def post(self, body: dict[str, Any] | bytes, timeout: float = 60) -> httpx.Response:
        blind = isinstance(body, bytes)
        return httpx.post(
            f"{self.coordinator.base_url}/v1/chat/completions", timeout=timeout,
            content=body if blind else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.coordinator.api_key}",
                     "Content-Type": MEDIA_TYPE if blind else "application/json"})

    def still_serves(self) -> None:
        assert self.provider.proc is not None and self.provider.proc.poll() is None, \
            "the provider process died"
        answer = self.post({"model": MODEL, "messages": HI, "max_tokens": 2})
        assert answer.status_code == 200, answer.text


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("hostile-lifecycle"))
    yield stack
    stack.provider.stop()
    stack.coordinator.stop()


def _schema_request(pattern: str) -> dict[str, Any]:
    schema = {"type": "object", "properties": {"a": {"type": "string", "pattern": pattern}},
              "required": ["a"], "additionalProperties": False}
    return {"model": MODEL, "messages": HI, "max_tokens": 8, "temperature": 0,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}


def test_a_schema_no_token_can_satisfy_is_a_400_not_a_dead_provider(stack: Stack) -> None:
    """The coordinator passed `^[z-a]$` (an empty range); generation reached it and llama.cpp
    aborted the provider's process (GGML_ABORT), and each retry did the same to the next one."""
    refused = stack.post(_schema_request("^[z-a]$"))
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == "response_format.json_schema.schema"
    stack.still_serves()


def test_the_provider_refuses_it_itself_in_consumer_blind_mode(stack: Stack) -> None:
    """Sealed to the provider, the coordinator cannot check it: the provider's own check must."""
    listing = httpx.get(f"{stack.coordinator.base_url}/v1/providers/attestation").json()["providers"]
    sealed, sessions = seal_to_providers(_schema_request("^\\x00$"), listing,
                                         insecure_accept_self_signed=True)
    refused = stack.post(sealed)
    assert refused.status_code == 400, refused.text
    assert "no model can generate" in open_error(sessions, refused.json())["message"]
    stack.still_serves()


def test_a_stray_bracket_in_a_pattern_is_a_400_not_a_hung_thread(stack: Stack) -> None:
    """`^]$` sent llama-cpp-python's converter into an endless loop in a worker thread; the
    request never answered, and once the default executor's threads were all stuck, every
    request that parses a body hung."""
    bodies = [_schema_request(p) for p in ("^]$", "^a}$", "^x{2}}$") * 4]
    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda body: stack.post(body, timeout=30), bodies))
    assert [a.status_code for a in answers] == [400] * len(bodies)
    assert all("unmatched" in a.json()["error"]["message"] for a in answers)
    stack.still_serves()


def test_a_register_frame_of_a_million_models_is_refused_unparsed(stack: Stack) -> None:
    """The first frame is parsed before its token is checked: a 10 MiB register listing a
    million models held the event loop 4 s and 800 MB, then was refused for its missing token."""
    models = ",".join(['{"id":""}'] * 1_000_000)

    async def go() -> int | None:
        async with websockets.connect(stack.coordinator.ws_url, max_size=None) as ws:
            await ws.send('{"type":"register","models":[' + models + "]}")
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 30)
            return ws.close_code

    assert asyncio.run(go()) == 1008  # malformed, never parsed: not 4001, "token required"
    stack.still_serves()


def test_a_stream_the_consumer_cuts_short_is_recorded_with_what_it_got(stack: Stack) -> None:
    """A consumer that read a stream and hung up before its end was recorded with 0 completion
    tokens, whatever it had received: the record (and later billing) now keeps the floor the
    relayed chunks prove."""
    rid = f"cut-{uuid.uuid4().hex[:8]}"
    body = {"model": MODEL, "prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 400, "temperature": 0,
            "stream": True}
    events = 0
    with httpx.stream("POST", f"{stack.coordinator.base_url}/v1/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {stack.coordinator.api_key}",
                               "X-Request-ID": rid}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            events += line.startswith("data: {")
            if events == 64:
                break  # hang up mid-stream
    db = stack.coordinator.workdir / "state" / "coordinator.db"
    for _ in range(100):
        with sqlite3.connect(db) as conn:
            row = conn.execute("SELECT status, completion_tokens FROM requests WHERE x_request_id = ?",
                               (rid,)).fetchone()
        if row is not None and row[0] != "in_progress":
            break
        time.sleep(0.1)
    assert row is not None and row[0] == "cancelled"
    assert row[1] >= (64 - 16) // 8
