"""A tiny private CA: create one, and issue serving and client certificates from it.

Everything here is pure: inputs are PEM bytes and names, outputs are PEM bytes. Writing to
disk lives in :mod:`certs.files`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeAlias, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_DAYS = 365
DEFAULT_CA_DAYS = 3650
DEFAULT_CA_NAME = "vramguard-ca"

# Clocks on nodes and the apiserver drift; backdating avoids "not yet valid" right after issuing.
_BACKDATE = timedelta(minutes=5)

_DNS_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DNS_NAME = re.compile(rf"^(\*\.)?{_DNS_LABEL}(\.{_DNS_LABEL})*$")

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
SigningKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
_T = TypeVar("_T")


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its unencrypted PKCS#8 PEM private key."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


@dataclass(frozen=True)
class SubjectNames:
    """Validated, de-duplicated SubjectAltName entries for a serving certificate."""

    dns: tuple[str, ...]
    ips: tuple[IPAddress, ...]

    @property
    def first(self) -> str:
        return self.dns[0] if self.dns else str(self.ips[0])


@dataclass(frozen=True)
class Bundle:
    """Everything one run of the CLI produces: the CA, a serving pair and maybe a client pair."""

    ca: KeyPair
    server: KeyPair
    client: KeyPair | None = None
    ca_is_new: bool = True


def subject_names(dns: Iterable[str] = (), ips: Iterable[str] = ()) -> SubjectNames:
    """Validate DNS names and IP addresses; raise ValueError naming the bad entry."""
    dns_names = _unique(name.strip().lower().rstrip(".") for name in dns)
    for name in dns_names:
        if len(name) > 253 or not _DNS_NAME.match(name):
            raise ValueError(f"not a valid DNS name: {name!r}")
    addresses: list[IPAddress] = []
    for raw in ips:
        try:
            addresses.append(ipaddress.ip_address(raw.strip()))
        except ValueError:
            raise ValueError(f"not a valid IP address: {raw!r}") from None
    if not dns_names and not addresses:
        raise ValueError("at least one DNS name or IP address is required")
    return SubjectNames(dns=tuple(dns_names), ips=tuple(_unique(addresses)))


def new_ca(
    common_name: str = DEFAULT_CA_NAME,
    days: int = DEFAULT_CA_DAYS,
    now: datetime | None = None,
) -> KeyPair:
    """Create a self-signed CA (EC P-256) that may only sign leaf certificates."""
    _check_days(days)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = _now(now) - _BACKDATE
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + _BACKDATE + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert_pem=_cert_pem(cert), key_pem=_key_pem(key))


def issue_server_cert(
    ca: KeyPair,
    names: SubjectNames,
    days: int = DEFAULT_DAYS,
    now: datetime | None = None,
) -> KeyPair:
    """Issue a serverAuth certificate for ``names``; clients check the SANs, not the CN."""
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names.dns]
    sans += [x509.IPAddress(ip) for ip in names.ips]
    return _issue_leaf(
        ca,
        common_name=names.first,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        sans=sans,
        days=days,
        now=now,
    )


def issue_client_cert(
    ca: KeyPair,
    common_name: str,
    days: int = DEFAULT_DAYS,
    now: datetime | None = None,
) -> KeyPair:
    """Issue a clientAuth certificate whose CN is the client's identity."""
    if not common_name.strip():
        raise ValueError("client certificate name must not be empty")
    # Go and OpenSSL accept a CN-only client cert, but strict (webpki-style) verifiers want a
    # SAN; add one when the name can be a DNS name ("system:..." names cannot).
    sans = [x509.DNSName(common_name)] if _DNS_NAME.match(common_name) else []
    return _issue_leaf(
        ca,
        common_name=common_name,
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        sans=sans,
        days=days,
        now=now,
    )


def issue_bundle(
    names: SubjectNames,
    days: int = DEFAULT_DAYS,
    ca: KeyPair | None = None,
    client_name: str | None = None,
    now: datetime | None = None,
) -> Bundle:
    """Issue a serving (and optionally client) pair from ``ca``, or from a brand-new CA."""
    authority = ca if ca is not None else new_ca(now=now)
    client = None if client_name is None else issue_client_cert(authority, client_name, days, now)
    return Bundle(
        ca=authority,
        server=issue_server_cert(authority, names, days=days, now=now),
        client=client,
        ca_is_new=ca is None,
    )


def load_ca(cert_pem: bytes, key_pem: bytes) -> KeyPair:
    """Check that PEM bytes form a usable CA (CA:TRUE, matching key) and return them."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise ValueError("CA certificate is not a valid PEM certificate") from None
    key = _load_signing_key(key_pem)
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise ValueError("CA certificate has no BasicConstraints extension") from None
    if not constraints.ca:
        raise ValueError("CA certificate is not a CA (BasicConstraints CA:FALSE)")
    if cert.public_key() != key.public_key():
        raise ValueError("CA private key does not match the CA certificate")
    return KeyPair(cert_pem=cert_pem, key_pem=key_pem)


def _issue_leaf(
    ca: KeyPair,
    *,
    common_name: str,
    usage: x509.ObjectIdentifier,
    sans: Sequence[x509.GeneralName],
    days: int,
    now: datetime | None,
) -> KeyPair:
    _check_days(days)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = _load_signing_key(ca.key_pem)
    key = ec.generate_private_key(ec.SECP256R1())
    start = _now(now) - _BACKDATE
    # A leaf outliving its CA would silently stop verifying when the CA expires; say so up front.
    end = min(start + _BACKDATE + timedelta(days=days), ca_cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return KeyPair(cert_pem=_cert_pem(cert), key_pem=_key_pem(key))


def _load_signing_key(key_pem: bytes) -> SigningKey:
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        # TypeError: the key is encrypted; we have no way to ask for a passphrase.
        raise ValueError("CA key is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError("CA key must be an EC or RSA private key")
    return key


def _key_usage(
    *, digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: SigningKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _check_days(days: int) -> None:
    if days < 1:
        raise ValueError(f"validity must be at least 1 day, got {days}")


def _now(now: datetime | None) -> datetime:
    return now if now is not None else datetime.now(UTC)


def _unique(items: Iterable[_T]) -> list[_T]:
    return list(dict.fromkeys(items))
