"""The GitHub Actions workflows: actionlint finds nothing (when installed; `make tools` installs
it), every action is pinned by commit, CI is `bash .ci/run`, and a release builds both
architectures, scans before it pushes, and pushes to the forge's registry with attestations."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import REPO, CachedTool, makefile_variable

WORKFLOWS = REPO / ".github" / "workflows"
ACTIONLINT = CachedTool(
    "actionlint", "ACTIONLINT_VERSION", "github.com/rhysd/actionlint/cmd/actionlint"
)
PINNED_USES = re.compile(r"^\s*(?:-\s+)?uses:\s+(\S+)@([0-9a-f]{40}) # v\d+(\.\d+)*\s*$")


def workflow(name: str) -> dict[str, Any]:
    loaded: dict[Any, Any] = yaml.safe_load((WORKFLOWS / name).read_text("utf-8"))
    # YAML 1.1 reads the key `on` as the boolean true.
    if True in loaded:
        loaded["on"] = loaded.pop(True)
    return loaded


def steps(document: dict[str, Any], job: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = document["jobs"][job]["steps"]
    return found


def step_using(document: dict[str, Any], job: str, action: str) -> list[dict[str, Any]]:
    return [s for s in steps(document, job) if str(s.get("uses", "")).startswith(action + "@")]


def test_actionlint_finds_nothing() -> None:
    actionlint = ACTIONLINT.find()
    result = subprocess.run(
        [str(actionlint), "-color=false", "-oneline"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_make_tools_installs_actionlint() -> None:
    makefile = (REPO / "Makefile").read_text("utf-8")
    (tools,) = re.findall(r"^tools:([^#\n]*)", makefile, re.MULTILINE)
    assert "$(ACTIONLINT)" in tools.split()
    assert re.match(r"^v\d+\.\d+\.\d+$", makefile_variable("ACTIONLINT_VERSION"))


@pytest.mark.parametrize("path", sorted(WORKFLOWS.glob("*.y*ml")), ids=lambda p: p.name)
def test_every_action_is_pinned_by_commit(path: Path) -> None:
    lines = [line for line in path.read_text("utf-8").splitlines() if "uses:" in line]
    assert lines
    for line in lines:
        if "uses: ./" in line:  # a workflow of this repository
            continue
        assert PINNED_USES.match(line), f"{path.name}: {line.strip()}"


def test_ci_runs_the_projects_entry_point() -> None:
    ci = workflow("ci.yaml")
    assert {"push", "pull_request", "workflow_call"} <= set(ci["on"])
    assert ci["permissions"] == {"contents": "read"}
    runs = [s["run"] for s in steps(ci, "test") if "run" in s]
    assert runs == ["sudo --preserve-env=PATH,HOME,CI,GITHUB_ACTIONS bash .ci/run"]
    (python,) = step_using(ci, "test", "actions/setup-python")
    assert python["with"]["python-version"] == "3.11"


def test_release_scans_then_pushes_both_architectures_with_attestations() -> None:
    release = workflow("release.yaml")
    assert release["on"] == {"push": {"tags": ["v*"]}}
    assert release["jobs"]["ci"]["uses"] == "./.github/workflows/ci.yaml"
    image = release["jobs"]["image"]
    assert image["needs"] == "ci"
    assert image["permissions"] == {"contents": "read", "packages": "write"}

    names = [str(s.get("uses", s.get("name"))).split("@")[0] for s in steps(release, "image")]
    scan, push = names.index("aquasecurity/trivy-action"), names.index("docker/login-action")
    assert scan < push, "the image is scanned before the registry is even logged in to"

    build_for_scan, build_and_push = step_using(release, "image", "docker/build-push-action")
    assert build_for_scan["with"]["push"] is False
    assert build_for_scan["with"]["load"] is True
    (trivy,) = step_using(release, "image", "aquasecurity/trivy-action")
    assert trivy["with"]["image-ref"] == build_for_scan["with"]["tags"]
    assert trivy["with"]["exit-code"] == "1"

    pushed = build_and_push["with"]
    assert pushed["push"] is True
    assert set(pushed["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    assert pushed["provenance"] == "mode=max"
    assert pushed["sbom"] is True
    (login,) = step_using(release, "image", "docker/login-action")
    assert login["with"]["registry"] == "ghcr.io"
    (naming,) = [s for s in steps(release, "image") if s.get("id") == "image"]
    assert "ghcr.io/${OWNER,,}/vramguard" in naming["run"]

    # The build passes every OCI fact the Dockerfile takes as an ARG.
    dockerfile = (REPO / "Dockerfile").read_text("utf-8")
    for build in (build_for_scan, build_and_push):
        args = {line.split("=", 1)[0] for line in build["with"]["build-args"].splitlines()}
        assert args == {"VERSION", "REVISION", "CREATED", "SOURCE"}
        for arg in args:
            assert re.search(rf"^ARG {arg}=", dockerfile, re.MULTILINE), arg
