"""NaCl box sealing (X25519 + XSalsa20-Poly1305) in the envelope shape of protocol.md §6.

``ciphertext`` is base64(nonce24 ‖ box); ``ephemeral_public_key`` is the *sender's* public key
(for a provider's reply that is its static key: the reference's misnomer, kept on purpose).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from nacl.exceptions import CryptoError
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


def public_key_from_b64(text: str) -> PublicKey:
    raw = b64decode(text)
    if len(raw) != 32:
        raise SealingError("X25519 public key must be 32 bytes")
    return PublicKey(raw)


class Channel:
    """One precomputed box between a local private key and a peer public key.

    Precomputing the shared key once per request keeps per-chunk sealing to one XSalsa20-Poly1305
    pass (protocol.md §6: a fresh 24-byte random nonce per message).
    """

    __slots__ = ("_box", "sender_public_b64")

    def __init__(self, local: KeyPair, peer: PublicKey) -> None:
        self._box = Box(local.private, peer)
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
