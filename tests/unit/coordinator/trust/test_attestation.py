"""Attestation blob verification: exact signed bytes, key binding, freshness, bad input."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

from darkbloom.coordinator.trust.attestation import at_least, verify_blob
from darkbloom.crypto import KeyPair
from darkbloom.crypto.signing import IdentityKey, canonical_json
from darkbloom.protocol.frames import Hardware
from darkbloom.protocol.trust import attestation_message
from darkbloom.provider.attestation import build

ENC = KeyPair.generate().public_b64


def blob(identity: IdentityKey | None = None, **changes: Any) -> dict[str, Any]:
    identity = identity or IdentityKey.generate()
    made = build(identity, ENC, Hardware(chip_name="cpu"), "llama.cpp")
    if changes:
        inner = {**made["attestation"], **changes}
        raw = canonical_json(inner)
        made = {"attestation": inner, "attestation_raw": base64.b64encode(raw).decode(),
                "signature": identity.sign(attestation_message(raw))}
    return made


def test_valid_blob_is_self_signed() -> None:
    identity = IdentityKey.generate()
    verdict = verify_blob(blob(identity), ENC)
    assert verdict.level == "self_signed" and verdict.reason == ""
    assert verdict.identity_key == identity.public_b64


def test_the_signed_bytes_are_checked_not_the_display_copy() -> None:
    made = blob()
    made["attestation"]["chipName"] = "something else"  # display copy only: still valid
    assert verify_blob(made, ENC).level == "self_signed"
    tampered = dict(made, attestation_raw=base64.b64encode(
        base64.b64decode(made["attestation_raw"]).replace(b"cpu", b"gpu")).decode())
    assert verify_blob(tampered, ENC).reason == "attestation signature does not verify"


def test_failures_stay_at_none_with_a_reason() -> None:
    other = KeyPair.generate().public_b64
    cases = [
        (None, "no attestation"),
        ({"signature": "x"}, "attestation_raw and signature are required"),
        ({"attestation_raw": "!!", "signature": "x"}, "attestation blob is not base64 JSON with a publicKey"),
        ({"attestation_raw": "A" * 40000, "signature": "x"}, "attestation blob too large"),
        (dict(blob(), signature=IdentityKey.generate().sign(attestation_message(b"x"))),
         "attestation signature does not verify"),
        (blob(encryptionPublicKey=other), "attestation does not bind the registered X25519 key"),
        (blob(timestamp="yesterday"), "attestation timestamp is not RFC 3339 UTC"),
    ]
    for made, reason in cases:
        verdict = verify_blob(made, ENC)
        assert (verdict.level, verdict.reason) == ("none", reason)


def test_stale_or_future_blobs_are_refused() -> None:
    now = datetime.now(UTC)
    for offset in (timedelta(minutes=-11), timedelta(minutes=3)):
        stamp = (now + offset).strftime("%Y-%m-%dT%H:%M:%SZ")
        assert verify_blob(blob(timestamp=stamp), ENC).level == "none"


def test_levels_order() -> None:
    assert at_least("self_signed", "none") and at_least("hardware", "self_signed")
    assert not at_least("none", "self_signed") and not at_least("bogus", "none")


def test_a_blob_signed_without_the_attestation_context_is_refused() -> None:
    """The bytes alone are not enough: a signature over them in any other domain (or none)
    must not make a blob, so no challenge or receipt signature can be replayed as one."""
    from darkbloom.crypto.signing import CHALLENGE_CONTEXT, RECEIPT_CONTEXT

    identity = IdentityKey.generate()
    made = build(identity, ENC, Hardware(chip_name="cpu"), "llama.cpp")
    raw = base64.b64decode(made["attestation_raw"])
    for context in (CHALLENGE_CONTEXT, RECEIPT_CONTEXT):
        forged = dict(made, signature=identity.sign(context + raw))
        assert verify_blob(forged, ENC).reason == "attestation signature does not verify"
