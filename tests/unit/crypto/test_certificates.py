"""Hardware trust: chains from the identity key to a configured root, and every way to fail."""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from darkbloom.crypto.certificates import check_chain
from tests.ca import CA


def _b64(*certs: object) -> list[str]:
    return [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in certs]  # type: ignore[attr-defined]


def _identity() -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    raw = key.public_key().public_bytes(serialization.Encoding.X962,
                                        serialization.PublicFormat.UncompressedPoint)[1:]
    return key, base64.b64encode(raw).decode()


def test_good_chain_via_intermediate() -> None:
    root = CA()
    inter = root.intermediate()
    key, raw = _identity()
    leaf = inter.leaf(key.public_key(), serial="SN1")
    assert check_chain(_b64(leaf, inter.cert), raw, "SN1", [root.cert]) is None
    assert check_chain(_b64(leaf, inter.cert, root.cert), raw, None, [root.cert]) is None


def test_failures() -> None:
    root, other = CA(), CA("Other Root")
    inter = root.intermediate()
    key, raw = _identity()
    _, other_raw = _identity()
    leaf = inter.leaf(key.public_key(), serial="SN1")
    cases = {
        "unknown root": check_chain(_b64(leaf, inter.cert), raw, None, [other.cert]),
        "missing intermediate": check_chain(_b64(leaf), raw, None, [root.cert]),
        "expired leaf": check_chain(_b64(inter.leaf(key.public_key(), expired=True), inter.cert),
                                    raw, None, [root.cert]),
        "key mismatch": check_chain(_b64(leaf, inter.cert), other_raw, None, [root.cert]),
        "serial mismatch": check_chain(_b64(leaf, inter.cert), raw, "SN2", [root.cert]),
        "no roots": check_chain(_b64(leaf, inter.cert), raw, None, []),
        "no chain": check_chain([], raw, None, [root.cert]),
        "garbage": check_chain(["not base64!"], raw, None, [root.cert]),
        "leaf as issuer": check_chain(_b64(inter.leaf(key.public_key()), leaf), raw, None, [root.cert]),
    }
    for case, reason in cases.items():
        assert reason is not None, case
