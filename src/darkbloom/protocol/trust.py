"""Trust wire contracts (trust.md §2, §3, §5): levels, the attestation blob and the receipt.

Both sides and the consumer's tools (``darkbloom verify``, the blind helper) parse these models,
so a rule such as "the blob is signed over context + exact bytes" exists once. What is signed,
byte for byte, is written out in docs/security.md "Signed messages".
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from darkbloom.crypto.signing import (
    ATTESTATION_CONTEXT,
    RECEIPT_CONTEXT,
    canonical_json,
    is_canonical_key,
    verify,
)

TrustLevel = Literal["none", "self_signed", "hardware"]
LEVELS: tuple[TrustLevel, ...] = ("none", "self_signed", "hardware")
RECEIPT_VERSION = 2
MAX_BLOB_BYTES = 16 * 1024
_MAX_SIGNATURE = 200  # base64 of a DER P-256 signature is at most 96 characters

Hex64 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Short = Annotated[str, StringConstraints(max_length=256)]
Signature = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/=]{1,200}$")]
Count = Annotated[int, Field(ge=0, le=2**31 - 1)]


def at_least(level: str, minimum: str) -> bool:
    rank: dict[str, int] = {name: i for i, name in enumerate(LEVELS)}
    return rank.get(level, -1) >= rank.get(minimum, len(LEVELS))


class InvalidAttestation(ValueError):
    """The blob does not verify; ``str(exc)`` says why, without secrets."""


class AttestationBlob(BaseModel):
    """The signed inner object (trust.md §2, §9), camelCase as in the reference. Unknown fields
    are kept: they are covered by the signature like the rest. Strict: a verifier reads the
    JSON types as signed (no "true" or 1 for a bool)."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True)
    publicKey: Short
    encryptionPublicKey: Short | None = None
    timestamp: Short = ""
    serialNumber: Short | None = None
    platform: Short | None = None
    coreDumpsDisabled: bool | None = None
    ptraceScope: int | None = None
    kernelLockdown: Short | None = None
    secureBootEnabled: bool | None = None

    def posture(self) -> dict[str, object]:
        """The posture fields in the snake_case names challenge answers use."""
        fields = {"platform": self.platform, "core_dumps_disabled": self.coreDumpsDisabled,
                  "ptrace_scope": self.ptraceScope, "kernel_lockdown": self.kernelLockdown,
                  "secure_boot_enabled": self.secureBootEnabled}
        return {k: v for k, v in fields.items() if v is not None}


def attestation_message(raw: bytes) -> bytes:
    return ATTESTATION_CONTEXT + raw


def open_attestation(raw_b64: object, signature: object) -> AttestationBlob:
    """The blob from its exact signed bytes, once its signature by its own key verifies."""
    if not isinstance(raw_b64, str) or not isinstance(signature, str):
        raise InvalidAttestation("attestation_raw and signature are required")
    if len(raw_b64) > MAX_BLOB_BYTES * 4 // 3 + 4 or len(signature) > _MAX_SIGNATURE:
        raise InvalidAttestation("attestation blob too large")
    try:
        raw = base64.b64decode(raw_b64, validate=True)
        parsed = json.loads(raw)
        blob = AttestationBlob.model_validate(parsed)
        canonical = canonical_json(parsed) == raw
    except (binascii.Error, ValueError, RecursionError):
        raise InvalidAttestation("attestation blob is not base64 JSON with a publicKey") from None
    if not canonical:  # duplicate keys, other spellings: verifiers' parsers could read it apart
        raise InvalidAttestation("attestation blob is not canonical JSON")
    if not is_canonical_key(blob.publicKey):
        raise InvalidAttestation("attestation publicKey is not a raw P-256 key in canonical base64")
    if not verify(blob.publicKey, attestation_message(raw), signature):
        raise InvalidAttestation("attestation signature does not verify")
    return blob


class Receipt(BaseModel):
    """What a provider signs for every response (trust.md §5, our design; ``v`` 2)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    v: Literal[2] = 2
    request_id: Short
    model: Short
    endpoint: Short
    provider_key: Short
    encryption_key: Short
    weight_hash: Short | None
    quantization: Short | None
    request_sha256: Hex64
    response_sha256: Hex64
    prompt_tokens: Count
    completion_tokens: Count
    created: Annotated[int, Field(ge=0, le=2**40)]
    # Media (media.md): the decoded audio's length, or the images made; absent from text
    # receipts (and from their signed bytes), so those are unchanged.
    audio_ms: Annotated[int, Field(ge=0, le=2**40)] | None = None
    images: Count | None = None

    def canonical(self) -> bytes:
        """Canonical JSON of every field (the media ones only when set): what headers and
        records carry."""
        unset = {name for name in _MEDIA_FIELDS if getattr(self, name) is None}
        return canonical_json(self.model_dump(exclude=unset))

    def message(self) -> bytes:
        """The signed bytes: context string + the canonical JSON."""
        return RECEIPT_CONTEXT + self.canonical()


_MEDIA_FIELDS = ("audio_ms", "images")


class SignedReceipt(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    receipt: Receipt
    signature: Signature

    def valid(self) -> bool:
        return verify(self.receipt.provider_key, self.receipt.message(), self.signature)

    def json_text(self) -> str:
        receipt = json.loads(self.receipt.canonical())  # unset media fields stay out, as signed
        return json.dumps({"receipt": receipt, "signature": self.signature}, separators=(",", ":"),
                          sort_keys=True)

    @classmethod
    def parse(cls, obj: object) -> SignedReceipt | None:
        """A receipt as received (a dict, or JSON text), or None when it is not one."""
        try:
            if isinstance(obj, str | bytes):
                return cls.model_validate_json(obj)
            return cls.model_validate(obj)
        except (ValidationError, ValueError):
            return None
