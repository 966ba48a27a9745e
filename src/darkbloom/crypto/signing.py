"""P-256 identity keys: sign and verify (trust.md §1: ECDSA over SHA-256, DER, base64).

Public keys travel as raw X‖Y (64 bytes, base64), the reference's form; the 65-byte
uncompressed SEC1 form (``04`` prefix) is accepted too.

Domain separation: one identity key signs several kinds of message, so every signed message
starts with its own context string (``darkbloom/<kind>/v2`` and a newline) and both ``sign`` and
``verify`` refuse bytes without one of them. A signature made for one kind can never verify as
another, so no answer the provider gives (a challenge, a receipt) can be replayed as an
attestation. The exact byte layouts are in docs/security.md.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

ATTESTATION_CONTEXT = b"darkbloom/attestation/v2\n"
CHALLENGE_CONTEXT = b"darkbloom/challenge/v2\n"
STATUS_CONTEXT = b"darkbloom/status/v2\n"
RECEIPT_CONTEXT = b"darkbloom/receipt/v2\n"
CONTEXTS = (ATTESTATION_CONTEXT, CHALLENGE_CONTEXT, STATUS_CONTEXT, RECEIPT_CONTEXT)


class UnscopedMessage(ValueError):
    """Bytes to sign or verify that do not start with a known context string."""


def _scoped(data: bytes) -> bytes:
    if not data.startswith(CONTEXTS):
        raise UnscopedMessage("signed messages must start with a darkbloom context string")
    return data


def canonical_json(obj: Any) -> bytes:
    """The one encoding anything signed uses: sorted keys, no whitespace, ASCII."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _raw_public(key: ec.EllipticCurvePublicKey) -> bytes:
    point = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return point[1:]


def public_key_from_raw(text: str) -> ec.EllipticCurvePublicKey | None:
    if len(text) > 128:
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) == 64:
        raw = b"\x04" + raw
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    except ValueError:
        return None


def is_canonical_key(text: str) -> bool:
    """``text`` is a P-256 key in its one wire spelling: canonical base64 of raw X‖Y. Keys are
    compared as text (sessions, quarantine, receipts), so no other spelling may enter."""
    key = public_key_from_raw(text)
    return key is not None and base64.b64encode(_raw_public(key)).decode("ascii") == text


def key_id(public_key_b64: str) -> str:
    """trust.md §9: the first 16 hex chars of SHA-256 of the raw public key."""
    raw = base64.b64decode(public_key_b64)
    return hashlib.sha256(raw[-64:]).hexdigest()[:16]


def verify(public_key_b64: str, data: bytes, signature_b64: str) -> bool:
    """True only for a valid signature over ``data``, which must carry a context string."""
    if not data.startswith(CONTEXTS):
        return False
    key = public_key_from_raw(public_key_b64)
    if key is None or len(signature_b64) > 200:
        return False
    try:
        key.verify(base64.b64decode(signature_b64, validate=True), data, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


class IdentityKey:
    """A provider's long-lived signing key."""

    def __init__(self, private: ec.EllipticCurvePrivateKey) -> None:
        self._private = private
        self.public_b64 = base64.b64encode(_raw_public(private.public_key())).decode("ascii")

    @property
    def key_id(self) -> str:
        return key_id(self.public_b64)

    def matches(self, key: object) -> bool:
        return isinstance(key, ec.EllipticCurvePublicKey) and \
            key.public_numbers() == self._private.public_key().public_numbers()

    @classmethod
    def generate(cls) -> IdentityKey:
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def load_or_create(cls, path: Path) -> IdentityKey:
        """Reuse the key across restarts; create it (mode 0600) on first start."""
        if path.is_file():
            loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(loaded, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{path} does not hold an EC private key")
            return cls(loaded)
        key = cls.generate()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        pem = key._private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        return key

    def csr_pem(self, common_name: str, serial: str | None = None) -> bytes:
        """A certificate signing request for this key, for the operator's CA (trust.md §9)."""
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        names = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        if serial:
            names.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial))
        request = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(names)) \
            .sign(self._private, hashes.SHA256())
        return request.public_bytes(serialization.Encoding.PEM)

    def sign(self, data: bytes) -> str:
        """Sign a context-scoped message; raises UnscopedMessage for anything else."""
        signature = self._private.sign(_scoped(data), ec.ECDSA(hashes.SHA256()))
        return base64.b64encode(signature).decode("ascii")
