"""A throwaway certificate authority for hardware-trust tests (root → intermediate → leaf).

By default it issues what the coordinator accepts (docs/security.md, "Running your own CA"); the
keyword options build each certificate it must refuse: ``extra`` replaces a default extension of the
same OID (or adds one), ``drop`` removes one.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from darkbloom.crypto.certificates import DARKBLOOM_PROVIDER_EKU

Extensions = Sequence[tuple[x509.ExtensionType, bool]]


def _name(common_name: str, serial: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if serial:
        attrs.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial))
    return x509.Name(attrs)


def _usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=ca,
                         crl_sign=ca, encipher_only=False, decipher_only=False)


class CA:
    def __init__(self, name: str = "Test Root", *, expired: bool = False, path_length: int | None = None,
                 extra: Extensions = (), drop: Sequence[x509.ObjectIdentifier] = ()) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = self._issue(self.key.public_key(), _name(name), ca=True, expired=expired, extra=[
            (x509.BasicConstraints(ca=True, path_length=path_length), True), *extra], drop=drop)

    def _issue(self, public_key: ec.EllipticCurvePublicKey, subject: x509.Name, *, ca: bool, expired: bool,
               extra: Extensions, drop: Sequence[x509.ObjectIdentifier] = ()) -> x509.Certificate:
        """Signed by this CA (self-signed while it has no certificate yet: the root)."""
        now = datetime.now(UTC)
        end = now - timedelta(days=1) if expired else now + timedelta(days=365 if ca else 30)
        defaults: Extensions = [
            (x509.BasicConstraints(ca=ca, path_length=None), True), (_usage(ca), True),
            (x509.SubjectKeyIdentifier.from_public_key(public_key), False),
            (x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False)]
        extensions = {ext.oid: (ext, critical) for ext, critical in [*defaults, *extra]}
        builder = (x509.CertificateBuilder().subject_name(subject)
                   .issuer_name(self.cert.subject if hasattr(self, "cert") else subject)
                   .public_key(public_key).serial_number(x509.random_serial_number())
                   .not_valid_before(now - timedelta(days=2)).not_valid_after(end))
        for oid, (ext, critical) in extensions.items():
            if oid not in drop:
                builder = builder.add_extension(ext, critical=critical)
        return builder.sign(self.key, hashes.SHA256())

    def intermediate(self, name: str = "Test Intermediate", *, expired: bool = False,
                     path_length: int | None = None, extra: Extensions = ()) -> CA:
        child = CA.__new__(CA)
        child.key = ec.generate_private_key(ec.SECP256R1())
        child.cert = self._issue(child.key.public_key(), _name(name), ca=True, expired=expired, extra=[
            (x509.BasicConstraints(ca=True, path_length=path_length), True), *extra])
        return child

    def leaf(self, public_key: object, serial: str | None = None, expired: bool = False, *,
             eku: Sequence[x509.ObjectIdentifier] = (DARKBLOOM_PROVIDER_EKU,), extra: Extensions = (),
             drop: Sequence[x509.ObjectIdentifier] = ()) -> x509.Certificate:
        """A provider certificate: CA:FALSE, digitalSignature, the given EKU (none when empty)."""
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        usage = [(x509.ExtendedKeyUsage(eku), False)] if eku else []
        return self._issue(public_key, _name("darkbloom provider", serial), ca=False, expired=expired,
                           extra=[*usage, *extra], drop=drop)

    def sign_csr(self, csr_pem: bytes, serial: str | None = None) -> x509.Certificate:
        csr = x509.load_pem_x509_csr(csr_pem)
        return self.leaf(csr.public_key(), serial)

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def pem_chain(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
