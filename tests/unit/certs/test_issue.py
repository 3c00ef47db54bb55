"""Issuing certificates (certs.authority), writing them (certs.files) and the CLI."""

from __future__ import annotations

import ipaddress
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from certs.__main__ import main
from certs.authority import (
    KeyPair,
    issue_bundle,
    issue_client_cert,
    issue_server_cert,
    load_ca,
    new_ca,
    subject_names,
)
from certs.files import read_ca, write_atomic, write_bundle

REPO = Path(__file__).resolve().parents[3]
_E = TypeVar("_E", bound=x509.ExtensionType)


@pytest.fixture(scope="module")
def ca() -> KeyPair:
    return new_ca()


def _ext(cert: x509.Certificate, kind: type[_E]) -> _E:
    return cert.extensions.get_extension_for_class(kind).value


def _verify_server(ca: KeyPair, leaf: KeyPair, name: x509.DNSName | x509.IPAddress) -> None:
    """Full RFC 5280 path validation plus SAN matching, as a TLS client would do it."""
    verifier = (
        PolicyBuilder()
        .store(Store([ca.certificate]))
        .time(datetime.now(UTC))
        .build_server_verifier(name)
    )
    verifier.verify(leaf.certificate, [])


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ca_is_a_ca_that_signs_certificates(ca: KeyPair) -> None:
    cert = ca.certificate
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    usage = _ext(cert, x509.KeyUsage)
    assert usage.key_cert_sign
    assert usage.crl_sign
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)


def test_server_cert_has_sans_server_auth_and_is_not_a_ca(ca: KeyPair) -> None:
    names = subject_names(["webhook.ns.svc", "Webhook.NS.svc", "webhook.ns.svc."], ["10.0.0.7"])
    leaf = issue_server_cert(ca, names).certificate

    san = _ext(leaf, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == ["webhook.ns.svc"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]
    assert list(_ext(leaf, x509.ExtendedKeyUsage)) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not _ext(leaf, x509.BasicConstraints).ca
    assert not _ext(leaf, x509.KeyUsage).key_cert_sign
    leaf.verify_directly_issued_by(ca.certificate)


def test_server_cert_verifies_for_its_sans_only(ca: KeyPair) -> None:
    leaf = issue_server_cert(ca, subject_names(["svc.ns.svc"], ["127.0.0.1", "::1"]))

    _verify_server(ca, leaf, x509.DNSName("svc.ns.svc"))
    _verify_server(ca, leaf, x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    _verify_server(ca, leaf, x509.IPAddress(ipaddress.ip_address("::1")))
    with pytest.raises(VerificationError):
        _verify_server(ca, leaf, x509.DNSName("other.ns.svc"))


def test_client_cert_is_for_client_auth(ca: KeyPair) -> None:
    leaf = issue_client_cert(ca, "kube-scheduler")
    cert = leaf.certificate

    assert list(_ext(cert, x509.ExtendedKeyUsage)) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.subject.rfc4514_string() == "CN=kube-scheduler"
    verifier = (
        PolicyBuilder().store(Store([ca.certificate])).time(datetime.now(UTC))
    ).build_client_verifier()
    verifier.verify(cert, [])
    colon = issue_client_cert(ca, "system:kube-scheduler").certificate
    assert colon.subject.rfc4514_string() == "CN=system:kube-scheduler"
    colon.verify_directly_issued_by(ca.certificate)
    with pytest.raises(ValueError, match="empty"):
        issue_client_cert(ca, " ")


def test_serials_are_fresh(ca: KeyPair) -> None:
    names = subject_names(["a"])
    serials = {issue_server_cert(ca, names).certificate.serial_number for _ in range(5)}
    assert len(serials) == 5


def test_validity_days_and_clamped_to_ca_expiry() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    ca = new_ca(days=30, now=now)
    names = subject_names(["a"])

    short = issue_server_cert(ca, names, days=7, now=now).certificate
    assert short.not_valid_after_utc == now + timedelta(days=7)
    assert short.not_valid_before_utc < now  # backdated for clock skew

    long = issue_server_cert(ca, names, days=365, now=now).certificate
    assert long.not_valid_after_utc == ca.certificate.not_valid_after_utc
    with pytest.raises(ValueError, match="at least 1 day"):
        issue_server_cert(ca, names, days=0)


@pytest.mark.parametrize(
    ("dns", "ips", "message"),
    [
        ([], [], "at least one"),
        (["under_score"], [], "DNS name"),
        (["-lead.svc"], [], "DNS name"),
        (["a..b"], [], "DNS name"),
        ([], ["10.0.0.256"], "IP address"),
        ([], ["host"], "IP address"),
    ],
)
def test_subject_names_rejects(dns: list[str], ips: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        subject_names(dns, ips)


def test_subject_names_accepts_wildcards_and_ipv6() -> None:
    names = subject_names(["*.ns.svc", "localhost"], ["::1", "::1"])
    assert names.dns == ("*.ns.svc", "localhost")
    assert names.ips == (ipaddress.ip_address("::1"),)
    assert subject_names(ips=["10.1.2.3"]).first == "10.1.2.3"


def test_issue_from_existing_ca_verifies_against_the_original(ca: KeyPair, tmp_path: Path) -> None:
    write_bundle(tmp_path, issue_bundle(subject_names(["first"]), ca=None))
    original = read_ca(tmp_path)

    rotated = issue_bundle(subject_names(["second.ns.svc"]), ca=read_ca(tmp_path))

    assert not rotated.ca_is_new
    assert rotated.ca.cert_pem == original.cert_pem
    rotated.server.certificate.verify_directly_issued_by(original.certificate)
    _verify_server(original, rotated.server, x509.DNSName("second.ns.svc"))


def test_load_ca_rejects_unusable_cas(ca: KeyPair) -> None:
    leaf = issue_server_cert(ca, subject_names(["a"]))
    other = new_ca()
    with pytest.raises(ValueError, match="not a CA"):
        load_ca(leaf.cert_pem, leaf.key_pem)
    with pytest.raises(ValueError, match="does not match"):
        load_ca(ca.cert_pem, other.key_pem)
    with pytest.raises(ValueError, match="PEM certificate"):
        load_ca(b"garbage", ca.key_pem)
    with pytest.raises(ValueError, match="PEM private key"):
        load_ca(ca.cert_pem, b"garbage")


def test_write_atomic_replaces_without_leftovers(tmp_path: Path) -> None:
    target = tmp_path / "tls.key"
    write_atomic(target, b"one", 0o600)
    write_atomic(target, b"two", 0o600)
    assert target.read_bytes() == b"two"
    assert _mode(target) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["tls.key"]


# --- CLI ---------------------------------------------------------------------------------


def test_cli_writes_files_with_modes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    args = ["--out", str(out), "--dns", "a.svc", "b.svc", "--dns", "c", "--ip", "127.0.0.1"]
    assert main([*args, "--days", "10", "--client", "kube-scheduler"]) == 0

    files = {p.name: _mode(p) for p in out.iterdir()}
    assert files == {
        "ca.crt": 0o644,
        "ca.key": 0o600,
        "tls.crt": 0o644,
        "tls.key": 0o600,
        "client.crt": 0o644,
        "client.key": 0o600,
    }
    ca = load_ca((out / "ca.crt").read_bytes(), (out / "ca.key").read_bytes())
    server = KeyPair((out / "tls.crt").read_bytes(), (out / "tls.key").read_bytes())
    _verify_server(ca, server, x509.DNSName("c"))
    remaining = server.certificate.not_valid_after_utc - datetime.now(UTC)
    assert timedelta(days=9) < remaining <= timedelta(days=10)

    printed = capsys.readouterr().out
    assert "SANs: DNS:a.svc, DNS:b.svc, DNS:c, IP:127.0.0.1" in printed
    assert "expires: " in printed
    assert str(out / "tls.key") in printed


def test_cli_reuses_ca_without_copying_its_key(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path / "ca"), "--dns", "first"]) == 0
    reuse = ["--ca-dir", str(tmp_path / "ca"), "--ip", "::1"]
    assert main(["--out", str(tmp_path / "new"), *reuse]) == 0

    original = read_ca(tmp_path / "ca")
    assert (tmp_path / "new" / "ca.crt").read_bytes() == original.cert_pem
    assert not (tmp_path / "new" / "ca.key").exists()
    leaf = x509.load_pem_x509_certificate((tmp_path / "new" / "tls.crt").read_bytes())
    leaf.verify_directly_issued_by(original.certificate)


@pytest.mark.parametrize(
    "args",
    [
        ["--out", "{tmp}"],
        ["--out", "{tmp}", "--ip", "not-an-ip"],
        ["--out", "{tmp}", "--dns", "bad_name"],
        ["--dns", "a"],
        ["--out", "{tmp}", "--dns", "a", "--days", "many"],
    ],
)
def test_cli_bad_arguments_exit_2(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main([a.replace("{tmp}", str(tmp_path)) for a in args])
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing-ca", "CA file(s) not found"),
        ("broken-ca", "not a valid PEM certificate"),
        ("unwritable", "cannot write"),
        ("zero-days", "at least 1 day"),
    ],
)
def test_cli_expected_errors_exit_2_without_traceback(
    setup: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--out", str(tmp_path / "out"), "--dns", "a"]
    if setup == "missing-ca":
        args += ["--ca-dir", str(tmp_path / "nowhere")]
    elif setup == "broken-ca":
        (tmp_path / "ca.crt").write_bytes(b"garbage")
        (tmp_path / "ca.key").write_bytes(b"garbage")
        args += ["--ca-dir", str(tmp_path)]
    elif setup == "unwritable":
        # A path below a regular file cannot be created, even by root.
        (tmp_path / "file").write_text("x")
        args[1] = str(tmp_path / "file" / "out")
    else:
        args += ["--days", "0"]

    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_python_dash_m_certs(tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "certs", "--out", str(tmp_path), "--dns", "svc", "--ip", "::1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert "IP:::1" in ok.stdout

    bad = subprocess.run(
        [sys.executable, "-m", "certs", "--out", str(tmp_path), "--dns", "a", "--ca-dir", "/nx"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert "CA file(s) not found" in bad.stderr
    assert "Traceback" not in bad.stderr
