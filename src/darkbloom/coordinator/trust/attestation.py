"""Verify a provider's attestation blob and decide its trust level (trust.md §2, §3, §9).

Every check reads the exact signed bytes (``attestation_raw``), never the display copy, through
``protocol.trust.open_attestation`` (the one blob parser). Any failure leaves the provider at
``none`` with a reason for the log; the connection stays up.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from darkbloom.crypto.challenge import TIMESTAMP_FORMAT
from darkbloom.protocol.trust import (
    LEVELS,
    InvalidAttestation,
    TrustLevel,
    at_least,
    open_attestation,
)

__all__ = ["LEVELS", "TrustLevel", "Verdict", "at_least", "verify_blob"]

MAX_AGE = timedelta(minutes=10)
MAX_SKEW = timedelta(minutes=2)


@dataclass(frozen=True, slots=True)
class Verdict:
    level: TrustLevel
    reason: str = ""
    identity_key: str | None = None
    serial: str | None = None
    raw_b64: str | None = None
    signature: str | None = None
    posture: dict[str, object] | None = None  # snake_case, as challenge answers report it


def verify_blob(blob: dict[str, Any] | None, encryption_key_b64: str,
                now: datetime | None = None) -> Verdict:
    if not blob:
        return Verdict("none", "no attestation")
    raw_b64, signature = blob.get("attestation_raw"), blob.get("signature")
    try:
        inner = open_attestation(raw_b64, signature)
    except InvalidAttestation as exc:
        return Verdict("none", str(exc))
    if inner.encryptionPublicKey != encryption_key_b64:
        return Verdict("none", "attestation does not bind the registered X25519 key")
    try:
        stamp = datetime.strptime(inner.timestamp, TIMESTAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return Verdict("none", "attestation timestamp is not RFC 3339 UTC")
    now = now or datetime.now(UTC)
    if stamp < now - MAX_AGE or stamp > now + MAX_SKEW:
        return Verdict("none", "attestation timestamp is stale or in the future")
    assert isinstance(raw_b64, str) and isinstance(signature, str)
    return Verdict("self_signed", "", inner.publicKey, inner.serialNumber, raw_b64, signature,
                   inner.posture())
