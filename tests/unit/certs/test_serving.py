"""The plain-HTTP guard and uvicorn wiring in certs.serving (no server is started here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.applications import Starlette

from certs.authority import issue_bundle, subject_names
from certs.files import TLS_CERT, TLS_KEY, write_bundle
from certs.reloading import ReloadingTLS
from certs.serving import InsecureBindError, build_server, require_tls_unless_loopback


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"])
def test_plain_http_allowed_on_loopback(host: str) -> None:
    require_tls_unless_loopback(host, tls_enabled=False)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.0.0.1", "webhook.ns.svc", "localhost."])
def test_plain_http_refused_elsewhere(host: str) -> None:
    with pytest.raises(InsecureBindError, match="plain HTTP"):
        require_tls_unless_loopback(host, tls_enabled=False)
    require_tls_unless_loopback(host, tls_enabled=True)


def test_build_server_uses_the_reloading_context(tmp_path: Path) -> None:
    write_bundle(tmp_path, issue_bundle(subject_names(["a"])))
    tls = ReloadingTLS(tmp_path / TLS_CERT, tmp_path / TLS_KEY)

    server = build_server(Starlette(), "0.0.0.0", 0, tls, log_level="warning")

    assert server.config.loaded
    assert server.config.ssl is tls.context
    assert server.config.lifespan == "on"


def test_build_server_refuses_plain_http_and_ssl_options(tmp_path: Path) -> None:
    with pytest.raises(InsecureBindError):
        build_server(Starlette(), "0.0.0.0", 0, None)
    assert build_server(Starlette(), "127.0.0.1", 0, None).config.ssl is None
    with pytest.raises(ValueError, match="ReloadingTLS"):
        build_server(Starlette(), "127.0.0.1", 0, None, ssl_certfile="x")
