"""The provider WebSocket under bad input: wrong tokens, protocol order, malformed and unknown
frames. Each closes (or is ignored on) that one connection; the coordinator keeps serving."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from pathlib import Path

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from darkbloom.protocol.frames import PROTOCOL_VERSION
from tests.e2e.harness import MODEL, Coordinator

CANARY = "canary-frame-payload-7d1f"


def _register(token: str | None = None, **extra: object) -> str:
    frame: dict[str, object] = {
        "type": "register", "v": PROTOCOL_VERSION, "backend": "llama.cpp", "version": "0.1.0",
        "public_key": base64.b64encode(os.urandom(32)).decode(),
        "models": [{"id": MODEL, "weight_hash": "0" * 64}],
        "encrypted_response_chunks": True, **extra,
    }
    if token:
        frame["auth_token"] = token
    return json.dumps(frame)


async def _connect(stack: Coordinator, token: str | None) -> ClientConnection:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await websockets.connect(stack.ws_url, additional_headers=headers)


async def _closed_with(ws: ClientConnection) -> tuple[int | None, str | None]:
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), 15)
    return ws.close_code, ws.close_reason


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_bad_token_closes_4001(stack: Coordinator) -> None:
    async def go() -> None:
        ws = await _connect(stack, "darkbloom-pt-" + "0" * 64)
        await ws.send(_register())
        assert (await _closed_with(ws))[0] == 4001
        ws = await _connect(stack, None)  # anonymous providers are refused by default
        await ws.send(_register())
        assert (await _closed_with(ws))[0] == 4001
    run(go())


def test_token_in_register_is_accepted(stack: Coordinator) -> None:
    async def go() -> None:
        ws = await _connect(stack, None)
        await ws.send(_register(stack.provider_token))
        registered = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert registered["type"] == "registered"
        # Wrong weight hash: connected, but the model is refused and the provider is unroutable.
        assert registered["accepted_models"] == [] and registered["routable"] is False
        assert registered["rejected_models"][0]["reason"] == "weight hash does not match the catalog"
        await ws.close()
    run(go())


def test_first_frame_must_be_register(stack: Coordinator) -> None:
    async def go() -> None:
        ws = await _connect(stack, stack.provider_token)
        await ws.send(json.dumps({"type": "heartbeat", "v": PROTOCOL_VERSION}))
        code, reason = await _closed_with(ws)
        assert code == 4002 and reason and "register" in reason
    run(go())


def test_duplicate_register_closes_4002(stack: Coordinator) -> None:
    async def go() -> None:
        ws = await _connect(stack, stack.provider_token)
        await ws.send(_register())
        await ws.recv()
        await ws.send(_register())
        assert (await _closed_with(ws))[0] == 4002
    run(go())


@pytest.mark.parametrize("frame", [
    "this is not json " + CANARY,
    json.dumps(["a", "list", CANARY]),
    json.dumps({"type": "heartbeat", "status": CANARY}),
    json.dumps({"type": "inference_response_chunk", "request_id": CANARY}),
    json.dumps({"no_type": CANARY}),
])
def test_malformed_frame_closes_with_reason(stack: Coordinator, frame: str) -> None:
    async def go() -> None:
        ws = await _connect(stack, stack.provider_token)
        await ws.send(_register())
        await ws.recv()
        await ws.send(frame)
        code, reason = await _closed_with(ws)
        assert code == 1008 and reason
        assert CANARY not in reason
    run(go())
    assert CANARY not in stack.log_text()
    # ...and the coordinator still serves consumers.
    reply = stack.client().chat.completions.create(model=MODEL, max_tokens=2,
                                                   messages=[{"role": "user", "content": "hi"}])
    assert reply.usage is not None


def test_unknown_frame_type_is_ignored(stack: Coordinator) -> None:
    async def go() -> None:
        ws = await _connect(stack, stack.provider_token)
        await ws.send(_register())
        await ws.recv()
        await ws.send(json.dumps({"type": "from_the_future", "v": PROTOCOL_VERSION, "payload": CANARY}))
        await ws.send(json.dumps({"type": "heartbeat", "v": PROTOCOL_VERSION, "status": "idle"}))
        with pytest.raises(TimeoutError):  # still open: nothing comes back, nothing closes
            await asyncio.wait_for(ws.recv(), 1.0)
        await ws.close()
    run(go())
    log = stack.log_text()
    assert "from_the_future" in log and CANARY not in log


def test_newer_protocol_version_closes_4400(stack: Coordinator) -> None:
    async def go() -> None:
        ws = await _connect(stack, stack.provider_token)
        await ws.send(_register(v=PROTOCOL_VERSION + 1))
        assert (await _closed_with(ws))[0] == 4400
    run(go())


def test_a_token_holds_at_most_max_sessions(tmp_path: Path) -> None:
    """A leaked or hostile provider token cannot open sessions until the coordinator runs out of
    memory: past DARKBLOOM_MAX_SESSIONS_PER_TOKEN it is closed 1008, and a freed place is reusable."""
    coordinator = Coordinator(tmp_path, max_sessions_per_token="2").start()

    async def session() -> ClientConnection:
        ws = await _connect(coordinator, coordinator.provider_token)
        await ws.send(_register())
        return ws

    async def go() -> None:
        first, second = await session(), await session()
        for ws in (first, second):
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "registered"
        code, reason = await _closed_with(await session())
        assert code == 1008 and "already holds 2 sessions" in (reason or "")
        await first.close()
        for _ in range(50):  # the coordinator notices the close
            await asyncio.sleep(0.1)
            again = await session()
            try:
                if json.loads(await asyncio.wait_for(again.recv(), 10))["type"] == "registered":
                    break
            except websockets.ConnectionClosed:
                continue  # still counted: try again
        else:
            raise AssertionError("a freed session place was never reusable")
        await again.close()
        await second.close()

    try:
        run(go())
        assert "registered" in coordinator.log_text()  # and it kept serving
    finally:
        coordinator.stop()
