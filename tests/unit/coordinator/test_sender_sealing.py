"""A sender-sealed envelope that cannot be opened is a 400 naming why, whatever its bytes
(found by tests/e2e/test_fuzz_routes.py: a deeply nested envelope was a 500)."""

from __future__ import annotations

import json

import pytest

from darkbloom.coordinator.sender_sealing import key_id, open_envelope
from darkbloom.crypto import KeyPair
from darkbloom.errors import InvalidRequest

KEYS = KeyPair.generate()
KID = key_id(KEYS)


def _envelope(**fields: object) -> bytes:
    return json.dumps({"kid": KID, "ephemeral_public_key": KeyPair.generate().public_b64,
                       "ciphertext": "A" * 64, **fields}).encode()


@pytest.mark.parametrize(("raw", "code"), [
    (b'{"kid":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "invalid_sealed_envelope"),
    (b'{"a":' * 5_000 + b"1" + b"}" * 5_000, "invalid_sealed_envelope"),
    (b'{"kid": "\xff"}', "invalid_sealed_envelope"),
    (b"[1]", "invalid_sealed_envelope"),
    (_envelope(ciphertext=5), "invalid_sealed_envelope"),
    (_envelope(kid="0" * 16), "kid_mismatch"),
    (_envelope(ephemeral_public_key="A" * 43 + "="), "decryption_failed"),  # all-zero key
    (_envelope(ephemeral_public_key="\u00e9" * 44), "decryption_failed"),
    (_envelope(ciphertext="\ud800"), "invalid_sealed_envelope"),  # a lone surrogate
])
def test_unopenable_envelopes_are_400s(raw: bytes, code: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        open_envelope(raw, KEYS)
    assert info.value.status_code == 400 and info.value.code == code
