"""`python -m webhook` refuses to start, with a message, when its inputs are unusable."""

from __future__ import annotations

from pathlib import Path

import pytest

from webhook.__main__ import main


@pytest.fixture(autouse=True)
def no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("POLICY", "TLS_CERT", "TLS_KEY", "KUBECONFIG"):
        monkeypatch.delenv(f"VRAMGUARD_WEBHOOK_{name}", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def test_missing_flags_are_named(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(["--policy", "p.yaml"], capsys)
    assert code == 2
    assert "--tls-cert: Field required" in err
    assert "--tls-key: Field required" in err


def test_unreadable_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    code, err = run(
        ["--policy", str(missing), "--tls-cert", "c", "--tls-key", "k", "--log-format", "text"],
        capsys,
    )
    assert code == 2
    assert f"{missing}: cannot read policy file" in err


def test_invalid_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("defaults: {gpumemMiB: 0}\n")
    code, err = run(["--policy", str(policy), "--tls-cert", "c", "--tls-key", "k"], capsys)
    assert code == 2
    assert "defaults.gpumemMiB" in err


def test_policy_that_is_not_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_bytes(b"defaults: {}\n\xff\xfe\n")
    code, err = run(["--policy", str(policy), "--tls-cert", "c", "--tls-key", "k"], capsys)
    assert code == 2
    assert "not UTF-8" in err


def test_unusable_certificate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("{}\n")
    (tmp_path / "tls.crt").write_text("not a certificate")
    (tmp_path / "tls.key").write_text("not a key")
    code, err = run(
        [
            "--policy",
            str(policy),
            "--tls-cert",
            str(tmp_path / "tls.crt"),
            "--tls-key",
            str(tmp_path / "tls.key"),
        ],
        capsys,
    )
    assert code == 2
    assert "cannot load TLS files" in err


def test_broken_kubeconfig(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from certs.authority import issue_server_cert, new_ca, subject_names  # noqa: PLC0415
    from certs.files import write_pair  # noqa: PLC0415

    policy = tmp_path / "policy.yaml"
    policy.write_text("{}\n")
    write_pair(
        tmp_path, issue_server_cert(new_ca(), subject_names(["localhost"])), "t.crt", "t.key"
    )
    (tmp_path / "kubeconfig").write_text("clusters: []\n")
    code, err = run(
        [
            "--policy",
            str(policy),
            "--tls-cert",
            str(tmp_path / "t.crt"),
            "--tls-key",
            str(tmp_path / "t.key"),
            "--kubeconfig",
            str(tmp_path / "kubeconfig"),
        ],
        capsys,
    )
    assert code == 2
    assert "cannot use kubeconfig" in err
