"""Which workload a pod belongs to (pure): its controller, followed up the ownerReferences
(a Deployment through its ReplicaSet, a CronJob through its Job), and, for pods Prometheus
remembers but the API no longer has, by the names controllers give their pods.

A pod in the API names its controller (the ownerReference with `controller: true`); the
chain is followed through the controllers listed here (ReplicaSet, Deployment, StatefulSet,
DaemonSet, Job, CronJob), and a controller of another kind (an operator's own) is the
workload itself. A pod without a controller is its own workload (kind Pod).

A pod that is gone (recycled by the watchdog, replaced by a rollout, a finished CronJob run
whose Job was cleaned up) still has its history, so it is matched by name against the
controllers of its namespace as they name their pods: `<replicaset>-<5>`,
`<deployment>-<pod-template-hash>-<5>`, `<statefulset>-<ordinal>`, `<daemonset>-<5>`,
`<job>-<5>` (`<job>-<index>-<5>` for Indexed Jobs) and `<cronjob>-<scheduled minute>-<5>`,
where <5> is the random suffix of generateName (its base cut to 58 characters). The longest
matching controller name wins (a Deployment `immich-ml` over a Deployment `immich`); a name
no controller explains is left out, and said so by the caller.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gpumem.objects import mapping, metadata_text, sequence

# What the commands list, in the order the chain is followed.
CONTROLLER_KINDS = ("ReplicaSet", "Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")
BARE_POD = "Pod"
# generateName: the base is cut to 58 characters and 5 random characters are appended
# (k8s.io/apiserver names.SimpleNameGenerator), from the alphabet of k8s.io/apimachinery's
# util/rand, which has no vowels (no words by chance), nor 0, 1 and 3.
_GENERATED_BASE = 58
_ALPHABET = "[bcdfghjklmnpqrstvwxz2456789]"
_SUFFIX = _ALPHABET + "{5}"
# The ReplicaSets of a Deployment are `<deployment>-<pod-template-hash>`, the hash a 32-bit
# FNV safe-encoded in the same alphabet (at most 10 characters).
_HASH = _ALPHABET + "{1,10}"
_MAX_CHAIN = 4  # Pod -> ReplicaSet -> Deployment, Pod -> Job -> CronJob, with room to spare


@dataclass(frozen=True, slots=True, order=True)
class WorkloadKey:
    namespace: str
    kind: str
    name: str

    @property
    def label(self) -> str:
        """`Deployment/immich-ml`, as kubectl names it."""
        return f"{self.kind}/{self.name}"


@dataclass(frozen=True, slots=True)
class Controller:
    """A controller object as far as workloads are concerned."""

    kind: str
    namespace: str
    name: str
    # Its own controller (kind, name), where it has one: a Deployment for a ReplicaSet.
    owner: tuple[str, str] | None
    # Its pod template (metadata and spec), None where the kind has none known here.
    template: Mapping[str, Any] | None


def controller_of(raw: Mapping[str, Any]) -> tuple[str, str] | None:
    """The (kind, name) of an object's controlling ownerReference, if it has one."""
    for item in sequence(mapping(raw.get("metadata")).get("ownerReferences")):
        ref = mapping(item)
        kind, name = ref.get("kind"), ref.get("name")
        if ref.get("controller") is True and isinstance(kind, str) and isinstance(name, str):
            return kind, name
    return None


def pod_template(kind: str, raw: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The pod template of a controller object: spec.template, a CronJob's
    spec.jobTemplate.spec.template."""
    spec = mapping(raw.get("spec"))
    if kind == "CronJob":
        spec = mapping(mapping(spec.get("jobTemplate")).get("spec"))
    template = spec.get("template")
    return template if isinstance(template, Mapping) else None


def controllers_from(listed: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[Controller]:
    """Controllers from raw lists keyed by kind (CONTROLLER_KINDS)."""
    found = []
    for kind, items in listed.items():
        for raw in items:
            name = metadata_text(raw, "name")
            if not name:
                continue
            found.append(
                Controller(
                    kind=kind,
                    namespace=metadata_text(raw, "namespace"),
                    name=name,
                    owner=controller_of(raw),
                    template=pod_template(kind, raw),
                )
            )
    return found


def _generated(base: str) -> str:
    """The pattern of a name generateName makes from `base-`."""
    return re.escape(f"{base}-"[:_GENERATED_BASE]) + _SUFFIX


def _name_pattern(controller: Controller) -> re.Pattern[str]:
    name = controller.name
    if controller.kind == "StatefulSet":
        pattern = re.escape(name) + r"-\d+"
    elif controller.kind == "Deployment":
        pattern = re.escape(f"{name}-") + _HASH + "-" + _SUFFIX
    elif controller.kind == "Job":
        # Indexed Jobs name their pods <job>-<index>-<suffix>.
        pattern = f"(?:{_generated(name)}|{re.escape(name)}-\\d+-{_SUFFIX})"
    elif controller.kind == "CronJob":
        # Its Jobs are <cronjob>-<scheduled time in minutes>, whose pods are as a Job's.
        pattern = re.escape(f"{name}-") + r"\d+(?:-\d+)?-" + _SUFFIX
    else:  # ReplicaSet, DaemonSet
        pattern = _generated(name)
    return re.compile(pattern)


class Workloads:
    """The controllers of a cluster, indexed to answer "whose pod is this"."""

    def __init__(self, controllers: Iterable[Controller]) -> None:
        self._by_key: dict[WorkloadKey, Controller] = {}
        for controller in controllers:
            key = WorkloadKey(controller.namespace, controller.kind, controller.name)
            self._by_key[key] = controller
        # Per namespace, the name patterns, longest name first (the most specific wins).
        self._patterns: dict[str, list[tuple[re.Pattern[str], Controller]]] = {}
        named = [c for c in self._by_key.values() if c.kind in CONTROLLER_KINDS]
        for controller in sorted(
            named, key=lambda c: (-len(c.name), CONTROLLER_KINDS.index(c.kind), c.name)
        ):
            self._patterns.setdefault(controller.namespace, []).append(
                (_name_pattern(controller), controller)
            )

    def of_pod(self, raw: Mapping[str, Any]) -> WorkloadKey:
        """The workload of a pod in the API: its controller's, up the chain."""
        namespace = metadata_text(raw, "namespace")
        owner = controller_of(raw)
        if owner is None:
            return WorkloadKey(namespace, BARE_POD, metadata_text(raw, "name"))
        return self._top(WorkloadKey(namespace, *owner))

    def by_name(self, namespace: str, pod: str) -> WorkloadKey | None:
        """The workload of a pod the API no longer has, from the name its controller would
        have given it; None when no controller of its namespace explains the name."""
        for pattern, controller in self._patterns.get(namespace, ()):
            if pattern.fullmatch(pod):
                return self._top(WorkloadKey(namespace, controller.kind, controller.name))
        return None

    def template(self, key: WorkloadKey) -> Mapping[str, Any] | None:
        """The workload's pod template, where its controller is one listed here."""
        controller = self._by_key.get(key)
        return controller.template if controller is not None else None

    def known(self, key: WorkloadKey) -> bool:
        return key in self._by_key

    def _top(self, key: WorkloadKey) -> WorkloadKey:
        """Up the controllers' own controllers (a ReplicaSet's Deployment), as far as the
        objects are listed here."""
        for _ in range(_MAX_CHAIN):
            controller = self._by_key.get(key)
            if controller is None or controller.owner is None:
                return key
            kind, name = controller.owner
            key = WorkloadKey(key.namespace, kind, name)
        return key
