"""Hardware trust: an X.509 chain from the provider's identity key to an operator root CA
(trust.md §9). "The operator's CA vouches for this machine and key": an organisational claim.

Checked by hand, so every rule is visible: each certificate is within its validity window and
signed by the next (the last by a configured root); every issuer is a CA allowed to sign
certificates; the leaf may sign and holds exactly the attested identity key; a serial in the leaf
agrees with the blob's.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from darkbloom.crypto.signing import public_key_from_raw

MAX_CHAIN = 5


def load_roots(paths: list[Path]) -> list[x509.Certificate]:
    roots: list[x509.Certificate] = []
    for path in paths:
        roots += x509.load_pem_x509_certificates(path.read_bytes())
    return roots


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        if not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return False
    except x509.ExtensionNotFound:
        return False
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    except x509.ExtensionNotFound:
        return True


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def check_chain(chain_b64: list[str] | None, identity_key_b64: str, blob_serial: str | None,
                roots: list[x509.Certificate], now: datetime | None = None) -> str | None:
    """None when the chain earns ``hardware``; otherwise the reason it does not."""
    if not chain_b64:
        return "no certificate chain"
    if not roots:
        return "no root CA configured"
    if len(chain_b64) > MAX_CHAIN:
        return "certificate chain too long"
    try:
        chain = [x509.load_der_x509_certificate(base64.b64decode(c, validate=True)) for c in chain_b64]
    except (binascii.Error, ValueError):
        return "certificate chain is not base64 DER"
    now = now or datetime.now(UTC)
    for cert in chain:
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return "a certificate in the chain is expired or not yet valid"
    for cert, issuer in pairwise(chain):
        if not _is_ca(issuer) or not _issued_by(cert, issuer):
            return "the chain is broken (an issuer is not a CA or did not sign the next certificate)"
    top = chain[-1]
    if not any(_is_ca(root) and (top == root or _issued_by(top, root)) for root in roots):
        return "the chain does not lead to a configured root CA"
    leaf = chain[0]
    try:
        if not leaf.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature:
            return "the leaf certificate may not sign"
    except x509.ExtensionNotFound:
        pass
    identity = public_key_from_raw(identity_key_b64)
    leaf_key = leaf.public_key()
    if identity is None or not isinstance(leaf_key, ec.EllipticCurvePublicKey) \
            or leaf_key.public_numbers() != identity.public_numbers():
        return "the leaf certificate is for another key"
    serials = [a.value for a in leaf.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)]
    if serials and blob_serial and blob_serial not in serials:
        return "the leaf certificate names another serial number"
    return None
