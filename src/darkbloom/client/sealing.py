"""Consumer side of sender sealing (trust.md §6): seal a body to the coordinator's key, open the
sealed reply. Use with any HTTP client; the stock SDKs cannot do this by themselves."""

from __future__ import annotations

import json
from typing import Any

from darkbloom.crypto import Channel, KeyPair, public_key_from_b64
from darkbloom.protocol.sse import DATA

MEDIA_TYPE = "application/darkbloom-sealed+json"


def seal_request(body: bytes, encryption_key: dict[str, Any]) -> tuple[bytes, Channel]:
    """``encryption_key`` is GET /v1/encryption-key's answer; keep the channel for the reply."""
    ephemeral = KeyPair.generate()
    channel = Channel(ephemeral, public_key_from_b64(str(encryption_key["public_key"])))
    envelope = {"kid": encryption_key["kid"], "ephemeral_public_key": ephemeral.public_b64,
                "ciphertext": channel.seal(body)["ciphertext"]}
    return json.dumps(envelope).encode(), channel


def open_body(channel: Channel, raw: bytes) -> bytes:
    return channel.open(json.loads(raw)["ciphertext"])


def open_events(channel: Channel, sse_text: str) -> list[str]:
    """Each sealed ``data:`` event opened back into the original SSE event text."""
    return [channel.open(line[len(DATA):]).decode("utf-8")
            for line in sse_text.splitlines() if line.startswith(DATA)]
