"""Settings: flags override VRAMGUARD_WEBHOOK_* variables; required ones are named."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from webhook.settings import MAX_BODY_BYTES, settings_from

REQUIRED = ["--policy", "p.yaml", "--tls-cert", "c.crt", "--tls-key", "k.key"]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("POLICY", "TLS_CERT", "TLS_KEY", "HOST", "PORT", "KUBECONFIG", "LOG_FORMAT"):
        monkeypatch.delenv(f"VRAMGUARD_WEBHOOK_{name}", raising=False)


def test_flags() -> None:
    settings = settings_from([*REQUIRED, "--host", "127.0.0.1", "--port", "9443"])
    assert settings.policy == Path("p.yaml")
    assert settings.tls_cert == Path("c.crt")
    assert settings.host == "127.0.0.1"
    assert settings.port == 9443
    assert settings.kubeconfig is None
    assert settings.max_body_bytes == MAX_BODY_BYTES == 7 * 1024 * 1024


def test_defaults() -> None:
    settings = settings_from(REQUIRED)
    assert (settings.host, settings.port, settings.log_format) == ("0.0.0.0", 8443, "json")


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VRAMGUARD_WEBHOOK_POLICY", "/etc/vramguard/policy.yaml")
    monkeypatch.setenv("VRAMGUARD_WEBHOOK_TLS_CERT", "/tls/tls.crt")
    monkeypatch.setenv("VRAMGUARD_WEBHOOK_TLS_KEY", "/tls/tls.key")
    monkeypatch.setenv("VRAMGUARD_WEBHOOK_KUBECONFIG", "/kube/config")
    monkeypatch.setenv("VRAMGUARD_WEBHOOK_PORT", "10443")
    settings = settings_from([])
    assert settings.policy == Path("/etc/vramguard/policy.yaml")
    assert settings.kubeconfig == Path("/kube/config")
    assert settings.port == 10443


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VRAMGUARD_WEBHOOK_PORT", "10443")
    monkeypatch.setenv("VRAMGUARD_WEBHOOK_POLICY", "env.yaml")
    settings = settings_from([*REQUIRED, "--port", "9000"])
    assert settings.port == 9000
    assert settings.policy == Path("p.yaml")


def test_missing_settings_are_named() -> None:
    with pytest.raises(ValidationError) as caught:
        settings_from(["--policy", "p.yaml"])
    missing = {error["loc"][0] for error in caught.value.errors()}
    assert missing == {"tls_cert", "tls_key"}


def test_bad_values_are_refused() -> None:
    with pytest.raises(ValidationError):
        settings_from([*REQUIRED, "--port", "70000"])
    with pytest.raises(SystemExit):
        settings_from([*REQUIRED, "--log-format", "xml"])
