"""Hostile review of the trust layer (issue 8), the cases that need a real coordinator: a fake
provider over a real WebSocket stands in for one that takes its time."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from darkbloom.client.blind import MEDIA_TYPE, seal_to_providers
from tests.e2e.fakes import FakeProvider
from tests.e2e.harness import MODEL, Coordinator


class _Slow(FakeProvider):
    """Accepts every request, sends a first chunk and nothing more; records the cancels it gets."""

    cancels: list[str]

    async def _serve(self, ws: ClientConnection) -> None:
        self.cancels = []
        try:
            async for message in ws:
                frame = json.loads(message)
                if frame["type"] == "attestation_challenge" and self.answer is not None:
                    await ws.send(json.dumps(self.answer(self.identity, self.keys, frame)))
                elif frame["type"] == "inference_request":
                    self.requests += 1
                    rid = frame["request_id"]
                    await ws.send(json.dumps({"type": "inference_accepted", "request_id": rid}))
                    await ws.send(json.dumps({  # the first chunk (a blind one is never opened)
                        "type": "inference_response_chunk", "request_id": rid, "seq": 0,
                        "encrypted_data": {"ephemeral_public_key": self.keys.public_b64,
                                           "ciphertext": "A" * 64}}))
                elif frame["type"] == "cancel":
                    self.cancels.append(frame["request_id"])
        except websockets.ConnectionClosed:
            pass
        self.close_code = ws.close_code


async def _routable_listing(coordinator: Coordinator) -> list[dict[str, Any]]:
    for _ in range(200):
        listing = (await asyncio.to_thread(
            httpx.get, f"{coordinator.base_url}/v1/providers/attestation")).json()["providers"]
        if listing and all(p.get("routable") for p in listing):
            return list(listing)
        await asyncio.sleep(0.1)
    raise AssertionError("the fake provider never became routable")


async def test_a_blind_consumer_hanging_up_cancels_its_attempt(tmp_path: Path) -> None:
    """A non-streamed consumer-blind request whose consumer hung up after the first chunk kept its
    attempt (and the provider's slot) forever if the provider never finished. A non-streamed
    request now runs to completion when its consumer leaves (it is charged: billing.md §4), so
    what frees the slot is the chunk timeout, which a stalled provider always meets."""
    coordinator = Coordinator(tmp_path, chunk_timeout_s=2).start()
    try:
        slow = _Slow(coordinator)
        async with slow:
            listing = await _routable_listing(coordinator)
            body = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
            sealed, _ = seal_to_providers(body, listing, insecure_accept_self_signed=True)
            async with httpx.AsyncClient() as client:
                with pytest.raises(httpx.ReadTimeout):
                    await client.post(f"{coordinator.base_url}/v1/chat/completions", content=sealed,
                                      timeout=1, headers={"Authorization": f"Bearer {coordinator.api_key}",
                                                          "Content-Type": MEDIA_TYPE})
            for _ in range(100):
                if slow.cancels:
                    break
                await asyncio.sleep(0.1)
            assert slow.requests == 1 and len(slow.cancels) == 1
    finally:
        coordinator.stop()
