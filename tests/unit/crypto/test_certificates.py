"""Hardware trust: chains from the identity key to a configured root, and every way to fail, each
with the exact reason the coordinator logs and `darkbloom verify` prints."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from darkbloom.crypto.certificates import DARKBLOOM_PROVIDER_EKU, MAX_REASON, check_chain, load_roots
from tests.ca import CA


def _b64(*certs: x509.Certificate) -> list[str]:
    return [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in certs]


def _raw(key: ec.EllipticCurvePrivateKey) -> str:
    return base64.b64encode(key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)[1:]).decode()


@dataclass
class Pki:
    root: CA = field(default_factory=CA)
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    def __post_init__(self) -> None:
        self.inter = self.root.intermediate()

    def leaf(self, issuer: CA | None = None, **options: Any) -> x509.Certificate:
        return (issuer or self.inter).leaf(self.key.public_key(), **options)

    def check(self, *certs: x509.Certificate, roots: list[x509.Certificate] | None = None,
              serial: str | None = None, now: datetime | None = None) -> str | None:
        return check_chain(_b64(*certs), _raw(self.key), serial,
                           [self.root.cert] if roots is None else roots, now)


def _usage(**granted: bool) -> x509.KeyUsage:
    names = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
             "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
    return x509.KeyUsage(**{name: granted.get(name, False) for name in names})


def _dns_only(domain: str) -> x509.NameConstraints:
    return x509.NameConstraints(permitted_subtrees=[x509.DNSName(domain)], excluded_subtrees=None)


def _san(name: str) -> tuple[x509.ExtensionType, bool]:
    return x509.SubjectAlternativeName([x509.DNSName(name)]), False


def test_good_chain_via_intermediate() -> None:
    pki = Pki()
    leaf = pki.leaf(serial="SN1")
    assert pki.check(leaf, pki.inter.cert, serial="SN1") is None
    assert pki.check(leaf, pki.inter.cert, pki.root.cert) is None  # the root may be presented too


def test_good_chain_directly_under_the_root() -> None:
    pki = Pki()
    assert pki.check(pki.leaf(pki.root)) is None


def test_accepted_variants() -> None:
    """Constraints that the chain satisfies are no obstacle."""
    pki = Pki()
    darkbloom_only = pki.root.intermediate(extra=[(x509.ExtendedKeyUsage([DARKBLOOM_PROVIDER_EKU]), False)])
    any_eku = pki.root.intermediate(extra=[(x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE]), False)])
    constrained = CA(extra=[(_dns_only("example.com"), True)])
    under = constrained.intermediate()
    assert pki.check(pki.leaf(darkbloom_only), darkbloom_only.cert) is None
    assert pki.check(pki.leaf(any_eku), any_eku.cert) is None
    assert pki.check(pki.leaf(under, extra=[_san("a.example.com")]), under.cert,
                     roots=[constrained.cert]) is None
    assert pki.check(pki.leaf(under), under.cert, roots=[constrained.cert]) is None  # no SAN to constrain
    assert pki.check(pki.leaf(eku=[ExtendedKeyUsageOID.SERVER_AUTH, DARKBLOOM_PROVIDER_EKU]),
                     pki.inter.cert) is None


def test_expiry_is_judged_at_the_time_given() -> None:
    """The coordinator re-checks at every challenge: a leaf that expires since registering drops."""
    pki = Pki()
    chain = (pki.leaf(), pki.inter.cert)
    assert pki.check(*chain, now=datetime.now(UTC) + timedelta(days=60)) == "expired leaf"
    assert pki.check(*chain, now=datetime.now(UTC) - timedelta(days=10)) == "leaf not yet valid"


def _expired_root(pki: Pki) -> str | None:
    old = CA(expired=True)
    inter = old.intermediate()
    return pki.check(pki.leaf(inter), inter.cert, roots=[old.cert])


def _path_length(pki: Pki) -> str | None:
    first = pki.root.intermediate(path_length=0)
    second = first.intermediate("Second Intermediate")
    return pki.check(pki.leaf(second), second.cert, first.cert)


def _root_path_length(pki: Pki) -> str | None:
    root = CA(path_length=0)
    inter = root.intermediate()
    return pki.check(pki.leaf(inter), inter.cert, roots=[root.cert])


def _name_constraints(pki: Pki) -> str | None:
    root = CA(extra=[(_dns_only("example.com"), True)])
    inter = root.intermediate()
    return pki.check(pki.leaf(inter, extra=[_san("provider.evil.org")]), inter.cert, roots=[root.cert])


def _issuer_eku(pki: Pki) -> str | None:
    web = pki.root.intermediate(extra=[(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)])
    return pki.check(pki.leaf(web), web.cert)


def _raw_check(chain: object, pki: Pki) -> str | None:
    return check_chain(chain, _raw(pki.key), None, [pki.root.cert])  # type: ignore[arg-type]


UNKNOWN_CRITICAL = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")
GARBAGE_BASIC_CONSTRAINTS = x509.UnrecognizedExtension(ExtensionOID.BASIC_CONSTRAINTS, b"garbage")

REFUSALS: dict[str, tuple[str, Callable[[Pki], str | None]]] = {
    "unknown root": ("unknown root", lambda p: p.check(p.leaf(), p.inter.cert, roots=[CA("Other").cert])),
    "missing intermediate": ("missing intermediate", lambda p: p.check(p.leaf())),
    "expired leaf": ("expired leaf", lambda p: p.check(p.leaf(expired=True), p.inter.cert)),
    "expired intermediate": ("expired intermediate", lambda p: p.check(
        p.leaf(old := p.root.intermediate(expired=True)), old.cert)),
    "expired root": ("expired root", _expired_root),
    "leaf is a CA": ("leaf is a CA", lambda p: p.check(p.leaf(extra=[
        (x509.BasicConstraints(ca=True, path_length=None), True)]), p.inter.cert)),
    "leaf without basicConstraints": ("leaf lacks basicConstraints", lambda p: p.check(
        p.leaf(drop=[ExtensionOID.BASIC_CONSTRAINTS]), p.inter.cert)),
    "leaf without EKU": ("leaf lacks the darkbloom EKU", lambda p: p.check(p.leaf(eku=()), p.inter.cert)),
    "leaf with serverAuth only": ("leaf lacks the darkbloom EKU", lambda p: p.check(
        p.leaf(eku=[ExtendedKeyUsageOID.SERVER_AUTH]), p.inter.cert)),
    "leaf that may not sign": ("leaf may not sign", lambda p: p.check(
        p.leaf(extra=[(_usage(key_encipherment=True), True)]), p.inter.cert)),
    "issuer EKU for web servers": ("an issuer's EKU excludes darkbloom", _issuer_eku),
    "root without keyUsage": ("an issuer lacks keyUsage", lambda p: p.check(
        p.leaf(bare := CA(drop=[ExtensionOID.KEY_USAGE])), roots=[bare.cert])),
    "intermediate path length": ("path length exceeded", _path_length),
    "root path length": ("path length exceeded", _root_path_length),
    "unknown critical extension": ("unknown critical extension", lambda p: p.check(
        p.leaf(extra=[(UNKNOWN_CRITICAL, True)]), p.inter.cert)),
    "name constraints": ("name constraints violated", _name_constraints),
    "malformed basicConstraints": ("malformed certificate", lambda p: p.check(
        p.leaf(extra=[(GARBAGE_BASIC_CONSTRAINTS, True)]), p.inter.cert)),
    "not base64": ("malformed certificate", lambda p: _raw_check(["not base64!"], p)),
    "not DER": ("malformed certificate", lambda p: _raw_check([base64.b64encode(b"0\x03abc").decode()], p)),
    "not a string": ("malformed certificate", lambda p: _raw_check([{"der": 1}], p)),
    "oversized": ("malformed certificate", lambda p: _raw_check(["A" * 40_000], p)),
    "key mismatch": ("key mismatch", lambda p: check_chain(
        _b64(p.leaf(), p.inter.cert), _raw(ec.generate_private_key(ec.SECP256R1())), None, [p.root.cert])),
    "identity key garbage": ("key mismatch", lambda p: check_chain(
        _b64(p.leaf(), p.inter.cert), "%%%", None, [p.root.cert])),
    "serial mismatch": ("serial mismatch", lambda p: p.check(
        p.leaf(serial="SN1"), p.inter.cert, serial="SN2")),
    "no roots": ("no root CA configured", lambda p: p.check(p.leaf(), p.inter.cert, roots=[])),
    "no chain": ("no certificate chain", lambda p: _raw_check([], p)),
    "chain not a list": ("no certificate chain", lambda p: _raw_check("MIIB", p)),
    "too long": ("certificate chain too long", lambda p: p.check(*[p.leaf()] + [p.inter.cert] * 5)),
    "leaf presented as issuer": ("missing intermediate", lambda p: p.check(p.leaf(), p.leaf())),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_refusal(case: str) -> None:
    reason, attempt = REFUSALS[case]
    assert attempt(Pki()) == reason


def test_other_verifier_errors_are_reported_short() -> None:
    """What has no reason of its own still says why, in bounded length (here: a directoryName
    constraint, which the verifier does not support)."""
    pki = Pki()
    names = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example")])
    root = CA(extra=[(x509.NameConstraints(permitted_subtrees=[x509.DirectoryName(names)],
                                           excluded_subtrees=None), True)])
    inter = root.intermediate()
    reason = pki.check(pki.leaf(inter), inter.cert, roots=[root.cert])
    assert reason is not None and reason.startswith("chain does not verify: ")
    assert "directoryName" in reason and len(reason) <= MAX_REASON


def test_an_expired_configured_root_is_named_and_grants_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pki, old = Pki(), CA("Old Root", expired=True)
    (tmp_path / "roots.pem").write_bytes(old.pem() + pki.root.pem())
    with caplog.at_level(logging.WARNING, logger="darkbloom.crypto.certificates"):
        roots = load_roots([tmp_path / "roots.pem"])
    assert [r.message for r in caplog.records if "Old Root" in r.message]
    assert not [r.message for r in caplog.records if "Test Root" in r.message]
    inter = old.intermediate()
    assert pki.check(pki.leaf(inter), inter.cert, roots=roots) == "expired root"
    assert pki.check(pki.leaf(), pki.inter.cert, roots=roots) is None
