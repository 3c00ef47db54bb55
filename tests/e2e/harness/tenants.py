"""The seeds' GPU tenants, as the scenarios (and ``make demo``) deploy them.

Each tenant lives in a namespace that the policy (``manifests/base/policy.yaml``) knows by
its role (``immich``, ``llama-swap``...). Namespaces never finish deleting on the local
control plane, so every run uses fresh ones (``immich-1a2b3c4d``) and copies the role's
policy entry to them.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from .images import WORKLOAD_IMAGE
from .kubelet import mark_running
from .pods import PLACEHOLDER_IMAGE, gpu_pod, wait_for_phase, wait_for_pod_node
from .vramguard import BASE_POLICY, LocalVramguard

# What a tenant runs on the real node: it holds its (fake) VRAM until deleted.
SLEEP_FOREVER = ["sleep", "86400"]
# Container start time the fake kubelet reports for the tenants: long before the test, so no
# tenant counts as warming up (the e2e policy's warm-up is 0 anyway).
LONG_AGO = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class Tenant:
    """One always-on GPU workload."""

    role: str
    """Its namespace's key in the base policy's ``namespaces:``."""
    pod: str
    declared_mib: int | None
    """What the pod declares itself; None: the webhook injects the namespace's budget."""
    uses_mib: int
    """What its process holds on the card once running (what the exporter reports)."""

    def budget_mib(self, policy: Mapping[str, Any]) -> int:
        """The budget it ends up with: its own declaration, else the namespace's."""
        if self.declared_mib is not None:
            return self.declared_mib
        entry = (policy.get("namespaces") or {}).get(self.role) or {}
        defaults = policy.get("defaults") or {}
        return int(entry.get("gpumemMiB", defaults.get("gpumemMiB", 1024)))


# The seeds' cluster: 13300 MiB declared on one 16 GiB T4 advertising 14000 MiB.
SEEDS: tuple[Tenant, ...] = (
    Tenant("immich", "immich-ml", None, 2600),  # 3000 from the policy
    Tenant("llama-swap", "llama-swap", None, 4700),  # 5000
    Tenant("frigate", "frigate", None, 1700),  # 2000
    Tenant("immich", "immich-server", 1800, 1200),
    Tenant("portal-stt", "portal-stt", None, 1300),  # 1500
)


def base_policy() -> dict[str, Any]:
    policy: dict[str, Any] = yaml.safe_load(BASE_POLICY.read_text())
    return policy


def policy_entries(namespaces: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """role -> namespace, to the policy entries to add: each namespace gets its role's."""
    known = base_policy().get("namespaces") or {}
    return {namespace: dict(known.get(role) or {}) for role, namespace in namespaces.items()}


def namespaces_for(roles: Iterable[str], make_namespace: Callable[[str], str]) -> dict[str, str]:
    """A fresh namespace for each distinct role: role -> namespace name."""
    return {role: make_namespace(role) for role in dict.fromkeys(roles)}


def deploy(
    core: Any,
    tenant: Tenant,
    namespace: str,
    node: str,
    *,
    real_node: bool = False,
    timeout: float = 60.0,
) -> str:
    """Create the tenant's pod pinned to ``node`` (through the webhook, to the
    vramguard-scheduler) and wait until it is bound there. On the real node its kubelet
    runs it (the test waits for Running); on an API-only node the test reports it running,
    as a kubelet would. Returns the node it was bound to."""
    pod = gpu_pod(
        tenant.pod,
        namespace=namespace,
        node_name_selector=node,
        gpumem_mib=tenant.declared_mib,
        image=WORKLOAD_IMAGE if real_node else PLACEHOLDER_IMAGE,
        command=SLEEP_FOREVER if real_node else None,
    )
    core.create_namespaced_pod(namespace, pod)
    bound = wait_for_pod_node(core, namespace, tenant.pod, timeout=timeout)
    if real_node:
        wait_for_phase(core, namespace, tenant.pod, "Running", timeout=timeout)
    else:
        started = datetime.datetime.now(datetime.UTC) - LONG_AGO
        mark_running(core, namespace, tenant.pod, started=started)
    return bound


class TenantCard:
    """One fake node's card: the tenants running on it and the memory it reports in use
    (the driver's share plus each running tenant's), kept in step with the exporter."""

    def __init__(
        self,
        core: Any,
        vramguard: LocalVramguard,
        node: str,
        *,
        total_mib: int,
        driver_mib: int = 0,
        real_node: bool = False,
    ) -> None:
        self.core = core
        self.real_node = real_node
        self.vramguard = vramguard
        self.node = node
        self.total_mib = total_mib
        self.driver_mib = driver_mib
        self.usage: dict[str, int] = {}

    @property
    def used_mib(self) -> int:
        return self.driver_mib + sum(self.usage.values())

    @property
    def free_mib(self) -> int:
        return max(0, self.total_mib - self.used_mib)

    def run(self, tenant: Tenant, namespace: str) -> None:
        """Deploy the tenant on this node; once it runs, the card reports its usage."""
        deploy(self.core, tenant, namespace, self.node, real_node=self.real_node)
        self.set_usage(tenant.pod, tenant.uses_mib)

    def set_usage(self, pod: str, mib: int) -> None:
        """What one tenant holds now; waits until the extender sees the card's new state."""
        self.usage[pod] = mib
        self.report()

    def report(self) -> None:
        self.vramguard.set_card(self.node, total_mib=self.total_mib, used_mib=self.used_mib)
