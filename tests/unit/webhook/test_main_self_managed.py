"""`python -m webhook --tls-mode self-managed`: refused with a reason when it cannot work, and
with an API that does not answer, waiting and saying why (no exit, no crash loop)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from webhook.__main__ import main

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("POLICY", "TLS_CERT", "TLS_KEY", "KUBECONFIG", "NAMESPACE", "TLS_MODE"):
        monkeypatch.delenv(f"VRAMGUARD_WEBHOOK_{name}", raising=False)
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


def args(tmp_path: Path, *extra: str) -> list[str]:
    policy = tmp_path / "policy.yaml"
    policy.write_text("{}\n")
    return [
        "--policy",
        str(policy),
        "--tls-mode",
        "self-managed",
        "--tls-cert",
        str(tmp_path / "tls" / "tls.crt"),
        "--tls-key",
        str(tmp_path / "tls" / "tls.key"),
        "--log-format",
        "text",
        *extra,
    ]


def test_without_a_namespace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args(tmp_path)) == 2
    err = capsys.readouterr().err
    assert (
        "python -m webhook: error: self-managed TLS needs the namespace: set POD_NAMESPACE" in err
    )


def test_without_api_access(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args(tmp_path, "--namespace", "vramguard")) == 2
    assert "--tls-mode self-managed needs API access" in capsys.readouterr().err


def test_a_dead_api_at_start_is_retried_and_said(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    log = tmp_path / "webhook.log"
    argv = args(tmp_path, "--namespace", "vramguard", "--kubeconfig", str(kubeconfig))
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "webhook", *argv],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"},
        )
    try:
        deadline = time.monotonic() + 30
        while log.read_text().count("retrying in") < 2 and time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            time.sleep(0.1)
        text = log.read_text()
        assert text.count("retrying in") >= 2, text
        assert "no serving certificate yet" in text
        assert "cannot reach the API server at https://127.0.0.1:1" in text
        assert not (tmp_path / "tls" / "tls.crt").exists()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
