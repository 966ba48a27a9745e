"""P-256 identity keys: persistence, signatures, public key forms."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

from darkbloom.crypto.signing import IdentityKey, canonical_json, public_key_from_raw, verify


def test_key_is_created_0600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "identity.pem"
    first = IdentityKey.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert IdentityKey.load_or_create(path).public_b64 == first.public_b64


def test_sign_and_verify() -> None:
    key = IdentityKey.generate()
    assert len(base64.b64decode(key.public_b64)) == 64
    signature = key.sign(b"hello")
    assert verify(key.public_b64, b"hello", signature)
    assert not verify(key.public_b64, b"hellO", signature)
    assert not verify(IdentityKey.generate().public_b64, b"hello", signature)
    assert not verify(key.public_b64, b"hello", "not base64!")
    assert not verify("AAAA", b"hello", signature)


def test_uncompressed_point_form_accepted() -> None:
    key = IdentityKey.generate()
    sec1 = base64.b64encode(b"\x04" + base64.b64decode(key.public_b64)).decode()
    assert public_key_from_raw(sec1) is not None
    assert verify(sec1, b"x", key.sign(b"x"))


def test_canonical_json_is_sorted_compact_ascii() -> None:
    assert canonical_json({"b": 1, "a": "é"}) == b'{"a":"\\u00e9","b":1}'
