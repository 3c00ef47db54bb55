"""Serve the newest certificate on disk without restarting, like controller-runtime's certwatcher.

The server is handed :attr:`ReloadingTLS.context` once. That context's ``sni_callback`` runs on
every handshake (with or without SNI) and switches the connection to the newest good context,
so rotating tls.crt/tls.key on disk affects new connections only; open ones are untouched.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import threading
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from cryptography import x509

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL = 2.0
# TLS 1.2 suites: forward-secret key exchange and AEAD encryption only (no CBC, no RSA key
# exchange, no SHA-1 MACs). OpenSSL's names; TLS 1.3's suites (all AEAD) are not affected by
# set_ciphers. Go's TLS client (kube-apiserver, Prometheus) offers all of them.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


class CertificateLoadError(Exception):
    """The initial certificate/key (or client CA) could not be loaded."""


def file_digest(paths: Sequence[Path]) -> bytes:
    """Hash the contents of ``paths`` (not their mtimes: Kubernetes swaps symlinks)."""
    h = hashlib.sha256()
    for path in paths:
        data = path.read_bytes()
        # Length-prefix each file so moving bytes from one file to the next changes the hash.
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.digest()


def server_context(cert_file: Path, key_file: Path, client_ca_file: Path | None) -> ssl.SSLContext:
    """Build a TLS >= 1.2 server context, AEAD ciphers only; with a client CA, client
    certificates are required."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    # load_cert_chain also checks that the key belongs to the certificate.
    ctx.load_cert_chain(cert_file, key_file)
    if client_ca_file is not None:
        # Only this CA: create_default_context would also trust every public CA for clients.
        ctx.load_verify_locations(cafile=client_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def certificate_expiry(cert_file: Path) -> datetime:
    """The notAfter of the first certificate in ``cert_file``."""
    return x509.load_pem_x509_certificate(cert_file.read_bytes()).not_valid_after_utc


class ReloadingTLS:
    """An SSLContext whose certificate follows cert_file/key_file as they change on disk.

    ``reload_failures`` counts distinct broken contents seen (for a metric); ``reloads`` counts
    successful swaps; ``last_error`` describes the latest failure, cleared by a good reload;
    ``not_after`` is the expiry of the certificate being served (for an expiry metric).
    """

    def __init__(
        self,
        cert_file: str | Path,
        key_file: str | Path,
        client_ca_file: str | Path | None = None,
    ) -> None:
        self.cert_file = Path(cert_file)
        self.key_file = Path(key_file)
        self.client_ca_file = None if client_ca_file is None else Path(client_ca_file)
        self.reloads = 0
        self.reload_failures = 0
        self.last_error: str | None = None
        self._lock = threading.Lock()
        # Digests of broken contents: seen once (maybe mid-write), and already reported.
        self._pending_bad: bytes | None = None
        self._reported_bad: bytes | None = None
        try:
            self._digest = file_digest(self._paths)
            self._latest = self._build()
            self.not_after = certificate_expiry(self.cert_file)
            self._context = self._build()
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise CertificateLoadError(f"cannot load TLS files {self._describe()}: {exc}") from exc
        # The served context only dispatches; it carries the same verify settings because
        # OpenSSL keeps the verify mode of the context a connection started with.
        self._context.sni_callback = self._select_context

    @property
    def context(self) -> ssl.SSLContext:
        """The context to give the server, once."""
        return self._context

    @property
    def requires_client_cert(self) -> bool:
        return self.client_ca_file is not None

    def reload_if_changed(self) -> bool:
        """Swap in the files' current contents if they changed and load; True if swapped.

        A broken or mismatched pair keeps the last good context. It is reported (warning,
        ``reload_failures``) only once it is seen twice in a row, so a writer that replaces
        tls.key and tls.crt one after the other does not raise a false alarm in between.
        """
        with self._lock:
            try:
                digest = file_digest(self._paths)
            except OSError as exc:
                # Files briefly missing mid-rotation are handled like broken contents.
                return self._failed(f"unreadable: {exc}".encode(), exc)
            if digest == self._digest:
                # Back to what is served (a broken edit undone): nothing is failing any more.
                self._pending_bad = self._reported_bad = None
                self.last_error = None
                return False
            try:
                fresh = self._build()
                not_after = certificate_expiry(self.cert_file)
                # Files changed while loading: try again next time rather than guess which won.
                if file_digest(self._paths) != digest:
                    return False
            except (OSError, ssl.SSLError, ValueError) as exc:
                return self._failed(digest, exc)
            self._latest, self._digest, self.not_after = fresh, digest, not_after
            self._pending_bad = self._reported_bad = None
            self.last_error = None
            self.reloads += 1
        logger.info("reloaded TLS certificate from %s (expires %s)", self.cert_file, not_after)
        return True

    async def watch(self, interval: float = DEFAULT_INTERVAL) -> None:
        """Poll the files every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(self.reload_if_changed)
            except Exception:
                # A watcher that dies silently would let the certificate expire; keep going.
                logger.exception("TLS reload check failed")

    @property
    def _paths(self) -> list[Path]:
        extra = [] if self.client_ca_file is None else [self.client_ca_file]
        return [self.cert_file, self.key_file, *extra]

    def _build(self) -> ssl.SSLContext:
        return server_context(self.cert_file, self.key_file, self.client_ca_file)

    def _select_context(
        self, ssl_object: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        # Runs in the event loop for every handshake; reading one attribute is thread-safe.
        ssl_object.context = self._latest

    def _failed(self, bad: bytes, exc: BaseException) -> bool:
        if bad == self._pending_bad and bad != self._reported_bad:
            self._reported_bad = bad
            self.reload_failures += 1
            self.last_error = str(exc) or type(exc).__name__
            logger.warning(
                "keeping the previous TLS certificate: cannot load %s: %s",
                self._describe(),
                self.last_error,
            )
        self._pending_bad = bad
        return False

    def _describe(self) -> str:
        return ", ".join(str(p) for p in self._paths)
