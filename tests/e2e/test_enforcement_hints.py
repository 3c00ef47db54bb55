"""Enforcement hints through the real API server: a namespace's policy turns hints on, the
webhook writes them into the pod at admission, and the pod the API server stores carries
them in its containers' env; the warnings reach the client that created it.

The seeds' tenants are the worked example of the README ("Enforcement hints"): on their 16 GiB
T4 (15360 MiB), each budget becomes the toolkit's request and limit in MiB and a JAX memory
fraction rounded down to thousandths. No node is needed: admission happens before scheduling,
and the pods stay Pending until their namespace is emptied.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from .harness import LocalVramguard, gpu_pod
from .harness.tenants import SEEDS, base_policy, namespaces_for, policy_entries

pytestmark = pytest.mark.e2e

T4_MIB = 15360
HINTS = {"containerToolkit": True, "jax": True, "tensorflow": True, "cardMiB": T4_MIB}
CALLS = "vramguard_webhook_requests_total"


def create(core: Any, namespace: str, body: Any) -> list[str]:
    """Create a pod; return the warnings the API server sent back with it."""
    _, _, headers = core.create_namespaced_pod_with_http_info(namespace, body)
    return [_warning_text(value) for value in headers.getlist("Warning")]


def stored_env(core: Any, namespace: str, name: str) -> dict[str, str]:
    """The env of the stored pod's first container, by name."""
    pod = core.read_namespaced_pod(name, namespace)
    return {item.name: item.value for item in pod.spec.containers[0].env or []}


def with_env(body: Any, **env: str) -> Any:
    from kubernetes import client  # noqa: PLC0415

    body.spec.containers[0].env = [client.V1EnvVar(name=k, value=v) for k, v in env.items()]
    return body


def test_seeds_tenants_get_their_budgets_as_hints(
    core_v1: Any, local_vramguard: LocalVramguard, make_namespace: Callable[..., str]
) -> None:
    namespaces = namespaces_for([t.role for t in SEEDS], make_namespace)
    entries = policy_entries(namespaces)
    local_vramguard.add_namespaces({ns: {**e, "hints": HINTS} for ns, e in entries.items()})
    policy = base_policy()
    for tenant in SEEDS:
        namespace = namespaces[tenant.role]
        calls = local_vramguard.webhook_metric(CALLS)
        warnings = create(
            core_v1,
            namespace,
            gpu_pod(tenant.pod, namespace=namespace, gpumem_mib=tenant.declared_mib),
        )
        budget = tenant.budget_mib(policy)
        expected = {
            "NVIDIA_GPU_MEMORY_REQUEST": str(budget),
            "NVIDIA_GPU_MEMORY_LIMIT": str(budget),
            "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
            "XLA_PYTHON_CLIENT_MEM_FRACTION": f"0.{budget * 1000 // T4_MIB:03d}",
            "TF_FORCE_GPU_ALLOW_GROWTH": "true",
        }
        assert stored_env(core_v1, namespace, tenant.pod) == expected, tenant.pod
        settings = " ".join(f"{k}={v}" for k, v in expected.items())
        assert (
            f"vramguard: set {settings} on container main "
            f"(enforcement hints, namespace {namespace})"
        ) in warnings
        # One call per create: the hints changed nothing a later plugin reacts to, so the API
        # server did not reinvoke the webhook (reinvocationPolicy IfNeeded).
        assert local_vramguard.webhook_metric(CALLS) == calls + 1
    # The README's table: 3000 -> 0.195, 5000 -> 0.325, 2000 -> 0.130, 1800 -> 0.117,
    # 1500 -> 0.097.
    fractions = {
        t.pod: stored_env(core_v1, namespaces[t.role], t.pod)["XLA_PYTHON_CLIENT_MEM_FRACTION"]
        for t in SEEDS
    }
    assert fractions == {
        "immich-ml": "0.195",
        "llama-swap": "0.325",
        "frigate": "0.130",
        "immich-server": "0.117",
        "portal-stt": "0.097",
    }


def test_the_pods_own_values_stay_and_a_hinted_pod_gains_nothing(
    core_v1: Any, local_vramguard: LocalVramguard, make_namespace: Callable[..., str]
) -> None:
    namespace = make_namespace("immich")
    local_vramguard.add_namespaces(
        {namespace: {**base_policy()["namespaces"]["immich"], "hints": HINTS}}
    )
    own = with_env(
        gpu_pod("own", namespace=namespace), NVIDIA_GPU_MEMORY_LIMIT="9000", MODEL="clip"
    )
    warnings = create(core_v1, namespace, own)
    env = stored_env(core_v1, namespace, "own")
    assert env["NVIDIA_GPU_MEMORY_LIMIT"] == "9000"
    assert "NVIDIA_GPU_MEMORY_REQUEST" not in env, "the toolkit's pair is the pod's, whole"
    assert env["MODEL"] == "clip"
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.195"
    assert (
        "vramguard: container main sets NVIDIA_GPU_MEMORY_LIMIT itself (9000): containerToolkit "
        "hint NVIDIA_GPU_MEMORY_REQUEST=3000 NVIDIA_GPU_MEMORY_LIMIT=3000 left alone"
    ) in warnings

    # A pod that already carries every hint, as a second pass over a hinted pod sees it:
    # nothing is added and no hint is announced.
    create(core_v1, namespace, gpu_pod("first", namespace=namespace))
    hinted = stored_env(core_v1, namespace, "first")
    warnings = create(core_v1, namespace, with_env(gpu_pod("again", namespace=namespace), **hinted))
    assert stored_env(core_v1, namespace, "again") == hinted
    assert not [w for w in warnings if "enforcement hints" in w or "hint " in w]


def test_dry_run_and_excluded_namespaces_write_no_env(
    core_v1: Any, local_vramguard: LocalVramguard, make_namespace: Callable[..., str]
) -> None:
    rehearsal = make_namespace("rehearsal")
    opted_out = make_namespace("opted-out")
    local_vramguard.add_namespaces(
        {
            rehearsal: {"gpumemMiB": 2000, "hints": {**HINTS, "dryRun": True}},
            opted_out: {"gpumemMiB": 2000, "hints": HINTS},
        }
    )
    local_vramguard.exclude_namespaces([opted_out])

    warnings = create(core_v1, rehearsal, gpu_pod("dry", namespace=rehearsal))
    assert stored_env(core_v1, rehearsal, "dry") == {}
    assert any(
        w.startswith("vramguard: dry run: would set NVIDIA_GPU_MEMORY_REQUEST=2000 ")
        for w in warnings
    ), warnings

    warnings = create(core_v1, opted_out, gpu_pod("out", namespace=opted_out))
    assert stored_env(core_v1, opted_out, "out") == {}
    assert not [w for w in warnings if w.startswith("vramguard: ")]


def _warning_text(header: str) -> str:
    """The text of one Warning header (RFC 7234: `299 - "text"`), unescaped."""
    _, _, quoted = header.partition(' - "')
    return quoted.removesuffix('"').replace('\\"', '"').replace("\\\\", "\\")
