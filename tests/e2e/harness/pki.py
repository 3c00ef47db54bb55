"""Throw-away PKI for a local control plane: a CA, TLS certificates it signs, and a
service-account signing key. Everything is written as PEM files into a directory.

The CA and serving certificates come from the project's own ``certs`` package. Client
certificates are made here: the admin's must carry ``O=system:masters`` (its group, for
RBAC), and ``certs.authority.issue_client_cert`` sets only a common name.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs.authority import KeyPair, issue_server_cert, new_ca, subject_names

_VALIDITY_DAYS = 2
_BACKDATE = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class CertPair:
    """Paths to a PEM certificate and its PEM private key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA (``certs.authority.new_ca``) whose key is kept to sign further certificates."""

    cert_path: Path
    pair: KeyPair

    @classmethod
    def create(cls, directory: Path, common_name: str = "vramguard-e2e-ca") -> CertificateAuthority:
        pair = new_ca(common_name, days=_VALIDITY_DAYS)
        written = _write_pair(directory, "ca", pair)
        return cls(cert_path=written.cert, pair=pair)

    @property
    def certificate(self) -> x509.Certificate:
        return self.pair.certificate

    def issue_server(
        self,
        directory: Path,
        basename: str,
        *,
        dns_names: tuple[str, ...] = (),
        ip_addresses: tuple[str, ...] = (),
    ) -> CertPair:
        """A serving certificate (``certs.authority.issue_server_cert``); writes
        ``<basename>.crt`` and ``<basename>.key``."""
        names = subject_names(dns_names, ip_addresses)
        return _write_pair(
            directory, basename, issue_server_cert(self.pair, names, days=_VALIDITY_DAYS)
        )

    def issue_client(
        self,
        directory: Path,
        basename: str,
        *,
        common_name: str,
        organizations: tuple[str, ...] = (),
    ) -> CertPair:
        """A client certificate for user ``common_name`` in groups ``organizations``."""
        signing_key = serialization.load_pem_private_key(self.pair.key_pem, password=None)
        if not isinstance(signing_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise TypeError("the CA key must be an EC or RSA key")
        key = ec.generate_private_key(ec.SECP256R1())
        attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        attributes += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attributes))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=_VALIDITY_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key()),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .sign(signing_key, hashes.SHA256())
        )
        pair = KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))
        return _write_pair(directory, basename, pair)


def write_service_account_keys(directory: Path) -> CertPair:
    """An RSA key pair for signing service-account tokens (``cert`` is the public key)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = directory / "sa.pub"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    private = directory / "sa.key"
    private.write_bytes(_key_pem(key))
    private.chmod(0o600)
    return CertPair(cert=public, key=private)


def _write_pair(directory: Path, basename: str, pair: KeyPair) -> CertPair:
    written = CertPair(cert=directory / f"{basename}.crt", key=directory / f"{basename}.key")
    written.key.write_bytes(pair.key_pem)
    written.key.chmod(0o600)
    written.cert.write_bytes(pair.cert_pem)
    return written


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
