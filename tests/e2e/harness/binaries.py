"""Find (building on first use) the etcd, kube-apiserver and kube-scheduler binaries, and the
real node's kubelet and sandbox ``pause`` binary.

They are built by ``tests/e2e/controlplane/build.sh`` from the Kubernetes version in
``tests/e2e/controlplane/VERSION`` into a cache outside the git tree:
``${VRAMGUARD_CACHE:-${XDG_CACHE_HOME:-~/.cache}/vramguard}/k8s-<version>/``.
Set ``VRAMGUARD_K8S_BIN_DIR`` to use binaries from another directory instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

CONTROLPLANE_DIR = Path(__file__).resolve().parent.parent / "controlplane"
BUILD_SCRIPT = CONTROLPLANE_DIR / "build.sh"


class BinariesUnavailable(RuntimeError):
    """The control-plane binaries are missing and could not be built."""


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_scheduler: Path
    kubelet: Path
    pause: Path

    @classmethod
    def in_directory(cls, directory: Path) -> Binaries:
        return cls(
            etcd=directory / "etcd",
            kube_apiserver=directory / "kube-apiserver",
            kube_scheduler=directory / "kube-scheduler",
            kubelet=directory / "kubelet",
            pause=directory / "pause",
        )

    def missing(self) -> list[Path]:
        """The control plane's binaries that are not there (the real node's aside)."""
        paths = (self.etcd, self.kube_apiserver, self.kube_scheduler)
        return [p for p in paths if not os.access(p, os.X_OK)]

    def kubelet_missing(self) -> list[Path]:
        """The real node's binaries that are not there: a VRAMGUARD_K8S_BIN_DIR may hold only
        the control plane's."""
        return [p for p in (self.kubelet, self.pause) if not os.access(p, os.X_OK)]


def kubernetes_version() -> str:
    """The pinned Kubernetes version, e.g. ``v1.36.3``."""
    return (CONTROLPLANE_DIR / "VERSION").read_text().strip()


def cache_dir(version: str | None = None) -> Path:
    """Where build.sh puts (or put) the binaries for ``version``."""
    root = os.environ.get("VRAMGUARD_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = str(Path(xdg) / "vramguard")
    return Path(root) / f"k8s-{version or kubernetes_version()}"


def ensure_binaries(*, build: bool = True, timeout: float = 3600.0) -> Binaries:
    """Return the binaries, running build.sh first if any is missing (and ``build``).

    Raises BinariesUnavailable, with build.sh's output, when they cannot be had.
    """
    override = os.environ.get("VRAMGUARD_K8S_BIN_DIR")
    if override:
        binaries = Binaries.in_directory(Path(override))
        if binaries.missing():
            raise BinariesUnavailable(
                f"VRAMGUARD_K8S_BIN_DIR={override} lacks {_names(binaries.missing())}"
            )
        return binaries

    binaries = Binaries.in_directory(cache_dir())
    if not binaries.missing() and not binaries.kubelet_missing():
        return binaries
    if not build:
        raise BinariesUnavailable(f"{_names(binaries.missing())} not built; run {BUILD_SCRIPT}")
    if shutil.which("go") is None:
        raise BinariesUnavailable(
            f"{_names(binaries.missing())} not built and no Go toolchain on PATH to build "
            f"them; install Go and run {BUILD_SCRIPT} (or set VRAMGUARD_K8S_BIN_DIR)"
        )
    _run_build_script(timeout)
    if binaries.missing() or binaries.kubelet_missing():
        raise BinariesUnavailable(
            f"{BUILD_SCRIPT} succeeded but "
            f"{_names(binaries.missing() + binaries.kubelet_missing())} are still missing"
        )
    return binaries


def _run_build_script(timeout: float) -> None:
    # Announce on the real terminal: a first build takes many minutes and pytest
    # captures output while fixtures run.
    print(
        f"\n[vramguard e2e] building Kubernetes {kubernetes_version()} control-plane binaries "
        f"with {BUILD_SCRIPT} (first build takes several minutes)...",
        file=sys.__stderr__,
        flush=True,
    )
    started = time.monotonic()
    try:
        result = subprocess.run(
            ["bash", str(BUILD_SCRIPT)],
            cwd=CONTROLPLANE_DIR,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        raise BinariesUnavailable(f"{BUILD_SCRIPT} took longer than {timeout:.0f}s") from err
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-60:])
        raise BinariesUnavailable(f"{BUILD_SCRIPT} failed with status {result.returncode}:\n{tail}")
    print(
        f"[vramguard e2e] built in {time.monotonic() - started:.0f}s",
        file=sys.__stderr__,
        flush=True,
    )


def _names(paths: list[Path]) -> str:
    return ", ".join(str(p) for p in paths)
