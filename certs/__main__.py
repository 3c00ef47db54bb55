"""``python -m certs``: issue a serving certificate (and a CA, unless one is reused)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509

from certs.authority import DEFAULT_DAYS, Bundle, KeyPair, issue_bundle, subject_names
from certs.files import read_ca, write_bundle

USAGE_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m certs",
        description="Issue a TLS serving certificate signed by a private CA "
        "(files: ca.crt, ca.key, tls.crt, tls.key; keys are mode 0600).",
    )
    parser.add_argument("--out", required=True, type=Path, help="directory to write files into")
    # action="extend" + nargs="+" accepts both "--dns a --dns b" and "--dns a b".
    parser.add_argument(
        "--dns", action="extend", nargs="+", default=[], metavar="NAME", help="DNS SAN"
    )
    parser.add_argument(
        "--ip", action="extend", nargs="+", default=[], metavar="ADDR", help="IP address SAN"
    )
    parser.add_argument(
        "--days", type=int, default=DEFAULT_DAYS, help=f"validity (default {DEFAULT_DAYS})"
    )
    parser.add_argument(
        "--ca-dir",
        type=Path,
        help="reuse ca.crt/ca.key from this directory instead of creating a CA "
        "(keeps an existing caBundle valid); ca.key is then not copied to --out",
    )
    parser.add_argument(
        "--client", metavar="NAME", help="also write client.crt/client.key with CN=NAME"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        names = subject_names(args.dns, args.ip)
    except ValueError as exc:
        parser.error(str(exc))  # exits 2 with usage

    try:
        ca = _read_ca(args.ca_dir)
        bundle = issue_bundle(names, days=args.days, ca=ca, client_name=args.client)
    except (OSError, ValueError) as exc:
        return _fail(str(exc))
    try:
        written = write_bundle(args.out, bundle)
    except OSError as exc:
        return _fail(f"cannot write to {args.out}: {exc.strerror or exc}")

    _report(written, bundle)
    return 0


def _read_ca(ca_dir: Path | None) -> KeyPair | None:
    if ca_dir is None:
        return None
    try:
        return read_ca(ca_dir)
    except ValueError as exc:
        raise ValueError(f"{ca_dir}: {exc}") from None


def _report(written: Sequence[Path], bundle: Bundle) -> None:
    cert = bundle.server.certificate
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    sans = [f"DNS:{name}" for name in san.get_values_for_type(x509.DNSName)]
    sans += [f"IP:{ip}" for ip in san.get_values_for_type(x509.IPAddress)]
    origin = "new" if bundle.ca_is_new else "reused"
    print("wrote:")
    for path in written:
        print(f"  {path}")
    print(f"CA: {bundle.ca.certificate.subject.rfc4514_string()} ({origin})")
    print(f"SANs: {', '.join(sans)}")
    print(f"serial: {cert.serial_number:x}")
    print(f"expires: {cert.not_valid_after_utc.isoformat()}")
    if bundle.client is not None:
        print(f"client: {bundle.client.certificate.subject.rfc4514_string()}")


def _fail(message: str) -> int:
    print(f"python -m certs: error: {message}", file=sys.stderr)
    return USAGE_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
