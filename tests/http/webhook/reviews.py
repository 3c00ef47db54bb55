"""AdmissionReviews shaped like the API server's (after defaulting and built-in admission)."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import jsonpatch

POLICY_YAML = """
gpuResourceNames: ["nvidia.com/gpu"]
gpumemResourceName: vramguard.io/gpumem
schedulerName: vramguard-scheduler
excludedNamespaces: [kube-system]
defaults: {priorityClassName: tier-2-gpu, gpumemMiB: 1024, maxGpumemMiB: 8192}
namespaces:
  immich: {priorityClassName: tier-1-gpu, gpumemMiB: 3000}
"""

# A Deployment's pod as kube-apiserver hands it to mutating webhooks: defaulted, with the
# service-account volume, tolerations and priority the built-in plugins added.
GPU_POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {
        "generateName": "immich-ml-7d9c8b-",
        "namespace": "immich",
        "labels": {"app.kubernetes.io/name": "immich-ml", "pod-template-hash": "7d9c8b"},
        "ownerReferences": [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": "immich-ml-7d9c8b",
                "uid": "6a1b2c3d-0000-4000-8000-000000000001",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
        "managedFields": [
            {
                "manager": "kube-controller-manager",
                "operation": "Update",
                "apiVersion": "v1",
                "time": "2024-05-01T10:00:00Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:spec": {"f:containers": {'k:{"name":"ml"}': {".": {}}}}},
            }
        ],
    },
    "spec": {
        "volumes": [
            {"name": "cache", "emptyDir": {}},
            {
                "name": "kube-api-access-x7k2p",
                "projected": {
                    "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {
                            "configMap": {
                                "name": "kube-root-ca.crt",
                                "items": [{"key": "ca.crt", "path": "ca.crt"}],
                            }
                        },
                    ],
                    "defaultMode": 420,
                },
            },
        ],
        "containers": [
            {
                "name": "ml",
                "image": "ghcr.io/immich-app/immich-machine-learning:v1.106.4-cuda",
                "ports": [{"name": "http", "containerPort": 3003, "protocol": "TCP"}],
                "env": [{"name": "MACHINE_LEARNING_WORKERS", "value": "1"}],
                "resources": {
                    "limits": {"nvidia.com/gpu": "1", "memory": "4Gi"},
                    "requests": {"nvidia.com/gpu": "1", "cpu": "100m", "memory": "2Gi"},
                },
                "volumeMounts": [
                    {"name": "cache", "mountPath": "/cache"},
                    {
                        "name": "kube-api-access-x7k2p",
                        "readOnly": True,
                        "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                    },
                ],
                "livenessProbe": {
                    "httpGet": {"path": "/ping", "port": "http", "scheme": "HTTP"},
                    "timeoutSeconds": 1,
                    "periodSeconds": 10,
                    "successThreshold": 1,
                    "failureThreshold": 3,
                },
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent",
            }
        ],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default",
        "serviceAccount": "default",
        "securityContext": {},
        "schedulerName": "default-scheduler",
        "tolerations": [
            {
                "key": "node.kubernetes.io/not-ready",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            }
        ],
        "priority": 0,
        "enableServiceLinks": True,
        "preemptionPolicy": "PreemptLowerPriority",
    },
    "status": {},
}


def web_pod() -> dict[str, Any]:
    """The same pod without a GPU."""
    pod = copy.deepcopy(GPU_POD)
    for section in ("limits", "requests"):
        del pod["spec"]["containers"][0]["resources"][section]["nvidia.com/gpu"]
    return pod


def gpu_pod(namespace: str = "immich", **gpumem: str) -> dict[str, Any]:
    """The GPU pod, in `namespace`, with GPU memory requests/limits if given."""
    pod = copy.deepcopy(GPU_POD)
    pod["metadata"]["namespace"] = namespace
    resources = pod["spec"]["containers"][0]["resources"]
    for section, value in gpumem.items():
        resources[section]["vramguard.io/gpumem"] = value
    return pod


def review(
    obj: dict[str, Any] | None,
    *,
    uid: str = "705ab4f5-6393-11e8-b7cc-42010a800002",
    operation: str = "CREATE",
    dry_run: bool = False,
) -> dict[str, Any]:
    """An AdmissionReview as in the Kubernetes documentation, for a Pod."""
    namespace = (obj or {}).get("metadata", {}).get("namespace", "default")
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "",
            "namespace": namespace,
            "operation": operation,
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "014fbff9a07c",
                "groups": ["system:serviceaccounts", "system:authenticated"],
                "extra": {"authentication.kubernetes.io/credential-id": ["JTI=abc"]},
            },
            "object": obj,
            "oldObject": None,
            "dryRun": dry_run,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def decoded_patch(response: dict[str, Any]) -> list[dict[str, Any]]:
    assert response["patchType"] == "JSONPatch"
    operations: list[dict[str, Any]] = json.loads(base64.b64decode(response["patch"]))
    return operations


def patched(obj: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    if "patch" not in response:
        return obj
    result: dict[str, Any] = jsonpatch.apply_patch(obj, decoded_patch(response))
    return result
