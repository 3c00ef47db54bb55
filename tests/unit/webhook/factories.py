"""Builders for raw pods and admission requests, shaped like what the API server sends."""

from __future__ import annotations

from typing import Any

import jsonpatch

from gpumem.policy import Policy, parse_policy
from webhook.decide import decide
from webhook.models import AdmissionRequest
from webhook.responses import Reply
from webhook.view import ClusterView

GPUMEM = "vramguard.io/gpumem"
GPU = "nvidia.com/gpu"

POLICY_YAML = """
gpuResourceNames: ["nvidia.com/gpu", "amd.com/gpu"]
gpumemResourceName: vramguard.io/gpumem
schedulerName: vramguard-scheduler
excludedNamespaces: [kube-system]
defaults:
  priorityClassName: tier-2-gpu
  gpumemMiB: 1024
  maxGpumemMiB: 8192
namespaces:
  immich: {priorityClassName: tier-1-gpu, gpumemMiB: 3000}
  strict: {requireDeclaration: true}
  uncapped: {maxGpumemMiB: null}
  classless: {priorityClassName: null}
  generous: {gpumemMiB: 9000, maxGpumemMiB: 9000}
namespaceLabels:
  tier: {"0": tier-0-core}
"""

ALL_CLASSES = frozenset({"tier-0-core", "tier-1-gpu", "tier-2-gpu", "cluster-default", "mine"})
# What a cluster with API access looks like: classes known, one of them the globalDefault.
CLUSTER = ClusterView(
    namespace_labels={"labelled": {"tier": "0"}, "immich": {}},
    priority_classes=ALL_CLASSES,
    global_default_class="cluster-default",
)
NO_API = ClusterView()


def make_policy(**changes: Any) -> Policy:
    policy = parse_policy(POLICY_YAML, "test policy")
    return policy.model_copy(update=changes) if changes else policy


def container(
    name: str = "app",
    requests: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    if requests is not None:
        resources["requests"] = requests
    if limits is not None:
        resources["limits"] = limits
    return {"name": name, "image": "registry.example/app:1", "resources": resources, **fields}


def gpu_container(name: str = "app", **fields: Any) -> dict[str, Any]:
    """A container asking for one GPU and no GPU memory, as after API defaulting."""
    return container(name, requests={GPU: "1"}, limits={GPU: "1"}, **fields)


def pod(
    *containers: dict[str, Any],
    init_containers: list[dict[str, Any]] | None = None,
    namespace: str = "immich",
    **spec: Any,
) -> dict[str, Any]:
    """A pod after API defaulting: default-scheduler, priority 0, PreemptLowerPriority."""
    body: dict[str, Any] = {
        "containers": list(containers) or [gpu_container()],
        "schedulerName": "default-scheduler",
        "priority": 0,
        "preemptionPolicy": "PreemptLowerPriority",
        "restartPolicy": "Always",
    }
    if init_containers is not None:
        body["initContainers"] = init_containers
    body.update(spec)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "app-", "namespace": namespace, "labels": {"app": "x"}},
        "spec": {k: v for k, v in body.items() if v is not None},
    }


def request(
    obj: dict[str, Any] | None,
    *,
    namespace: str | None = None,
    operation: str = "CREATE",
    kind: str = "Pod",
    group: str = "",
    sub_resource: str = "",
    dry_run: bool = False,
) -> AdmissionRequest:
    if namespace is None:
        namespace = (obj or {}).get("metadata", {}).get("namespace", "")
    return AdmissionRequest.model_validate(
        {
            "uid": "0b4c1c4e-7d76-4b8a-9b1a-3f0e2c9d8a71",
            "kind": {"group": group, "version": "v1", "kind": kind},
            "resource": {"group": group, "version": "v1", "resource": kind.lower() + "s"},
            "subResource": sub_resource,
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
            "object": obj,
            "oldObject": obj if operation == "UPDATE" else None,
            "dryRun": dry_run,
        }
    )


def applied(original: dict[str, Any], decision: Reply) -> dict[str, Any]:
    """The pod after the decision's patch, applied the way the API server does."""
    result: dict[str, Any] = jsonpatch.apply_patch(original, list(decision.patch))
    return result


def decide_pod(
    obj: dict[str, Any],
    policy: Policy | None = None,
    cluster: ClusterView = CLUSTER,
    **request_fields: Any,
) -> Reply:
    return decide(request(obj, **request_fields), policy or make_policy(), cluster)


def gpumem_of(obj: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """container name -> (request, limit) of GPU memory, for containers that have either."""
    found = {}
    for list_name in ("initContainers", "containers"):
        for item in obj["spec"].get(list_name, []):
            resources = item.get("resources") or {}
            request_value = (resources.get("requests") or {}).get(GPUMEM)
            limit_value = (resources.get("limits") or {}).get(GPUMEM)
            if request_value is not None or limit_value is not None:
                found[item["name"]] = (request_value, limit_value)
    return found
