"""Which pod and container a process runs in, from its /proc/<pid>/cgroup.

The kubelet puts every container in a cgroup under its pod's, named after the pod's UID, and
the runtime names the container's cgroup after the container ID. The forms, by cgroup driver:

    systemd   /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/
              cri-containerd-<id>.scope    (CRI-O: crio-<id>.scope, dockershim: docker-<id>.scope)
    cgroupfs  /kubepods/burstable/pod<uid>/<id>

Guaranteed pods have no QoS level (`kubepods-pod<uid_>.slice`, `/kubepods/pod<uid>`); systemd
writes the UID's dashes as underscores; a kubelet with a cgroup root of its own (kind's
`/kubelet`) prefixes the slices (`kubelet-kubepods-...`); an agent in a cgroup namespace of its
own sees paths relative to its cgroup (`/../../kubepods-...`). cgroup v1 lists one line per
hierarchy (`12:memory:/kubepods/...`), v2 one unified line (`0::/kubepods.slice/...`); every
line names the same pod, so the unified one is read first and the others in order.

A static pod's UID is a 32-digit hash without dashes; a process outside any pod (the driver's
persistence daemon, a host shell) has none, and is nobody's here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_UID = r"[0-9a-f]{8}[-_]?[0-9a-f]{4}[-_]?[0-9a-f]{4}[-_]?[0-9a-f]{4}[-_]?[0-9a-f]{12}"
# The pod's cgroup: its own path segment, under a kubepods one.
_POD_SYSTEMD = re.compile(rf"(?:^|-)pod({_UID})\.slice$")
_POD_CGROUPFS = re.compile(rf"^pod({_UID})$")
# The container's cgroup, below the pod's. CRI-O's conmon (the container's monitor) sits in
# the pod as crio-conmon-<id>.scope: not the container itself.
_CONTAINER_SCOPE = re.compile(r"^(?:cri-containerd|crio|docker)-([0-9a-f]{12,64})\.scope$")
_CONTAINER_BARE = re.compile(r"^([0-9a-f]{64})$")


@dataclass(frozen=True)
class ContainerRef:
    """A process's pod, by UID (dashed, as the API writes it), and its container's runtime
    ID (None for a process in the pod's cgroup but in no container's)."""

    pod_uid: str
    container_id: str | None


def container_of(cgroup_text: str) -> ContainerRef | None:
    """The pod and container of a /proc/<pid>/cgroup; None for a process outside any pod."""
    paths: list[str] = []
    unified: list[str] = []
    for line in cgroup_text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        (unified if hierarchy == "0" and not controllers else paths).append(path)
    for path in unified + paths:
        ref = _from_path(path)
        if ref is not None:
            return ref
    return None


def _from_path(path: str) -> ContainerRef | None:
    segments = [s for s in path.split("/") if s and s != ".."]
    for at, segment in enumerate(segments):
        if "kubepods" not in segment and not any("kubepods" in s for s in segments[:at]):
            continue
        match = _POD_SYSTEMD.search(segment) or _POD_CGROUPFS.match(segment)
        if match is None:
            continue
        uid = pod_uid(match.group(1))
        container = next(
            (cid for s in segments[at + 1 :] if (cid := _container_id(s)) is not None), None
        )
        return ContainerRef(uid, container)
    return None


def _container_id(segment: str) -> str | None:
    match = _CONTAINER_SCOPE.match(segment) or _CONTAINER_BARE.match(segment)
    return match.group(1) if match else None


def pod_uid(text: str) -> str:
    """A UID as the API writes it: systemd's underscores back to dashes; a static pod's
    undashed hash as it is."""
    return text.replace("_", "-")


def runtime_container_id(status_id: str) -> str:
    """The bare ID of a containerStatuses[].containerID (`containerd://<id>`, `cri-o://<id>`,
    `docker://<id>`), as the cgroup path names it."""
    return status_id.split("://", 1)[-1]


__all__ = ["ContainerRef", "container_of", "pod_uid", "runtime_container_id"]
