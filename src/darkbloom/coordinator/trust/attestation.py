"""Verify a provider's attestation blob and decide its trust level (trust.md §2, §3, §9).

Every check reads the exact signed bytes (``attestation_raw``), never the display copy. Any
failure leaves the provider at ``none`` with a reason for the log; the connection stays up.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from darkbloom.crypto.signing import verify

TrustLevel = Literal["none", "self_signed", "hardware"]
LEVELS: tuple[TrustLevel, ...] = ("none", "self_signed", "hardware")
MAX_BLOB_BYTES = 16 * 1024
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


def at_least(level: str, minimum: str) -> bool:
    rank: dict[str, int] = {name: i for i, name in enumerate(LEVELS)}
    return rank.get(level, -1) >= rank.get(minimum, len(LEVELS))


def verify_blob(blob: dict[str, Any] | None, encryption_key_b64: str,
                now: datetime | None = None) -> Verdict:
    if not blob:
        return Verdict("none", "no attestation")
    raw_b64, signature = blob.get("attestation_raw"), blob.get("signature")
    if not isinstance(raw_b64, str) or not isinstance(signature, str):
        return Verdict("none", "attestation_raw and signature are required")
    if len(raw_b64) > MAX_BLOB_BYTES * 4 // 3 + 4:
        return Verdict("none", "attestation blob too large")
    try:
        raw = base64.b64decode(raw_b64, validate=True)
        inner = json.loads(raw)
    except (binascii.Error, ValueError):
        return Verdict("none", "attestation blob is not base64 JSON")
    if not isinstance(inner, dict) or not isinstance(inner.get("publicKey"), str):
        return Verdict("none", "attestation blob has no publicKey")
    key = inner["publicKey"]
    if not verify(key, raw, signature):
        return Verdict("none", "attestation signature does not verify")
    if inner.get("encryptionPublicKey") != encryption_key_b64:
        return Verdict("none", "attestation does not bind the registered X25519 key")
    try:
        stamp = datetime.strptime(str(inner.get("timestamp")), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return Verdict("none", "attestation timestamp is not RFC 3339 UTC")
    now = now or datetime.now(UTC)
    if stamp < now - MAX_AGE or stamp > now + MAX_SKEW:
        return Verdict("none", "attestation timestamp is stale or in the future")
    serial = inner.get("serialNumber") if isinstance(inner.get("serialNumber"), str) else None
    posture = {"core_dumps_disabled": inner.get("coreDumpsDisabled"),
               "ptrace_scope": inner.get("ptraceScope")}
    return Verdict("self_signed", "", key, serial, raw_b64, signature,
                   {k: v for k, v in posture.items() if v is not None})
