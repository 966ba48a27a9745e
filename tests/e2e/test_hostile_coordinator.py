"""A real `darkbloom serve` against a hostile coordinator (a WebSocket server in the test):
it will not sign what the coordinator chooses, and what it does sign is domain-separated."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.server import ServerConnection

from darkbloom.crypto import KeyPair, SessionChannel, public_key_from_b64
from darkbloom.crypto.challenge import challenge_bytes, new_nonce, now_stamp
from darkbloom.crypto.signing import canonical_json, verify
from darkbloom.protocol.frames import PROTOCOL_VERSION
from darkbloom.protocol.trust import SignedReceipt, attestation_message, open_attestation
from tests.e2e.harness import MODEL, _terminate, free_port


async def _recv(ws: ServerConnection, kind: str, wait_s: float) -> dict[str, Any] | None:
    """The next frame of type ``kind`` (others skipped), or None if none came in time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while (left := deadline - loop.time()) > 0:
        try:
            frame = json.loads(await asyncio.wait_for(ws.recv(), left))
        except TimeoutError:
            return None
        if frame["type"] == kind:
            return dict(frame)
    return None


def test_a_hostile_coordinator_gets_no_signing_oracle(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "DARKBLOOM_PROVIDER_COORDINATOR_URL": f"ws://127.0.0.1:{port}/ws/provider",
           "DARKBLOOM_PROVIDER_CONFIG_DIR": str(tmp_path / "config"),
           "DARKBLOOM_PROVIDER_TOKEN": "darkbloom-pt-test", "DARKBLOOM_PROVIDER_LOG_LEVEL": "debug"}
    log_path = tmp_path / "provider.log"
    seen: dict[str, Any] = {}

    async def coordinator(ws: ServerConnection) -> None:
        register = json.loads(await ws.recv())
        assert register["type"] == "register" and register["v"] == PROTOCOL_VERSION
        blob = open_attestation(register["attestation"]["attestation_raw"],
                                register["attestation"]["signature"])
        identity = blob.publicKey
        await ws.send(json.dumps({"type": "registered", "v": 2, "provider_id": "p"}))
        # 1. The oracle attack: a "nonce" that is an attestation blob binding OUR key.
        mine = KeyPair.generate()
        evil = canonical_json({**json.loads(base64.b64decode(register["attestation"]["attestation_raw"])),
                               "encryptionPublicKey": mine.public_b64})
        for nonce, stamp in ((evil.decode(), ""), (evil.decode(), now_stamp()),
                             (new_nonce(), (datetime.now(UTC) - timedelta(hours=1))
                              .strftime("%Y-%m-%dT%H:%M:%SZ"))):
            await ws.send(json.dumps({"type": "attestation_challenge", "v": 2, "nonce": nonce,
                                      "timestamp": stamp}))
            assert await _recv(ws, "attestation_response", 2.0) is None
        # 2. A real challenge is answered, and the answer is only a challenge answer.
        nonce, stamp = new_nonce(), now_stamp()
        await ws.send(json.dumps({"type": "attestation_challenge", "v": 2, "nonce": nonce,
                                  "timestamp": stamp}))
        answer = await _recv(ws, "attestation_response", 10.0)
        assert answer is not None
        assert verify(identity, challenge_bytes(nonce, stamp), answer["signature"])
        assert not verify(identity, attestation_message((nonce + stamp).encode()), answer["signature"])
        # 3. A request: chunks come sealed to our session key, bound to their position.
        ephemeral = KeyPair.generate()
        channel = SessionChannel(ephemeral, public_key_from_b64(register["public_key"]), "requester")
        body = json.dumps({"model": MODEL, "max_tokens": 4, "stream": True, "temperature": 0,
                           "messages": [{"role": "user", "content": "hi"}]}).encode()
        await ws.send(json.dumps({
            "type": "inference_request", "v": 2, "request_id": "rq", "model": MODEL,
            "endpoint": "/v1/chat/completions", "stream": True, "max_tokens_cap": 4,
            "encrypted_body": {"ephemeral_public_key": ephemeral.public_b64,
                               "ciphertext": channel.seal("request", "", 0, body)}}))
        chunks: list[dict[str, Any]] = []
        while (frame := json.loads(await asyncio.wait_for(ws.recv(), 60)))["type"] != "inference_complete":
            if frame["type"] == "inference_response_chunk":
                chunks.append(frame)
        for chunk in chunks:
            sealed = chunk["encrypted_data"]["ciphertext"]
            channel.open("response", "rq", chunk["seq"], sealed)
        if len(chunks) > 1:  # the same bytes at another position do not open
            try:
                channel.open("response", "rq", chunks[1]["seq"], chunks[0]["encrypted_data"]["ciphertext"])
                raise AssertionError("a chunk opened at another position")
            except Exception as exc:
                assert "authentication" in str(exc)
        signed = SignedReceipt.model_validate(frame["receipt"])
        assert signed.valid() and signed.receipt.v == 2 and signed.receipt.request_id == "rq"
        assert not verify(identity, attestation_message(canonical_json(signed.receipt.model_dump())),
                          signed.signature)
        seen["done"] = True
        await ws.close()

    async def main() -> None:
        async with websockets.serve(coordinator, "127.0.0.1", port):
            with log_path.open("ab") as log:
                proc = subprocess.Popen([sys.executable, "-m", "darkbloom", "serve"], env=env,  # noqa: ASYNC220
                                        stdout=log, stderr=subprocess.STDOUT)
                try:
                    for _ in range(1200):
                        if seen.get("done"):
                            break
                        await asyncio.sleep(0.1)
                finally:
                    _terminate(proc)

    asyncio.run(main())
    assert seen.get("done"), log_path.read_text()[-3000:]
    assert "not answering a malformed challenge" in log_path.read_text()
