"""Settings: flags override VRAMGUARD_WEBHOOK_* variables; required ones are named."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from webhook.settings import (
    BASE_RSS_MIB,
    CONNECTION_MIB,
    MAX_BODY_BYTES,
    PARSE_AMPLIFICATION,
    MiB,
    settings_from,
)

REQUIRED = ["--policy", "p.yaml", "--tls-cert", "c.crt", "--tls-key", "k.key"]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "POLICY",
        "TLS_CERT",
        "TLS_KEY",
        "HOST",
        "PORT",
        "KUBECONFIG",
        "LOG_FORMAT",
        "TLS_MODE",
        "NAMESPACE",
        "TLS_EXTRA_NAMES",
    ):
        monkeypatch.delenv(f"VRAMGUARD_WEBHOOK_{name}", raising=False)
    monkeypatch.delenv("POD_NAMESPACE", raising=False)


def test_flags() -> None:
    settings = settings_from([*REQUIRED, "--host", "127.0.0.1", "--port", "9443"])
    assert settings.policy == Path("p.yaml")
    assert settings.tls_cert == Path("c.crt")
    assert settings.host == "127.0.0.1"
    assert settings.port == 9443
    assert settings.kubeconfig is None
    assert settings.max_body_bytes is None
    assert settings.body_limit() == MAX_BODY_BYTES


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


SELF_MANAGED = [*REQUIRED, "--tls-mode", "self-managed"]


def test_files_is_the_default_mode_and_needs_no_namespace() -> None:
    """An existing command line keeps its meaning: the manifests ask for self-managed."""
    settings = settings_from(REQUIRED)
    assert settings.tls_mode == "files"
    assert settings.namespace is None


def test_self_managed_names_the_service_in_its_namespace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "gpu-system")
    settings = settings_from(SELF_MANAGED)
    assert (settings.namespace, settings.tls_secret, settings.webhook_configuration) == (
        "gpu-system",
        "vramguard-webhook-tls",
        "vramguard",
    )
    names = settings.serving_names()
    assert names.dns == (
        "vramguard-webhook.gpu-system.svc",
        "vramguard-webhook.gpu-system",
        "vramguard-webhook.gpu-system.svc.cluster.local",
    )
    assert names.ips == ()


def test_the_namespace_flag_and_variable_win_over_pod_namespace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "from-pod")
    monkeypatch.setenv("VRAMGUARD_WEBHOOK_NAMESPACE", "from-variable")
    assert settings_from(SELF_MANAGED).namespace == "from-variable"
    assert settings_from([*SELF_MANAGED, "--namespace", "from-flag"]).namespace == "from-flag"


def test_self_managed_without_a_namespace_says_how_to_give_one() -> None:
    with pytest.raises(ValidationError, match="set POD_NAMESPACE"):
        settings_from(SELF_MANAGED)


def test_extra_names_split_into_dns_names_and_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VRAMGUARD_WEBHOOK_TLS_EXTRA_NAMES", "127.0.0.1, localhost,::1")
    settings = settings_from([*SELF_MANAGED, "--namespace", "vramguard", "--service", "hook"])
    names = settings.serving_names()
    assert names.dns[-1] == "localhost"
    assert names.dns[0] == "hook.vramguard.svc"
    assert [str(ip) for ip in names.ips] == ["127.0.0.1", "::1"]
    with pytest.raises(ValidationError, match="not a valid DNS name"):
        settings_from([*SELF_MANAGED, "--namespace", "vramguard", "--tls-extra-names", "a b"])


def test_rotation_timings_come_from_the_settings() -> None:
    settings = settings_from(
        [
            *SELF_MANAGED,
            "--namespace",
            "vramguard",
            "--tls-propagation-seconds",
            "2",
            "--tls-overlap-seconds",
            "30",
            "--tls-sync-seconds",
            "1",
            "--tls-reload-seconds",
            "0.5",
        ]
    )
    timings = settings.rotation_timings()
    assert (timings.propagation, timings.overlap) == (timedelta(seconds=2), timedelta(seconds=30))
    assert (timings.ca_days, timings.serving_days) == (730, 90)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tls-cert-renew-days", "60"], "earlier before its end"),
        (["--tls-ca-renew-days", "800"], "CA's renewal"),
        (["--tls-overlap-seconds", "60"], "at least twice tls_sync_seconds"),
    ],
)
def test_rotation_timings_that_cannot_work_are_refused(flags: list[str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        settings_from([*SELF_MANAGED, "--namespace", "vramguard", *flags])


def test_limits_default_to_what_fits_in_the_memory_limit() -> None:
    at = {
        mib: settings_from([*REQUIRED, "--memory-limit-mib", str(mib)]) for mib in (128, 256, 1024)
    }
    # kube-apiserver's 3 MiB request limit plus the envelope, when the memory allows it.
    assert at[1024].body_limit() == 3 * 1024 * 1024 + 64 * 1024
    assert at[128].body_limit() < at[256].body_limit() < at[1024].body_limit()
    assert at[256].body_limit() == MAX_BODY_BYTES
    assert 200 <= at[256].connection_limit() <= 300
    assert at[128].connection_limit() < at[256].connection_limit() < at[1024].connection_limit()
    for settings in at.values():
        # What the defaults add up to, with the measured costs, stays under the limit.
        used = (
            BASE_RSS_MIB * MiB
            + settings.body_limit() * (PARSE_AMPLIFICATION + settings.max_buffered_bodies)
            + settings.connection_limit() * CONNECTION_MIB * MiB
        )
        assert used <= settings.memory_limit_mib * MiB


def test_explicit_limits_win() -> None:
    settings = settings_from(
        [*REQUIRED, "--max-body-bytes", "1048576", "--max-connections", "50",
         "--header-timeout-seconds", "2", "--tls-client-ca", "ca.crt"]
    )  # fmt: skip
    assert (settings.body_limit(), settings.connection_limit()) == (1048576, 50)
    assert settings.header_timeout_seconds == 2
    assert settings.tls_client_ca == Path("ca.crt")
    assert settings_from(REQUIRED).tls_client_ca is None


@pytest.mark.parametrize(
    "flag",
    [
        ["--max-body-bytes", "1000"],
        ["--max-connections", "0"],
        ["--header-timeout-seconds", "0"],
        ["--max-header-bytes", "10"],
        ["--memory-limit-mib", "32"],
    ],
)
def test_limits_refuse_nonsense(flag: list[str]) -> None:
    with pytest.raises(ValidationError):
        settings_from([*REQUIRED, *flag])
