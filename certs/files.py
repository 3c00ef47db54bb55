"""Reading and atomically writing certificate files in the Kubernetes TLS-secret layout."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from certs.authority import Bundle, KeyPair, load_ca

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"
CLIENT_CERT = "client.crt"
CLIENT_KEY = "client.key"

CERT_MODE = 0o644
KEY_MODE = 0o600


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` so readers see either the old or the new file, never half.

    The temp file lives in the same directory because os.replace is only atomic within one
    filesystem; its mode is set before any secret byte is written.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_pair(out_dir: Path, pair: KeyPair, cert_name: str, key_name: str) -> list[Path]:
    """Write a cert/key pair; the key first, so a new cert never appears before its key."""
    out_dir.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = out_dir / key_name, out_dir / cert_name
    write_atomic(key_path, pair.key_pem, KEY_MODE)
    write_atomic(cert_path, pair.cert_pem, CERT_MODE)
    return [cert_path, key_path]


def write_ca_cert(out_dir: Path, ca: KeyPair) -> Path:
    """Write only ca.crt: what clients and the webhook caBundle need, without the CA key."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / CA_CERT
    write_atomic(path, ca.cert_pem, CERT_MODE)
    return path


def write_bundle(out_dir: Path, bundle: Bundle) -> list[Path]:
    """Write ca.crt, tls.crt/tls.key, client.crt/client.key if any, and ca.key if the CA is new.

    A reused CA's key stays where it was: copying a signing key around is how it leaks. ca.crt
    goes first so anything trusting the directory knows the CA before a leaf signed by it.
    """
    written = [write_ca_cert(out_dir, bundle.ca)]
    if bundle.ca_is_new:
        key_path = out_dir / CA_KEY
        write_atomic(key_path, bundle.ca.key_pem, KEY_MODE)
        written.append(key_path)
    written += write_pair(out_dir, bundle.server, TLS_CERT, TLS_KEY)
    if bundle.client is not None:
        written += write_pair(out_dir, bundle.client, CLIENT_CERT, CLIENT_KEY)
    return written


def read_ca(ca_dir: Path) -> KeyPair:
    """Load ca.crt and ca.key from ``ca_dir``; raise FileNotFoundError or ValueError."""
    cert_path, key_path = ca_dir / CA_CERT, ca_dir / CA_KEY
    missing = [str(p) for p in (cert_path, key_path) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"CA file(s) not found: {', '.join(missing)}")
    return load_ca(cert_path.read_bytes(), key_path.read_bytes())
