"""gpumem.cgroup: a process's pod and container from /proc/<pid>/cgroup, for every cgroup
version, driver and runtime the kubelet works with."""

from __future__ import annotations

import pytest

from gpumem.cgroup import ContainerRef, container_of, runtime_container_id

UID = "1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d"
UID_ = UID.replace("-", "_")
CID = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
STATIC = "7e8f3c2a9b1d4e5f6a7b8c9d0e1f2a3b"  # a static pod: the hash of its manifest
SYSTEMD = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"

CASES = [
    # cgroup v2, systemd driver, containerd
    ("v2 systemd containerd", f"0::{SYSTEMD}/cri-containerd-{CID}.scope\n", ContainerRef(UID, CID)),
    (
        "v2 systemd guaranteed (no QoS slice)",
        f"0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope\n",
        ContainerRef(UID, CID),
    ),
    ("v2 systemd CRI-O", f"0::{SYSTEMD}/crio-{CID}.scope\n", ContainerRef(UID, CID)),
    (
        "CRI-O's conmon is in the pod, in no container",
        f"0::{SYSTEMD}/crio-conmon-{CID}.scope\n",
        ContainerRef(UID, None),
    ),
    ("v2 systemd dockershim", f"0::{SYSTEMD}/docker-{CID}.scope\n", ContainerRef(UID, CID)),
    # cgroupfs driver
    ("v2 cgroupfs", f"0::/kubepods/burstable/pod{UID}/{CID}\n", ContainerRef(UID, CID)),
    ("v2 cgroupfs guaranteed", f"0::/kubepods/pod{UID}/{CID}\n", ContainerRef(UID, CID)),
    (
        "v1 cgroupfs, one line per hierarchy",
        f"12:memory:/kubepods/besteffort/pod{UID}/{CID}\n"
        f"11:cpu,cpuacct:/kubepods/besteffort/pod{UID}/{CID}\n"
        f"1:name=systemd:/kubepods/besteffort/pod{UID}/{CID}\n",
        ContainerRef(UID, CID),
    ),
    (
        "v1 systemd docker",
        f"11:memory:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice"
        f"/docker-{CID}.scope\n3:pids:/system.slice/docker.service\n",
        ContainerRef(UID, CID),
    ),
    (
        "hybrid: an empty unified line, the pod in the v1 lines",
        f"0::/\n4:memory:/kubepods/burstable/pod{UID}/{CID}\n",
        ContainerRef(UID, CID),
    ),
    (
        "a kubelet with a cgroup root of its own (kind)",
        f"0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
        f"kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope\n",
        ContainerRef(UID, CID),
    ),
    (
        "an agent in a cgroup namespace of its own sees relative paths",
        f"0::/../../kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope\n",
        ContainerRef(UID, CID),
    ),
    (
        "a sub-cgroup the container made inside its own",
        f"0::{SYSTEMD}/cri-containerd-{CID}.scope/init.scope\n",
        ContainerRef(UID, CID),
    ),
    (
        "a static pod's undashed UID",
        f"0::/kubepods/besteffort/pod{STATIC}/{CID}\n",
        ContainerRef(STATIC, CID),
    ),
    ("in the pod's cgroup, in no container", f"0::{SYSTEMD}\n", ContainerRef(UID, None)),
    # nobody's
    ("a host service", "0::/system.slice/nvidia-persistenced.service\n", None),
    ("a login shell", "0::/user.slice/user-1000.slice/session-3.scope\n", None),
    ("the root cgroup", "0::/\n", None),
    ("a pod-like name outside kubepods", f"0::/system.slice/pod{UID_}.slice\n", None),
    ("empty (a kernel thread)", "", None),
    ("garbage", "not a cgroup file\n\x00\x01", None),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_container_of(text: str, expected: ContainerRef | None) -> None:
    assert container_of(text) == expected


@pytest.mark.parametrize(
    ("status_id", "expected"),
    [(f"containerd://{CID}", CID), (f"cri-o://{CID}", CID), (f"docker://{CID}", CID), (CID, CID)],
)
def test_runtime_container_id_is_what_the_cgroup_names(status_id: str, expected: str) -> None:
    assert runtime_container_id(status_id) == expected
