"""Which workload a pod belongs to: up the ownerReferences for pods in the API, by the names
controllers give their pods for pods that are gone."""

from __future__ import annotations

from typing import Any

import pytest

from gpumem.workloads import Controller, WorkloadKey, Workloads, controllers_from, pod_template

NS = "immich"


def owned(kind: str, name: str, *, controller: bool = True) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "apps/v1",
            "kind": kind,
            "name": name,
            "uid": f"uid-{name}",
            "controller": controller,
        }
    ]


def obj(
    kind: str,
    name: str,
    *,
    namespace: str = NS,
    owner: tuple[str, str] | None = None,
    template: dict[str, Any] | None = None,
) -> dict[str, Any]:
    raw: dict[str, Any] = {"kind": kind, "metadata": {"name": name, "namespace": namespace}}
    if owner is not None:
        raw["metadata"]["ownerReferences"] = owned(*owner)
    spec: dict[str, Any] = {}
    if template is not None:
        if kind == "CronJob":
            spec = {"jobTemplate": {"spec": {"template": template}}}
        else:
            spec = {"template": template}
    raw["spec"] = spec
    return raw


TEMPLATE = {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "main"}]}}

LISTED = {
    "ReplicaSet": [
        obj("ReplicaSet", "immich-ml-6b7f9c8d5", owner=("Deployment", "immich-ml")),
        obj("ReplicaSet", "immich-5d8f7c9b4", owner=("Deployment", "immich")),
        obj("ReplicaSet", "bare-rs", template=TEMPLATE),
        obj("ReplicaSet", "rollout-7c9", owner=("Rollout", "canary")),
    ],
    "Deployment": [
        obj("Deployment", "immich-ml", template=TEMPLATE),
        obj("Deployment", "immich", template=TEMPLATE),
    ],
    "StatefulSet": [obj("StatefulSet", "llama-swap", template=TEMPLATE)],
    "DaemonSet": [obj("DaemonSet", "frigate", template=TEMPLATE)],
    "Job": [
        obj("Job", "chatterbox-bake-29000060", owner=("CronJob", "chatterbox-bake")),
        obj("Job", "migrate", template=TEMPLATE),
    ],
    "CronJob": [obj("CronJob", "chatterbox-bake", template=TEMPLATE)],
}


@pytest.fixture
def workloads() -> Workloads:
    return Workloads(controllers_from(LISTED))


def pod(name: str, owner: tuple[str, str] | None = None, namespace: str = NS) -> dict[str, Any]:
    raw: dict[str, Any] = {"metadata": {"name": name, "namespace": namespace}}
    if owner is not None:
        raw["metadata"]["ownerReferences"] = owned(*owner)
    return raw


@pytest.mark.parametrize(
    ("owner", "workload"),
    [
        (("ReplicaSet", "immich-ml-6b7f9c8d5"), ("Deployment", "immich-ml")),
        (("ReplicaSet", "bare-rs"), ("ReplicaSet", "bare-rs")),
        # A controller of a kind vramguard does not list is the workload itself.
        (("ReplicaSet", "rollout-7c9"), ("Rollout", "canary")),
        (("StatefulSet", "llama-swap"), ("StatefulSet", "llama-swap")),
        (("DaemonSet", "frigate"), ("DaemonSet", "frigate")),
        (("Job", "chatterbox-bake-29000060"), ("CronJob", "chatterbox-bake")),
        (("Job", "migrate"), ("Job", "migrate")),
        # An owner the lists do not have (deleted, not readable) is taken as it is named.
        (("ReplicaSet", "gone-123"), ("ReplicaSet", "gone-123")),
        (None, ("Pod", "portal-stt")),
    ],
)
def test_a_pod_in_the_api_belongs_to_its_controllers_controller(
    workloads: Workloads, owner: tuple[str, str] | None, workload: tuple[str, str]
) -> None:
    assert workloads.of_pod(pod("portal-stt", owner)) == WorkloadKey(NS, *workload)


def test_an_owner_reference_that_is_not_the_controller_is_not_followed(
    workloads: Workloads,
) -> None:
    raw = pod("p")
    raw["metadata"]["ownerReferences"] = owned(
        "ReplicaSet", "immich-ml-6b7f9c8d5", controller=False
    )
    assert workloads.of_pod(raw) == WorkloadKey(NS, "Pod", "p")


@pytest.mark.parametrize(
    ("name", "workload"),
    [
        # The ReplicaSet still listed, and one a rollout deleted long ago.
        ("immich-ml-6b7f9c8d5-x2x4z", ("Deployment", "immich-ml")),
        ("immich-ml-5c4d8b7f6-k8q2m", ("Deployment", "immich-ml")),
        # A Deployment whose name is a prefix of another's keeps its own pods only.
        ("immich-5d8f7c9b4-bcdfg", ("Deployment", "immich")),
        ("immich-7f6c5d4b2-fghjk", ("Deployment", "immich")),
        ("llama-swap-0", ("StatefulSet", "llama-swap")),
        ("llama-swap-12", ("StatefulSet", "llama-swap")),
        ("frigate-w8z4k", ("DaemonSet", "frigate")),
        ("migrate-9xk2p", ("Job", "migrate")),
        ("migrate-3-9xk2p", ("Job", "migrate")),  # an Indexed Job's
        # A run whose Job was cleaned up: the CronJob's.
        ("chatterbox-bake-28999980-q7w2n", ("CronJob", "chatterbox-bake")),
        ("bare-rs-zz9x2", ("ReplicaSet", "bare-rs")),
    ],
)
def test_a_gone_pod_is_matched_by_the_name_its_controller_gave_it(
    workloads: Workloads, name: str, workload: tuple[str, str]
) -> None:
    assert workloads.by_name(NS, name) == WorkloadKey(NS, *workload)


@pytest.mark.parametrize(
    ("namespace", "name"),
    [
        (NS, "portal-stt"),  # a bare pod that is gone: nothing explains it
        (NS, "immich-ml-6b7f9c8d5"),  # no random suffix
        (NS, "immich-ml-6b7f9c8d5-abcde"),  # a suffix generateName never makes (vowels)
        (NS, "llama-swap-a"),  # not an ordinal
        (NS, "frigate-w8z4k-extra"),
        ("elsewhere", "frigate-w8z4k"),  # another namespace's controller
    ],
)
def test_a_name_no_controller_explains_is_none(
    workloads: Workloads, namespace: str, name: str
) -> None:
    assert workloads.by_name(namespace, name) is None


def test_generated_names_are_matched_with_their_base_cut_to_58_characters() -> None:
    long_name = "a-very-long-replicaset-name-that-goes-on-and-on-and-on-abcdef"
    assert len(long_name) > 58
    workloads = Workloads(controllers_from({"ReplicaSet": [obj("ReplicaSet", long_name)]}))
    generated = f"{long_name}-"[:58] + "x2x4z"
    assert workloads.by_name(NS, generated) == WorkloadKey(NS, "ReplicaSet", long_name)
    assert workloads.by_name(NS, f"{long_name}-x2x4z") is None


def test_templates_are_read_from_spec_template_and_a_cronjobs_job_template(
    workloads: Workloads,
) -> None:
    assert workloads.template(WorkloadKey(NS, "Deployment", "immich-ml")) == TEMPLATE
    assert workloads.template(WorkloadKey(NS, "CronJob", "chatterbox-bake")) == TEMPLATE
    assert workloads.template(WorkloadKey(NS, "Rollout", "canary")) is None
    assert pod_template("CronJob", {"spec": {"template": TEMPLATE}}) is None


def test_objects_without_a_name_are_skipped() -> None:
    assert controllers_from({"Deployment": [{"metadata": {"namespace": NS}}]}) == []
    assert controllers_from({"Deployment": [obj("Deployment", "d")]}) == [
        Controller("Deployment", NS, "d", None, None)
    ]
