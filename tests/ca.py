"""A throwaway certificate authority for hardware-trust tests (root → intermediate → leaf)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


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
    def __init__(self, name: str = "Test Root") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        self.cert = self._issue(self.key.public_key(), _name(name), ca=True, issuer=None,
                                start=now - timedelta(days=1), end=now + timedelta(days=365))

    def _issue(self, public_key: ec.EllipticCurvePublicKey, subject: x509.Name, *, ca: bool,
               issuer: CA | None, start: datetime, end: datetime) -> x509.Certificate:
        signer = issuer or self
        issuer_name = issuer.cert.subject if issuer else subject
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
                .public_key(public_key).serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(end)
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                .add_extension(_usage(ca), critical=True)
                .sign(signer.key, hashes.SHA256()))

    def intermediate(self, name: str = "Test Intermediate") -> CA:
        child = CA.__new__(CA)
        child.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        child.cert = self._issue(child.key.public_key(), _name(name), ca=True, issuer=self,
                                 start=now - timedelta(days=1), end=now + timedelta(days=365))
        return child

    def leaf(self, public_key: object, serial: str | None = None, expired: bool = False
             ) -> x509.Certificate:
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        now = datetime.now(UTC)
        end = now - timedelta(days=1) if expired else now + timedelta(days=30)
        return self._issue(public_key, _name("darkbloom provider", serial), ca=False, issuer=self,
                           start=now - timedelta(days=2), end=end)

    def sign_csr(self, csr_pem: bytes, serial: str | None = None) -> x509.Certificate:
        csr = x509.load_pem_x509_csr(csr_pem)
        return self.leaf(csr.public_key(), serial)

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def pem_chain(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
