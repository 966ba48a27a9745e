"""What crosses the provider WebSocket: a stand-in provider (a raw socket with a valid
attestation) records every frame the coordinator sends; the prompt is never in them."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import uuid
from typing import Any

import openai
import websockets

from darkbloom.crypto import KeyPair, SessionChannel, public_key_from_b64
from darkbloom.crypto.signing import ATTESTATION_CONTEXT, IdentityKey
from darkbloom.protocol.frames import Hardware
from darkbloom.provider.attestation import build
from tests.e2e.fakes import FakeProvider
from tests.e2e.harness import MODEL, Coordinator


def test_no_plaintext_request_crosses_the_websocket(tmp_path: Any) -> None:
    coordinator = Coordinator(tmp_path, min_trust_level="self_signed").start()
    canary = f"lynx-canary-{uuid.uuid4().hex[:10]}"
    frames: list[dict[str, Any]] = []
    ready, done = threading.Event(), threading.Event()

    def on_request(frame: dict[str, Any]) -> dict[str, Any]:
        frames.append(frame)
        sealed = frame["encrypted_body"]
        body = SessionChannel(fake.keys, public_key_from_b64(sealed["ephemeral_public_key"]),
                              "provider").open("request", "", 0, sealed["ciphertext"])
        assert canary.encode() in body  # only the provider's key opens it
        done.set()
        return {"type": "inference_error", "request_id": frame["request_id"],
                "error": "stand-in provider", "status_code": 500}

    fake = FakeProvider(coordinator, on_request=on_request)

    async def provider() -> None:
        async with fake:
            ready.set()
            await asyncio.to_thread(done.wait, 60)

    thread = threading.Thread(target=lambda: asyncio.run(provider()))
    thread.start()
    ready.wait(10)
    coordinator.wait_providers(1)
    try:
        reply = coordinator.client().chat.completions.with_raw_response.create(
            model=MODEL, max_tokens=5, messages=[{"role": "user", "content": canary}])
        raise AssertionError(f"the stand-in never answers, got {reply.http_response.status_code}")
    except openai.APIStatusError as exc:
        assert exc.status_code >= 500 and "stand-in provider" not in str(exc)
    done.set()
    thread.join(30)
    coordinator.stop()
    assert frames
    for frame in frames:
        assert canary not in json.dumps(frame)
        assert canary not in base64.b64decode(frame["encrypted_body"]["ciphertext"]).decode(
            "latin-1")  # not even as base64 of plaintext


def test_bad_attestations_are_logged_and_others_still_served(stack: Coordinator) -> None:
    keys, identity = KeyPair.generate(), IdentityKey.generate()
    blob = build(identity, keys.public_b64, Hardware(), "llama.cpp")
    bad_signature = {**blob, "signature": IdentityKey.generate().sign(ATTESTATION_CONTEXT + b"x")}
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
