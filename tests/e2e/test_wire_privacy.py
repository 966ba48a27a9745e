"""What crosses the provider WebSocket: a stand-in provider (a raw socket with a valid
attestation) records every frame the coordinator sends; the prompt is never in them."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import uuid
from typing import Any

import websockets

from darkbloom.crypto import Channel, KeyPair, public_key_from_b64
from darkbloom.crypto.signing import IdentityKey
from darkbloom.inference.catalog import DEFAULT_MODEL
from darkbloom.protocol.frames import Hardware
from darkbloom.provider.attestation import build
from tests.e2e.harness import MODEL, Coordinator


def test_no_plaintext_request_crosses_the_websocket(tmp_path: Any) -> None:
    coordinator = Coordinator(tmp_path, min_trust_level="self_signed").start()
    canary = f"lynx-canary-{uuid.uuid4().hex[:10]}"
    frames: list[str] = []
    keys, identity = KeyPair.generate(), IdentityKey.generate()
    ready = threading.Event()

    async def provider() -> None:
        async with websockets.connect(coordinator.ws_url, additional_headers={
                "Authorization": f"Bearer {coordinator.provider_token}"}) as ws:
            await ws.send(json.dumps({
                "type": "register", "public_key": keys.public_b64, "backend": "llama.cpp",
                "models": [{"id": MODEL, "weight_hash": DEFAULT_MODEL.weight_hash}],
                "attestation": build(identity, keys.public_b64, Hardware(), "llama.cpp")}))
            ready.set()
            while True:
                text = await asyncio.wait_for(ws.recv(), 30)
                frames.append(str(text))
                frame = json.loads(text)
                if frame["type"] == "inference_request":
                    body = Channel(keys, public_key_from_b64(
                        frame["encrypted_body"]["ephemeral_public_key"])).open(
                        frame["encrypted_body"]["ciphertext"])
                    assert canary.encode() in body  # only the provider's key opens it
                    await ws.send(json.dumps({"type": "inference_error", "request_id": frame["request_id"],
                                              "error": "stand-in provider", "status_code": 500}))
                    return

    thread = threading.Thread(target=lambda: asyncio.run(provider()))
    thread.start()
    ready.wait(10)
    coordinator.wait_providers(1)
    try:
        reply = coordinator.client().chat.completions.with_raw_response.create(
            model=MODEL, max_tokens=5, messages=[{"role": "user", "content": canary}])
        raise AssertionError(f"the stand-in never answers, got {reply.http_response.status_code}")
    except Exception as exc:
        assert "stand-in provider" in str(exc) or "failed" in str(exc)
    thread.join(30)
    coordinator.stop()
    requests = [f for f in frames if '"inference_request"' in f]
    assert requests, frames
    for frame in frames:
        assert canary not in frame
        assert canary not in base64.b64decode(json.loads(frame).get("encrypted_body", {}).get(
            "ciphertext", "")).decode("latin-1")  # not even as base64 of plaintext


def test_bad_attestations_are_logged_and_others_still_served(stack: Coordinator) -> None:
    keys, identity = KeyPair.generate(), IdentityKey.generate()
    blob = build(identity, keys.public_b64, Hardware(), "llama.cpp")
    bad_signature = {**blob, "signature": IdentityKey.generate().sign(b"x")}
    oversized = {**blob, "attestation_raw": "A" * 40000}

    async def register(attestation: dict[str, Any]) -> dict[str, Any]:
        async with websockets.connect(stack.ws_url, additional_headers={
                "Authorization": f"Bearer {stack.provider_token}"}) as ws:
            await ws.send(json.dumps({"type": "register", "public_key": keys.public_b64,
                                      "models": [], "attestation": attestation}))
            return dict(json.loads(await ws.recv()))

    for attestation, reason in ((bad_signature, "attestation signature does not verify"),
                                (oversized, "attestation blob too large")):
        assert asyncio.run(register(attestation))["trust_level"] == "none"
        assert reason in stack.log_text()
    reply = stack.client().chat.completions.create(model=MODEL, max_tokens=2,
                                                   messages=[{"role": "user", "content": "hi"}])
    assert reply.usage is not None
