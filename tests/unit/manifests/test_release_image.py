"""One version and one image name from the release to every install.

The release workflow pushes ghcr.io/<owner>/vramguard:<tag>; the kustomize manifests and the
Helm chart must pull exactly the image the project's release of this version pushes, or a new
user's first install waits on an image that does not exist (ImagePullBackOff). So: one version
(pyproject, the chart, the manifests' labels and image tags), one repository, and a release
that refuses a tag naming any other version.
"""

from __future__ import annotations

import os
import subprocess
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import BASE, INSTALLS, MANIFESTS, REPO, K8sObject, load_all, objects
from .test_workflows import steps, workflow

# The project's own organization on the forge; a fork overrides the image, never this file.
IMAGE_REPOSITORY = "ghcr.io/vramguard/vramguard"
CHART = MANIFESTS / "helm" / "vramguard"
CHART_TEMPLATES = CHART / "templates"
# The one image whose tag is not the release's: a locally built image loaded into kind.
KIND_IMAGE = "vramguard:dev"


def version() -> str:
    project: Mapping[str, Any] = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))
    found: str = project["project"]["version"]
    return found


def containers(obj: K8sObject) -> Iterator[Mapping[str, Any]]:
    """Every container of a workload, a pod template at any depth (CronJob's is two down)."""
    spec = obj.get("spec") or {}
    while isinstance(spec, Mapping):
        if "containers" in spec:
            for key in ("initContainers", "containers", "ephemeralContainers"):
                yield from spec.get(key) or []
            return
        spec = (spec.get("jobTemplate") or spec.get("template") or {}).get("spec")


def vramguard_images(docs: list[K8sObject]) -> list[str]:
    # Third-party images (kube-scheduler, busybox in the preflight example) are pinned on
    # their own and checked elsewhere.
    return [
        c["image"]
        for doc in docs
        for c in containers(doc)
        if "vramguard" in c["image"].rsplit("/", 1)[-1]
    ]


def source_objects() -> list[K8sObject]:
    paths = (p for p in MANIFESTS.rglob("*.yaml") if not p.is_relative_to(CHART_TEMPLATES))
    return [doc for path in sorted(paths) for doc in objects(path)]


def test_one_version_in_pyproject_the_chart_and_the_manifests() -> None:
    chart: Mapping[str, Any] = yaml.safe_load((CHART / "Chart.yaml").read_text("utf-8"))
    assert chart["version"] == version()
    assert chart["appVersion"] == version()
    (kustomization,) = load_all(BASE / "kustomization.yaml")
    (labels,) = kustomization["labels"]
    assert labels["pairs"]["app.kubernetes.io/version"] == version()


def test_every_manifest_pulls_the_released_image() -> None:
    images = vramguard_images(source_objects())
    # webhook, extender, advertiser, watchdog, node agent, the preflight example.
    assert len(images) >= 6, images
    assert set(images) == {f"{IMAGE_REPOSITORY}:{version()}"}


def test_every_install_pulls_the_released_image_but_kind(
    built: dict[str, list[K8sObject]],
) -> None:
    for install in INSTALLS:
        expected = KIND_IMAGE if install == "kind" else f"{IMAGE_REPOSITORY}:{version()}"
        images = vramguard_images(built[install])
        assert images, install
        assert set(images) == {expected}, install


def test_chart_defaults_to_the_released_image() -> None:
    values: Mapping[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text("utf-8"))
    image = values["images"]["vramguard"]
    # An empty tag is the chart's appVersion (checked equal to the version above).
    assert (image["repository"], image["tag"], image["digest"]) == (IMAGE_REPOSITORY, "", "")


def test_release_pushes_where_the_manifests_pull_for_the_projects_owner(tmp_path: Path) -> None:
    (naming,) = [s for s in steps(workflow("release.yaml"), "image") if s.get("id") == "image"]
    # Owner names may have capitals; registry paths may not.
    output = tmp_path / "output"
    output.touch()
    subprocess.run(
        ["bash", "-e", "-c", naming["run"]],
        env={**os.environ, "OWNER": "VRAMGuard", "GITHUB_OUTPUT": str(output)},
        check=True,
    )
    assert output.read_text("utf-8") == f"name={IMAGE_REPOSITORY}\n"


@pytest.mark.parametrize(
    ("tag", "accepted"),
    [(f"v{version()}", True), ("v99.0.0", False), (version(), False), (f"v{version()}-rc1", False)],
)
def test_release_refuses_a_tag_that_is_not_the_version(tag: str, accepted: bool) -> None:
    (check,) = [
        s
        for s in steps(workflow("release.yaml"), "image")
        if s.get("name") == "tag matches the version"
    ]
    assert check["env"] == {"TAG": "${{ github.ref_name }}"}
    result = subprocess.run(
        ["bash", "-e", "-c", check["run"]],
        cwd=REPO,
        env={**os.environ, "TAG": tag},
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode == 0) == accepted, result.stdout + result.stderr
