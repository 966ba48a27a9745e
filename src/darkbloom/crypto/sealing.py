"""X25519 sealing, in two forms.

``Channel``: a plain NaCl box (X25519 + XSalsa20-Poly1305), the reference's format for sender
sealing to the coordinator (trust.md §6). ``ciphertext`` is base64(nonce24 ‖ box).

``SessionChannel``: what every inference request and its response chunks travel in between a
requester (the coordinator, or the consumer in consumer-blind mode) and a provider. The X25519
shared secret is split into one key per direction, and each message is sealed with
XChaCha20-Poly1305 whose associated data names the direction, the request id and the sequence
number. So a relay that drops, reorders, replays or reflects a message, or moves it into
another request, makes it fail to open (docs/security.md "Sealing").

Public keys that are low-order points (all-zero and the like, which make the shared secret a
known constant) are refused when parsed, and so is any base64 spelling but the canonical one.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from typing import Literal

from nacl import bindings
from nacl.encoding import RawEncoder
from nacl.exceptions import CryptoError
from nacl.exceptions import RuntimeError as NaclRuntimeError
from nacl.hash import blake2b
from nacl.public import Box, PrivateKey, PublicKey


class SealingError(Exception):
    """An envelope could not be opened: wrong key, tampered bytes or malformed fields."""


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SealingError("invalid base64") from None


@dataclass(frozen=True, slots=True)
class KeyPair:
    private: PrivateKey

    @classmethod
    def generate(cls) -> KeyPair:
        return cls(PrivateKey.generate())

    @property
    def public(self) -> PublicKey:
        return self.private.public_key

    @property
    def public_b64(self) -> str:
        return b64encode(bytes(self.public))


_PROBE = bytes(PrivateKey.generate())  # any clamped scalar sends every low-order point to zero


def public_key_from_b64(text: str) -> PublicKey:
    if len(text) > 64:
        raise SealingError("X25519 public key must be 32 bytes")
    raw = b64decode(text)
    if len(raw) != 32:
        raise SealingError("X25519 public key must be 32 bytes")
    if b64encode(raw) != text:  # one spelling per key: replay guards and key checks compare text
        raise SealingError("X25519 public key is not in canonical base64")
    try:
        bindings.crypto_scalarmult(_PROBE, raw)
    except NaclRuntimeError:
        raise SealingError("X25519 public key is a low-order point") from None
    return PublicKey(raw)


class Channel:
    """One precomputed NaCl box between a local private key and a peer public key."""

    __slots__ = ("_box", "sender_public_b64")

    def __init__(self, local: KeyPair, peer: PublicKey) -> None:
        try:
            self._box = Box(local.private, peer)
        except NaclRuntimeError:
            raise SealingError("X25519 public key is a low-order point") from None
        self.sender_public_b64 = local.public_b64

    def seal(self, plaintext: bytes) -> dict[str, str]:
        sealed = self._box.encrypt(plaintext)  # nonce ‖ ciphertext, random nonce
        return {"ephemeral_public_key": self.sender_public_b64, "ciphertext": b64encode(bytes(sealed))}

    def open(self, ciphertext_b64: str) -> bytes:
        raw = b64decode(ciphertext_b64)
        if len(raw) < Box.NONCE_SIZE + 16:
            raise SealingError("ciphertext too short")
        try:
            return bytes(self._box.decrypt(raw))
        except CryptoError:
            raise SealingError("envelope failed authentication") from None


Direction = Literal["request", "response", "error"]
Role = Literal["requester", "provider"]
SEAL_CONTEXT = b"darkbloom/seal/v2\n"
_NONCE = bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
_TAG = bindings.crypto_aead_xchacha20poly1305_ietf_ABYTES
_MAX_REQUEST_ID = 128


def associated_data(direction: Direction, request_id: str, seq: int) -> bytes:
    """What every sealed message is bound to, besides its key (docs/security.md "Sealing")."""
    if len(request_id) > _MAX_REQUEST_ID or not 0 <= seq < 2**63:
        raise SealingError("request id or sequence number out of range")
    return (SEAL_CONTEXT + direction.encode() + b"\n" + request_id.encode("utf-8", "replace")
            + b"\n" + seq.to_bytes(8, "big"))


class SessionChannel:
    """The sealed session of one inference request (see the module docstring).

    The requester's key is ephemeral (one per attempt, or per consumer request); the provider's is
    its per-process key. Requests flow requester → provider under one key, responses and errors
    provider → requester under the other; a side can seal only its own direction.
    """

    __slots__ = ("_open_keys", "_role", "_seal_key", "sender_public_b64")

    def __init__(self, local: KeyPair, peer: PublicKey, role: Role) -> None:
        try:
            shared = bindings.crypto_scalarmult(bytes(local.private), bytes(peer))
        except NaclRuntimeError:
            raise SealingError("X25519 public key is a low-order point") from None
        requester, provider = ((bytes(local.public), bytes(peer)) if role == "requester"
                               else (bytes(peer), bytes(local.public)))
        transcript = requester + provider

        def derive(person: bytes) -> bytes:
            return bytes(blake2b(transcript, key=shared, person=person, digest_size=32,
                                 encoder=RawEncoder))

        to_provider, to_requester = derive(b"darkbloom-req-v2"), derive(b"darkbloom-rsp-v2")
        self._role = role
        self._seal_key = to_provider if role == "requester" else to_requester
        self._open_keys = {"request": to_provider} if role == "provider" else \
            {"response": to_requester, "error": to_requester}
        self.sender_public_b64 = local.public_b64

    def _sealable(self, direction: Direction) -> bool:
        return (direction == "request") == (self._role == "requester")

    def seal(self, direction: Direction, request_id: str, seq: int, plaintext: bytes) -> str:
        if not self._sealable(direction):
            raise SealingError(f"a {self._role} cannot seal a {direction}")
        nonce = os.urandom(_NONCE)
        sealed = bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
            plaintext, associated_data(direction, request_id, seq), nonce, self._seal_key)
        return b64encode(nonce + sealed)

    def open(self, direction: Direction, request_id: str, seq: int, ciphertext_b64: str) -> bytes:
        key = self._open_keys.get(direction)
        if key is None:
            raise SealingError(f"a {self._role} does not open a {direction}")
        raw = b64decode(ciphertext_b64)
        if len(raw) < _NONCE + _TAG:
            raise SealingError("ciphertext too short")
        try:
            return bytes(bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                raw[_NONCE:], associated_data(direction, request_id, seq), raw[:_NONCE], key))
        except CryptoError:
            raise SealingError("envelope failed authentication") from None
