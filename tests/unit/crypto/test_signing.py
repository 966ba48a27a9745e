"""P-256 identity keys: persistence, signatures, public key forms."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest

from darkbloom.crypto.challenge import challenge_bytes, challenge_problem, now_stamp, status_bytes
from darkbloom.crypto.signing import (
    ATTESTATION_CONTEXT,
    CHALLENGE_CONTEXT,
    CONTEXTS,
    RECEIPT_CONTEXT,
    IdentityKey,
    UnscopedMessage,
    canonical_json,
    public_key_from_raw,
    verify,
)

HELLO = CHALLENGE_CONTEXT + b"hello"


def test_key_is_created_0600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "identity.pem"
    first = IdentityKey.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert IdentityKey.load_or_create(path).public_b64 == first.public_b64


def test_sign_and_verify() -> None:
    key = IdentityKey.generate()
    assert len(base64.b64decode(key.public_b64)) == 64
    signature = key.sign(HELLO)
    assert verify(key.public_b64, HELLO, signature)
    assert not verify(key.public_b64, HELLO + b"!", signature)
    assert not verify(IdentityKey.generate().public_b64, HELLO, signature)
    assert not verify(key.public_b64, HELLO, "not base64!")
    assert not verify("AAAA", HELLO, signature)


def test_uncompressed_point_form_accepted() -> None:
    key = IdentityKey.generate()
    sec1 = base64.b64encode(b"\x04" + base64.b64decode(key.public_b64)).decode()
    assert public_key_from_raw(sec1) is not None
    assert verify(sec1, HELLO, key.sign(HELLO))


def test_canonical_json_is_sorted_compact_ascii() -> None:
    assert canonical_json({"b": 1, "a": "é"}) == b'{"a":"\\u00e9","b":1}'


def test_every_signed_message_needs_a_context_string() -> None:
    key = IdentityKey.generate()
    with pytest.raises(UnscopedMessage):
        key.sign(b'{"publicKey": "chosen by a coordinator"}')
    # A signature over unscoped bytes (made some other way) is never accepted either.
    assert not verify(key.public_b64, b"hello", key.sign(CHALLENGE_CONTEXT + b"hello"))
    assert len(set(CONTEXTS)) == len(CONTEXTS) and all(c.endswith(b"\n") for c in CONTEXTS)


@pytest.mark.parametrize("other", [ATTESTATION_CONTEXT, RECEIPT_CONTEXT])
def test_a_challenge_answer_never_verifies_as_another_kind(other: bytes) -> None:
    """The signing-oracle attack of issue 8: a nonce chosen to be an attestation blob."""
    key = IdentityKey.generate()
    payload = canonical_json({"publicKey": key.public_b64, "encryptionPublicKey": "evil"})
    answer = key.sign(challenge_bytes(payload.decode(), ""))
    assert not verify(key.public_b64, other + payload, answer)
    assert not verify(key.public_b64, other + payload + b"\n", answer)


@pytest.mark.parametrize(("nonce", "stamp", "problem"), [
    ("A" * 43 + "=", "now", None),
    ('{"publicKey":"x"}', "now", "nonce is not base64 of 32 bytes"),
    ("A" * 42 + "==", "now", "nonce is not base64 of 32 bytes"),  # 31 bytes
    ("A" * 44, "now", "nonce is not base64 of 32 bytes"),  # 33 bytes
    ("A" * 43 + "=", "", "timestamp is not RFC 3339 UTC"),
    ("A" * 43 + "=", "2026-01-01T00:00:00+00:00", "timestamp is not RFC 3339 UTC"),
    ("A" * 43 + "=", "2000-01-01T00:00:00Z", "timestamp is outside the allowed clock skew"),
])
def test_the_provider_answers_only_fresh_32_byte_nonces(nonce: str, stamp: str, problem: str | None) -> None:
    assert challenge_problem(nonce, now_stamp() if stamp == "now" else stamp) == problem


def test_status_bytes_are_scoped_and_canonical() -> None:
    expected = b'darkbloom/status/v2\n{"a":1,"nonce":"n","timestamp":"t"}'
    assert status_bytes("n", "t", {"b": None, "a": 1}) == expected
