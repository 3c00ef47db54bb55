"""The Dockerfile and .dockerignore: the properties the manifests and the release rely on.

The image cannot be built in every environment (no container engine), so these read the
files; hadolint runs in test_manifests.py when installed, and the release workflow builds
the image for amd64 and arm64.
"""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib

import pytest

from .conftest import REPO

DOCKERFILE = (REPO / "Dockerfile").read_text("utf-8")
INSTRUCTIONS = [
    line.strip()
    for line in DOCKERFILE.replace("\\\n", " ").splitlines()
    if line.strip() and not line.lstrip().startswith("#")
]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))
# A tag and the digest of its multi-arch index: 64 hex digits, never a placeholder.
PINNED = re.compile(r"^python:3\.11-slim@sha256:[0-9a-f]{64}$")
OCI_FACTS = ("source", "revision", "version", "created")


def _stages() -> list[list[str]]:
    starts = [i for i, line in enumerate(INSTRUCTIONS) if line.upper().startswith("FROM ")]
    return [
        INSTRUCTIONS[a:b] for a, b in zip(starts, [*starts[1:], len(INSTRUCTIONS)], strict=True)
    ]


def _final_stage() -> list[str]:
    return _stages()[-1]


def _instruction(stage: list[str], name: str) -> str:
    (line,) = [line for line in stage if line.upper().startswith(name + " ")]
    return line.split(" ", 1)[1].strip()


def _global_args() -> dict[str, str]:
    """The ARGs before the first FROM (the only ones a FROM line can use), with defaults."""
    first = next(i for i, line in enumerate(INSTRUCTIONS) if line.upper().startswith("FROM "))
    args = {}
    for line in INSTRUCTIONS[:first]:
        if line.upper().startswith("ARG "):
            name, _, default = line.split(" ", 1)[1].partition("=")
            args[name] = default
    return args


def _wheel_packages() -> set[str]:
    """The top-level packages the wheel is built from (pyproject's packages.find include)."""
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    return {pattern.rstrip("*").rstrip(".") for pattern in include}


def test_every_stage_is_the_base_pinned_by_digest() -> None:
    stages = _stages()
    assert len(stages) == 3  # wheel (build platform), builder and final (target platform)
    assert PINNED.match(_global_args()["PYTHON_IMAGE"]), _global_args()
    for stage in stages:
        image = next(word for word in stage[0].split()[1:] if not word.startswith("--"))
        assert image == "${PYTHON_IMAGE}", stage[0]


def test_multi_arch_without_architecture_specific_steps() -> None:
    wheel, builder, final = _stages()
    # The pure-Python wheel is built natively; the stages whose files ship are the target's.
    assert wheel[0].startswith("FROM --platform=$BUILDPLATFORM ")
    assert "--platform" not in builder[0]
    assert "--platform" not in final[0]
    for line in INSTRUCTIONS:
        assert not re.search(r"amd64|x86_64|aarch64|arm64|armv", line, re.IGNORECASE), line
    # Binary wheels only: a dependency without one for the target fails the build loudly.
    (install,) = [line for line in builder if line.startswith("RUN pip ")]
    assert "--only-binary=:all:" in install


def test_final_stage_runs_as_nonroot_65532() -> None:
    # The manifests set runAsUser 65532 and runAsNonRoot; a numeric USER lets the kubelet
    # verify non-root without an /etc/passwd lookup.
    assert _instruction(_final_stage(), "USER") == "65532:65532"


def test_final_stage_carries_the_oci_labels_from_build_args() -> None:
    stage = _final_stage()
    args = {line.split(" ", 1)[1].split("=", 1)[0] for line in stage if line.startswith("ARG ")}
    labels = _instruction(stage, "LABEL")
    for fact in OCI_FACTS:
        arg = fact.upper()
        assert arg in args, f"ARG {arg} in the final stage"
        assert f'org.opencontainers.image.{fact}="${{{arg}}}"' in labels, fact
    for fact in ("title", "description", "licenses"):
        assert f"org.opencontainers.image.{fact}=" in labels, fact
    license_label = re.search(r'org\.opencontainers\.image\.licenses="([^"]+)"', labels)
    assert license_label is not None
    assert license_label.group(1) == PYPROJECT["project"]["license"]


def test_every_package_the_wheel_needs_is_copied() -> None:
    copied = {
        line.split()[1].rstrip("/") for line in _stages()[0] if line.upper().startswith("COPY ")
    }
    assert _wheel_packages() == {"gpumem", "kube", "webhook", "extender", "ops", "certs"}
    assert _wheel_packages() <= copied, _wheel_packages() - copied
    for path in _wheel_packages():
        assert not _excluded(path), f".dockerignore keeps {path} out of the context"
    # pyproject's readme is part of the build (setuptools reads it for the metadata).
    assert "COPY pyproject.toml README.md ./" in INSTRUCTIONS


def test_entrypoint_runs_a_module_webhook_by_default() -> None:
    stage = _final_stage()
    assert json.loads(_instruction(stage, "ENTRYPOINT")) == ["python", "-m"]
    assert json.loads(_instruction(stage, "CMD")) == ["webhook"]
    # Every command the image is for is a module `python -m` can run.
    for module in ("webhook", "extender", "ops"):
        assert (REPO / module / "__main__.py").is_file(), module


def test_final_stage_copies_only_the_virtualenv() -> None:
    stage = _final_stage()
    copies = [line for line in stage if line.upper().startswith("COPY ")]
    assert copies == ["COPY --from=builder /opt/vramguard /opt/vramguard"]
    assert not [line for line in stage if line.upper().startswith("RUN ")], "no build steps"
    env = _instruction(stage, "ENV")
    assert "/opt/vramguard/bin" in env
    # Read-only root filesystem: nothing tries to write bytecode next to the modules.
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert _instruction(stage, "WORKDIR") == "/tmp"


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
