"""Sender-side sealing to the coordinator (trust.md §6).

A consumer seals its request body to the coordinator's long-lived X25519 key
(``GET /v1/encryption-key``) and posts ``application/darkbloom-sealed+json``; the reply comes back
sealed to the consumer's ephemeral key. It protects against anything between consumer and
coordinator that can read TLS, not against the coordinator (that is consumer-blind mode).
A wrong ``kid`` or an envelope that does not open is a 400, never a plaintext fallback.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from nacl.public import PrivateKey

from darkbloom.crypto import Channel, KeyPair, SealingError, public_key_from_b64
from darkbloom.errors import InvalidRequest
from darkbloom.inference import bounded_json

MEDIA_TYPES = frozenset({"application/darkbloom-sealed+json", "application/eigeninference-sealed+json"})


def load_or_create_key(path: Path) -> KeyPair:
    if path.is_file():
        return KeyPair(PrivateKey(path.read_bytes()))
    keys = KeyPair.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(bytes(keys.private))
    return keys


def key_id(keys: KeyPair) -> str:
    return hashlib.sha256(bytes(keys.public)).hexdigest()[:16]


def is_sealed(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower() in MEDIA_TYPES


def open_envelope(raw: bytes, keys: KeyPair) -> tuple[bytes, Channel]:
    """The plaintext body and the channel its reply is sealed with."""
    try:
        # Bounded: json.loads holds the GIL throughout, and 5 MiB of "[]," held it 370 ms.
        envelope = bounded_json.loads(raw.decode("utf-8-sig"))
        kid, sender, ciphertext = envelope["kid"], envelope["ephemeral_public_key"], envelope["ciphertext"]
        if not all(isinstance(v, str) for v in (kid, sender, ciphertext)):
            raise TypeError
    except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: nested too deep
        raise InvalidRequest("sealed body must be {kid, ephemeral_public_key, ciphertext}",
                             code="invalid_sealed_envelope") from None
    if kid != key_id(keys):
        raise InvalidRequest("the body is sealed to another coordinator key; fetch "
                             "GET /v1/encryption-key again", code="kid_mismatch")
    try:
        channel = Channel(keys, public_key_from_b64(sender))
        return channel.open(ciphertext), channel
    except SealingError:
        raise InvalidRequest("the sealed body could not be opened", code="decryption_failed") from None


def seal_body(channel: Channel, kid: str, body: bytes) -> bytes:
    return json.dumps({"kid": kid, "ciphertext": channel.seal(body)["ciphertext"]}).encode()


def seal_event(channel: Channel, event: bytes) -> bytes:
    """One SSE event sealed whole: ``data: b64(nonce ‖ box(event bytes))``."""
    return b"data: " + channel.seal(event)["ciphertext"].encode("ascii")


