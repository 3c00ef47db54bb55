"""The Dockerfile and .dockerignore: the properties the manifests rely on.

The image cannot be built in every environment (no container engine), so these read the
files; hadolint runs in test_manifests.py when installed.
"""

from __future__ import annotations

import fnmatch
import json

import pytest

from .conftest import REPO

DOCKERFILE = (REPO / "Dockerfile").read_text("utf-8")
INSTRUCTIONS = [
    line.strip()
    for line in DOCKERFILE.replace("\\\n", " ").splitlines()
    if line.strip() and not line.lstrip().startswith("#")
]


def _final_stage() -> list[str]:
    starts = [i for i, line in enumerate(INSTRUCTIONS) if line.upper().startswith("FROM ")]
    return INSTRUCTIONS[starts[-1] :]


def _instruction(stage: list[str], name: str) -> str:
    (line,) = [line for line in stage if line.upper().startswith(name + " ")]
    return line.split(" ", 1)[1].strip()


def test_multi_stage_on_python_3_11_slim() -> None:
    stages = [line for line in INSTRUCTIONS if line.upper().startswith("FROM ")]
    assert len(stages) == 2
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in INSTRUCTIONS


def test_final_stage_runs_as_nonroot_65532() -> None:
    # The manifests set runAsUser 65532 and runAsNonRoot; a numeric USER lets the kubelet
    # verify non-root without an /etc/passwd lookup.
    assert _instruction(_final_stage(), "USER") == "65532:65532"


def test_entrypoint_runs_a_module_webhook_by_default() -> None:
    stage = _final_stage()
    assert json.loads(_instruction(stage, "ENTRYPOINT")) == ["python", "-m"]
    assert json.loads(_instruction(stage, "CMD")) == ["webhook"]


def test_final_stage_copies_only_the_virtualenv() -> None:
    stage = _final_stage()
    copies = [line for line in stage if line.upper().startswith("COPY ")]
    assert copies == ["COPY --from=builder /opt/vramguard /opt/vramguard"]
    assert not [line for line in stage if line.upper().startswith("RUN ")], "no build steps"
    assert "/opt/vramguard/bin" in _instruction(stage, "ENV")


def _excluded(path: str) -> bool:
    """Whether .dockerignore keeps a top-level path out of the build context
    (last matching pattern wins; `!` re-includes)."""
    excluded = False
    for raw in (REPO / ".dockerignore").read_text("utf-8").splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern):
            excluded = not negate
    return excluded


@pytest.mark.parametrize(
    "path",
    [
        ".venv",
        "tests",
        ".git",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".hypothesis",
        ".cache",
        "manifests",
        "certs/out",
        "vramguard.egg-info",
        "Makefile",
    ],
)
def test_dockerignore_keeps_out(path: str) -> None:
    assert _excluded(path), path


@pytest.mark.parametrize(
    "path", ["pyproject.toml", "README.md", "gpumem", "certs", "webhook", "extender"]
)
def test_dockerignore_keeps_what_the_build_copies(path: str) -> None:
    assert not _excluded(path), path
    assert f"COPY {path}" in DOCKERFILE or path in {"pyproject.toml", "README.md"}
