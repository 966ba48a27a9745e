"""Hardware trust: an X.509 chain from the provider's identity key to an operator root CA
(trust.md §9). "The operator's CA vouches for this machine and key": an organisational claim.

Path building and the X.509 rules (signatures, validity, basicConstraints and path length, key
usage, name constraints, unknown critical extensions) are `cryptography.x509.verification`'s, with
our own extension policies: the leaf must be ``CA:FALSE``, may sign, and carry the darkbloom EKU, so
a certificate the same CA issued for a web server or a sub-CA cannot pass as a provider. On top come
the domain rules: the leaf holds exactly the attested identity key, and its serial agrees with the
blob's. Every refusal is a short stable reason; nothing here raises on hostile input.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from darkbloom.crypto.signing import public_key_from_raw

log = logging.getLogger(__name__)

MAX_CHAIN = 5  # certificates a provider may present, leaf included
MAX_CERT_BYTES = 16 * 1024  # DER, per certificate
MAX_REASON = 160

# "darkbloom provider identity": the leaf's extendedKeyUsage must list it (docs/security.md, "Running
# your own CA"). An OID under the UUID arc 2.25 (ITU-T X.667) needs no registration; the integer is
# a random UUID drawn once and fixed forever.
DARKBLOOM_PROVIDER_EKU = x509.ObjectIdentifier("2.25.66914059059933501888508507204058699280")


LEAF_IS_CA, LEAF_MAY_NOT_SIGN = "leaf is a CA", "leaf may not sign"
LEAF_LACKS_EKU, ISSUER_EKU = "leaf lacks the darkbloom EKU", "an issuer's EKU excludes darkbloom"


class _Refused(Exception):
    """Raised by our extension validators; the verifier carries its text in its own error."""


def _leaf_basic_constraints(_: Policy, __: x509.Certificate, value: x509.BasicConstraints) -> None:
    if value.ca:
        raise _Refused(LEAF_IS_CA)


def _leaf_key_usage(_: Policy, __: x509.Certificate, value: x509.KeyUsage) -> None:
    if not value.digital_signature:
        raise _Refused(LEAF_MAY_NOT_SIGN)


def _leaf_eku(_: Policy, __: x509.Certificate, value: x509.ExtendedKeyUsage) -> None:
    if DARKBLOOM_PROVIDER_EKU not in value:
        raise _Refused(LEAF_LACKS_EKU)


def _issuer_eku(_: Policy, __: x509.Certificate, value: x509.ExtendedKeyUsage | None) -> None:
    """An EKU on a CA restricts what it may vouch for: it must allow ours (or anything)."""
    if value is not None and DARKBLOOM_PROVIDER_EKU not in value \
            and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in value:
        raise _Refused(ISSUER_EKU)


_CA_POLICY = ExtensionPolicy.webpki_defaults_ca() \
    .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _issuer_eku)
# webpki's end-entity defaults (authorityKeyIdentifier required, no unknown critical extensions)
# without its server/client rules: a provider has no DNS name and no TLS role.
_EE_POLICY = ExtensionPolicy.webpki_defaults_ee() \
    .may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None) \
    .require_present(x509.BasicConstraints, Criticality.AGNOSTIC, _leaf_basic_constraints) \
    .require_present(x509.KeyUsage, Criticality.AGNOSTIC, _leaf_key_usage) \
    .require_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _leaf_eku)

# The verifier's own messages, mapped to our stable reasons (first match wins).
_VERIFIER_REASONS = (
    ("path length constraint violated", "path length exceeded"),
    ("unaccounted-for critical extensions", "unknown critical extension"),
    ("name constraint matched SAN", "name constraints violated"),
    ("name constraints matched SAN", "name constraints violated"),
    ("error parsing", "malformed certificate"),
)
# A required extension the leaf (or, under "candidates exhausted", an issuer) does not carry.
_MISSING = re.compile(r"^validation failed: (candidates exhausted: )?invalid extension: ([0-9.]+): "
                      r"Certificate is missing required extension")
_REQUIRED = {oid.dotted_string: name for oid, name in (
    (ExtensionOID.BASIC_CONSTRAINTS, "basicConstraints"), (ExtensionOID.KEY_USAGE, "keyUsage"),
    (ExtensionOID.EXTENDED_KEY_USAGE, "the darkbloom EKU"),
    (ExtensionOID.AUTHORITY_KEY_IDENTIFIER, "authorityKeyIdentifier"))}
_REFUSED = re.compile(r"validator failed: _Refused: (.+?)(?: \(encountered processing|$)")
_OURS = {LEAF_IS_CA, LEAF_MAY_NOT_SIGN, LEAF_LACKS_EKU, ISSUER_EKU}


def load_roots(paths: list[Path]) -> list[x509.Certificate]:
    """Every certificate in the PEM files. An expired root is kept (so chains under it are refused
    as "expired root", not as unknown) and named in a warning: it grants nothing until replaced."""
    roots: list[x509.Certificate] = []
    for path in paths:
        roots += x509.load_pem_x509_certificates(path.read_bytes())
    now = datetime.now(UTC)
    for root in roots:
        if not root.not_valid_before_utc <= now <= root.not_valid_after_utc:
            log.warning("root CA %s in %s is outside its validity window (until %s): it grants no trust",
                        root.subject.rfc4514_string()[:200], ", ".join(map(str, paths)),
                        root.not_valid_after_utc.isoformat())
    return roots


def _decode(chain_b64: object) -> list[x509.Certificate] | str:
    if not isinstance(chain_b64, list) or not chain_b64:
        return "no certificate chain"
    if len(chain_b64) > MAX_CHAIN:
        return "certificate chain too long"
    chain = []
    for text in chain_b64:
        if not isinstance(text, str) or len(text) > (MAX_CERT_BYTES + 2) // 3 * 4:
            return "malformed certificate"
        try:
            cert = x509.load_der_x509_certificate(base64.b64decode(text, validate=True))
            cert.extensions  # noqa: B018 -- parse them all now: a malformed one is a refusal here
            cert.public_key()
        except (binascii.Error, ValueError, TypeError, UnsupportedAlgorithm):
            return "malformed certificate"
        chain.append(cert)
    return chain


def _validity(chain: list[x509.Certificate], roots: Sequence[x509.Certificate], now: datetime) -> str | None:
    """Which certificate is outside its window: leaf, a presented intermediate, or a root one names."""
    issuers = {c.issuer for c in chain}
    candidates = [("leaf", chain[0])] + [("intermediate", c) for c in chain[1:]] \
        + [("root", r) for r in roots if r.subject in issuers]
    for role, cert in candidates:
        if now > cert.not_valid_after_utc:
            return f"expired {role}"
        if now < cert.not_valid_before_utc:
            return f"{role} not yet valid"
    return None


def _no_path(chain: list[x509.Certificate], roots: Sequence[x509.Certificate]) -> str:
    """No path at all: a presented certificate names an issuer that is neither presented nor a root."""
    subjects = {c.subject for c in chain[1:]}
    top = chain[0]
    while top.issuer in subjects and top.issuer != top.subject:
        subjects.discard(top.issuer)
        top = next(c for c in chain[1:] if c.subject == top.issuer)
    if top is chain[0] and not any(r.subject == top.issuer for r in roots):
        return "missing intermediate"
    return "unknown root"


def _reason(error: VerificationError, chain: list[x509.Certificate], roots: Sequence[x509.Certificate],
            now: datetime) -> str:
    message = str(error)
    if (found := _REFUSED.search(message)) and found[1] in _OURS:
        return found[1]
    if "not valid at validation time" in message:
        return _validity(chain, roots, now) or "a certificate is outside its validity window"
    if "no interior errors" in message:
        return _no_path(chain, roots)
    if (missing := _MISSING.match(message)) and missing[2] in _REQUIRED:
        return f"{'an issuer' if missing[1] else 'leaf'} lacks {_REQUIRED[missing[2]]}"
    for needle, reason in _VERIFIER_REASONS:
        if needle in message:
            return reason
    short = message.removeprefix("validation failed: ").split(" (encountered processing")[0]
    return "".join(c if c.isprintable() else "?" for c in f"chain does not verify: {short}"[:MAX_REASON])


def check_chain(chain_b64: list[str] | None, identity_key_b64: str, blob_serial: str | None,
                roots: list[x509.Certificate], now: datetime | None = None) -> str | None:
    """None when the chain (leaf first, base64 DER) earns ``hardware``; otherwise the reason."""
    if not roots:
        return "no root CA configured"
    decoded = _decode(chain_b64)
    if isinstance(decoded, str):
        return decoded
    leaf, now = decoded[0], now or datetime.now(UTC)
    verifier = PolicyBuilder().store(Store(roots)).time(now).max_chain_depth(MAX_CHAIN) \
        .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY).build_client_verifier()
    try:
        verifier.verify(leaf, decoded[1:])
    except VerificationError as error:
        return _reason(error, decoded, roots, now)
    identity = public_key_from_raw(identity_key_b64) if isinstance(identity_key_b64, str) else None
    leaf_key = leaf.public_key()
    if identity is None or not isinstance(leaf_key, ec.EllipticCurvePublicKey) \
            or leaf_key.public_numbers() != identity.public_numbers():
        return "key mismatch"
    serials = [a.value for a in leaf.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)]
    if serials and isinstance(blob_serial, str) and blob_serial and blob_serial not in serials:
        return "serial mismatch"
    return None
