"""Sender-side sealing to the coordinator (trust.md §6): sealed in, sealed out, 400s on a wrong
kid or a tampered envelope, never a plaintext fallback."""

from __future__ import annotations

import json
from typing import Any

import httpx

from darkbloom.client.sealing import MEDIA_TYPE, open_body, open_events, seal_request
from tests.e2e.harness import MODEL, Coordinator

BODY = {"model": MODEL, "max_tokens": 4, "temperature": 0,
        "messages": [{"role": "user", "content": "Name a colour."}]}


def _key(stack: Coordinator) -> dict[str, Any]:
    response = httpx.get(f"{stack.base_url}/v1/encryption-key")
    assert response.headers["cache-control"] == "public, max-age=300"
    key = dict(response.json())
    assert key["algorithm"] == "x25519-nacl-box" and len(key["kid"]) == 16
    return key


def _post(stack: Coordinator, content: bytes) -> httpx.Response:
    return httpx.post(f"{stack.base_url}/v1/chat/completions", content=content, timeout=60,
                      headers={"Authorization": f"Bearer {stack.api_key}", "Content-Type": MEDIA_TYPE})


def test_sealed_request_and_reply(stack: Coordinator) -> None:
    sealed, channel = seal_request(json.dumps(BODY).encode(), _key(stack))
    assert b"colour" not in sealed
    response = _post(stack, sealed)
    assert response.status_code == 200 and response.headers["content-type"] == MEDIA_TYPE
    assert b"chat.completion" not in response.content
    reply = json.loads(open_body(channel, response.content))
    assert reply["object"] == "chat.completion" and reply["choices"][0]["message"]["content"]
    assert response.headers["x-response-hash"]  # the receipt still covers the plaintext body


def test_sealed_stream(stack: Coordinator) -> None:
    sealed, channel = seal_request(json.dumps({**BODY, "stream": True}).encode(), _key(stack))
    response = _post(stack, sealed)
    assert response.status_code == 200 and "chat.completion.chunk" not in response.text
    events = open_events(channel, response.text)
    assert events[-1] == "data: [DONE]" and events[-2].startswith(": darkbloom-receipt ")
    assert json.loads(events[0][len("data: "):])["object"] == "chat.completion.chunk"


def test_wrong_kid_and_tampering_are_400s(stack: Coordinator) -> None:
    key = _key(stack)
    sealed, _ = seal_request(json.dumps(BODY).encode(), {**key, "kid": "0" * 16})
    response = _post(stack, sealed)
    assert response.status_code == 400 and response.json()["error"]["code"] == "kid_mismatch"
    sealed, _ = seal_request(json.dumps(BODY).encode(), key)
    envelope = json.loads(sealed)
    envelope["ciphertext"] = envelope["ciphertext"][:-8] + "AAAAAAA="
    response = _post(stack, json.dumps(envelope).encode())
    assert response.status_code == 400 and response.json()["error"]["code"] == "decryption_failed"
    response = _post(stack, json.dumps(BODY).encode())  # plaintext under the sealed media type
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_sealed_envelope"
