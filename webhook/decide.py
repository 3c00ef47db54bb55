"""The admission decision for one request: pure data in, data out.

`decide` reads the AdmissionRequest, the policy and what is known about the cluster, and
returns the reply (webhook.responses): allowed or denied, the JSONPatch, and the warnings and
audit annotations that say what was changed. It does no I/O, so every rule is tested as a table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gpumem.demand import ContainerGpumem, DemandError, PodDemand, ResourceNames, read_demand
from gpumem.hints import ContainerHints, LeftAlone, gpu_count, plan_container
from gpumem.policy import NO_DEVICES, NamespaceRules, Policy
from webhook import responses
from webhook.models import AdmissionRequest
from webhook.patching import PodDraft
from webhook.responses import Reply
from webhook.view import ClassPriority, ClusterView

DEFAULT_SCHEDULER = "default-scheduler"
WARNING_PREFIX = "vramguard: "
# The API server prefixes each key with the webhook's name and a slash (e.g.
# `pods.vramguard.io/gpumem`) and drops keys that then hold two slashes, so keys are plain names.
AUDIT_GPUMEM = "gpumem"
AUDIT_PRIORITY_CLASS = "priority-class"
AUDIT_PRIORITY_CLASS_SKIPPED = "priority-class-skipped"
AUDIT_PRIORITY_CLASS_REMOVED = "priority-class-removed"
AUDIT_SCHEDULER = "scheduler-name"
# Enforcement hints, one value for the whole pod ("app: NAME=VALUE NAME=VALUE; warmup: ..."):
# per-container keys would outgrow the 63 characters a qualified name's name part allows.
AUDIT_HINTS = "hints"
AUDIT_HINTS_DRY_RUN = "hints-dry-run"
AUDIT_HINTS_LEFT_ALONE = "hints-left-alone"


def decide(request: AdmissionRequest, policy: Policy, cluster: ClusterView) -> Reply:
    """Decide one AdmissionRequest. Anything but a Pod CREATE is allowed unchanged."""
    pod = request.object
    if not request.is_pod_create or pod is None:
        return _unchanged("not a Pod CREATE")
    namespace = request.namespace or _pod_namespace(pod)
    rules = policy.for_namespace(namespace, cluster.labels_of(namespace))
    if rules.excluded:
        return _unchanged(f"namespace {namespace} is excluded")
    try:
        demand = read_demand(pod, policy.resource_names)
    except DemandError as err:
        return _denied(f"{err} (namespace {namespace})")
    denial = _gpu_access_denial(pod, policy, namespace)
    if denial is not None:
        return _denied(denial)
    if not demand.is_gpu:
        return _unchanged("not a GPU pod")
    if not policy.allow_node_name and (node := _node_name(pod)) is not None:
        # Bound by name, the pod never reaches the scheduler or the extender: only the
        # kubelet's node-level count of the budget would stand between it and a full card.
        return _denied(
            f"GPU pods may not set spec.nodeName ({_shown(node)}) in namespace {namespace}: "
            "they would skip the scheduler and vramguard's per-card and live VRAM checks; "
            "choose the node with nodeSelector or nodeAffinity instead"
        )

    edit = _Edit(PodDraft(pod), rules, policy.gpumem_resource_name)
    denial = edit.gpumem(demand)
    if denial is not None:
        return _denied(denial)
    # What the scheduler will count, and what each container's hints derive from: the pod
    # after the budget was injected or normalised. Every declaration parsed above.
    final = read_demand(edit.draft.current, policy.resource_names)
    denial = edit.check_minimum(final, policy.min_gpumem_mib) or edit.check_cap(final)
    if denial is not None:
        return _denied(denial)
    denial = edit.priority_class(cluster)
    if denial is not None:
        return _denied(denial)
    edit.scheduler(policy.scheduler_name, policy.allowed_scheduler_names)
    edit.hints(final, policy.resource_names)
    return edit.reply()


class _Edit:
    """The changes to one GPU pod, and the notes (warnings, audit, log) that describe them."""

    def __init__(self, draft: PodDraft, rules: NamespaceRules, gpumem: str) -> None:
        self.draft = draft
        self.rules = rules
        self.gpumem_name = gpumem
        self.warnings: list[str] = []
        self.audit: dict[str, str] = {}
        self.changes: dict[str, str] = {}

    def gpumem(self, demand: PodDemand) -> str | None:
        """Inject the namespace budget, or normalize the declared one; a denial or None."""
        declaring = [c for c in demand.containers if c.declared_mib is not None]
        namespace = self.rules.namespace
        if not declaring:
            if self.rules.require_declaration:
                return (
                    f"namespace {namespace} requires GPU pods to declare {self.gpumem_name} "
                    "(MiB, request equal to limit) on their GPU containers; this pod declares none"
                )
            target = demand.first_gpu_container
            assert target is not None, "a GPU pod has a GPU container"
            mib = str(self.rules.gpumem_mib)
            self._set_gpumem(target, mib)
            self.warnings.append(f"injected {self.gpumem_name}={mib} (namespace {namespace})")
            self.changes["gpumem"] = mib
            return None
        for container in declaring:
            request, limit = container.request_mib, container.limit_mib
            if request is not None and limit is not None and request != limit:
                return (
                    f"container {container.name!r}: {self.gpumem_name} request {request} MiB "
                    f"differs from limit {limit} MiB; an extended resource needs request equal "
                    "to limit (set both to the same value, or only the limit)"
                )
            mib = str(container.declared_mib)
            before = self._raw_gpumem(container)
            if before != (mib, mib):
                self._set_gpumem(container, mib)
                self.warnings.append(
                    f"set {self.gpumem_name}={mib} on container {_shown(container.name)} "
                    f"(was request {_shown(before[0])}, limit {_shown(before[1])})"
                )
                self.changes[f"gpumem[{_shown(container.name)}]"] = mib
        return None

    def check_minimum(self, final: PodDemand, minimum: int) -> str | None:
        """Deny a declaration below the policy's minimum: 0 fits every node and every card,
        so such a pod would pass the scheduler's, the extender's and the kubelet's checks
        while using the card like any other."""
        for container in final.containers:
            declared = container.declared_mib
            if declared is not None and declared < minimum:
                return (
                    f"container {_shown(container.name)} declares {self.gpumem_name}="
                    f"{declared} MiB, below the minimum of {minimum} MiB (minGpumemMiB): a "
                    "budget that small reserves nothing on the card; declare what it uses, or "
                    "leave it out to get the namespace's budget"
                )
        return None

    def check_cap(self, final: PodDemand) -> str | None:
        """Deny a pod whose GPU memory, as the scheduler will count it, is above the cap."""
        cap = self.rules.max_gpumem_mib
        total = final.declared_mib or 0
        self.audit[AUDIT_GPUMEM] = str(total)
        if cap is None or total <= cap:
            return None
        # The policy model keeps gpumemMiB within maxGpumemMiB, so only a declaration gets here.
        return (
            f"pod declares {self.gpumem_name}={total} MiB, above the cap of {cap} MiB "
            f"(maxGpumemMiB) for namespace {self.rules.namespace}"
        )

    def priority_class(self, cluster: ClusterView) -> str | None:
        """Set the policy's class on the pod; a denial or None.

        A class the pod names itself is kept only where the namespace allows it (its list and
        its ceiling): any other could preempt every pod below it. The cluster's globalDefault
        counts as no choice, and is replaced like none.
        """
        target = self.rules.priority_class_name
        path = ("spec", "priorityClassName")
        current = self.draft.get(path)
        current_name = current if isinstance(current, str) else ""
        if current_name == target:
            return None
        is_cluster_default = bool(current_name) and current_name == cluster.global_default_class
        refused = None
        if current_name and not is_cluster_default:
            refused = self._refusal(current_name, cluster)
            if refused is None:
                return None
            if self.rules.disallowed_priority_class == "deny":
                return f"{refused}; set priorityClassName to one the namespace allows, or none"
        if target is None:
            if refused is not None:
                self._drop_class(current_name, refused)
            return None
        source = self.rules.priority_class_source
        if cluster.priority_classes is not None and target not in cluster.priority_classes:
            self.warnings.append(
                f"PriorityClass {target} ({source}) does not exist; "
                f"priorityClassName left {_shown(current_name) if current_name else 'unset'}"
            )
            self.audit[AUDIT_PRIORITY_CLASS_SKIPPED] = target
            if refused is not None:
                self._drop_class(current_name, refused)
            return None
        if refused is not None:
            self.warnings.append(f"priorityClassName {_shown(current_name)} replaced: {refused}")
        self.draft.set(path, target)
        # The Priority admission plugin runs again after a webhook changed the pod, and
        # rejects a priority integer (or preemptionPolicy) that is not the class's. Set the
        # class's own values where they are known: the plugin then changes nothing, and the
        # API server does not call this webhook a second time (reinvocationPolicy IfNeeded
        # reinvokes a webhook when a later plugin changed the pod). Where they are not known,
        # remove them and let the plugin compute them (at the cost of that second call).
        self._class_priority(cluster.class_priorities.get(target))
        self.warnings.append(f"set priorityClassName={target} ({source})")
        self.audit[AUDIT_PRIORITY_CLASS] = target
        self.changes["priorityClassName"] = target
        return None

    def _refusal(self, name: str, cluster: ClusterView) -> str | None:
        """Why the pod may not keep the class it names, or None."""
        rules, namespace = self.rules, self.rules.namespace
        allowed = rules.allowed_priority_classes
        if allowed is not None and name not in allowed:
            listed = ", ".join(allowed) if allowed else "none besides the policy's own"
            return (
                f"PriorityClass {_shown(name)} is not allowed in namespace {namespace} "
                f"(allowedPriorityClasses: {listed})"
            )
        ceiling = rules.max_priority
        if ceiling is None:
            return None
        known = cluster.class_priorities.get(name)
        if known is None:
            return (
                f"the value of PriorityClass {_shown(name)} is not known, and namespace "
                f"{namespace} has a ceiling (maxPriority {ceiling})"
            )
        if known.value > ceiling:
            return (
                f"PriorityClass {_shown(name)} has value {known.value}, above the ceiling "
                f"of {ceiling} (maxPriority) for namespace {namespace}"
            )
        return None

    def _drop_class(self, name: str, refused: str) -> None:
        """Remove a class the pod may not keep where there is none to put instead: the
        Priority plugin then gives it the globalDefault (or 0)."""
        self.draft.remove(("spec", "priorityClassName"))
        self._class_priority(None)
        self.warnings.append(f"priorityClassName {_shown(name)} removed: {refused}")
        self.audit[AUDIT_PRIORITY_CLASS_REMOVED] = _shown(name)
        self.changes["priorityClassName"] = ""

    def _class_priority(self, known: ClassPriority | None) -> None:
        priority, policy = ("spec", "priority"), ("spec", "preemptionPolicy")
        if known is None:
            self.draft.remove(priority)
            self.draft.remove(policy)
            return
        self.draft.set(priority, known.value)
        if known.preemption_policy is None:
            self.draft.remove(policy)  # the plugin sets none either
        else:
            self.draft.set(policy, known.preemption_policy)

    def scheduler(self, scheduler_name: str | None, allowed: tuple[str, ...]) -> None:
        """Send the pod to the policy's scheduler unless it names one the policy allows: any
        other scheduler would place it without vramguard's checks."""
        if scheduler_name is None:
            return
        path = ("spec", "schedulerName")
        current = self.draft.get(path)
        if current == scheduler_name or (isinstance(current, str) and current in allowed):
            return
        self.draft.set(path, scheduler_name)
        named = isinstance(current, str) and current not in ("", DEFAULT_SCHEDULER)
        self.warnings.append(
            f"set schedulerName={scheduler_name}"
            + (f" (was {_shown(current)}, not in allowedSchedulerNames)" if named else "")
        )
        self.audit[AUDIT_SCHEDULER] = scheduler_name
        self.changes["schedulerName"] = scheduler_name

    def hints(self, final: PodDemand, names: ResourceNames) -> None:
        """Write the namespace's enforcement hints into every GPU container with a budget.

        The budget is per container (the injected one sits on the first GPU container), so a
        container that uses the GPU without a budget of its own gets none: there is nothing to
        derive a cap from. A second pass over a hinted pod (reinvocation) finds every variable
        with vramguard's value and adds and says nothing; the warnings that do repeat (no card
        size, envFrom) are the same text, which the API server sends once per request.
        """
        rules = self.rules.hints
        if not rules.enabled:
            return
        applied: list[str] = []
        kept: list[str] = []
        for container in final.containers:
            if not container.uses_gpu:
                continue
            label = _shown(container.name)
            budget = container.declared_mib
            if budget is None:
                self.warnings.append(
                    f"container {label} uses the GPU but declares no {self.gpumem_name} of its "
                    "own: no enforcement hints"
                )
                continue
            path = ("spec", container.list_name, container.index)
            raw = self.draft.get(path)
            raw = raw if isinstance(raw, Mapping) else {}
            plan = plan_container(raw, budget, gpu_count(raw, names), rules)
            self._hint_notes(label, plan)
            if plan.left_alone:
                kept.append(f"{label}: " + " ".join(_left_alone_names(plan.left_alone)))
            if not plan.add:
                continue
            settings = " ".join(f"{name}={value}" for name, value in plan.add)
            applied.append(f"{label}: {settings}")
            where = f"on container {label} (enforcement hints, namespace {self.rules.namespace})"
            if rules.dry_run:
                self.warnings.append(f"dry run: would set {settings} {where}")
                continue
            for name, value in plan.add:
                self.draft.append((*path, "env"), {"name": name, "value": value})
            self.warnings.append(f"set {settings} {where}")
            self.changes[f"hints[{label}]"] = settings
        if applied:
            self.audit[AUDIT_HINTS_DRY_RUN if rules.dry_run else AUDIT_HINTS] = "; ".join(applied)
        if kept:
            self.audit[AUDIT_HINTS_LEFT_ALONE] = "; ".join(kept)

    def _hint_notes(self, label: str, plan: ContainerHints) -> None:
        if plan.env_from:
            self.warnings.append(
                f"container {label} reads variables from envFrom, which vramguard cannot see: "
                "no enforcement hints (one could override a value set there)"
            )
        for left in plan.left_alone:
            found = left.found
            value = "from valueFrom" if found.value is None else _shown(found.value)
            written = " ".join(f"{name}={v}" for name, v in left.hint.env)
            self.warnings.append(
                f"container {label} sets {found.variable} itself ({value}): "
                f"{left.hint.switch} hint {written} left alone"
            )
        for unset in plan.unset:
            self.warnings.append(
                f"container {label}: {unset.variable} not set ({unset.switch} hint): {unset.reason}"
            )

    def reply(self) -> Reply:
        patch = self.draft.patch()
        warnings = [WARNING_PREFIX + w for w in self.warnings]
        if patch:
            return responses.patched(patch, warnings, self.audit, self.changes)
        # A skipped PriorityClass warns and annotates without changing the pod.
        return responses.allowed("nothing to change", warnings, self.audit, self.changes)

    def _raw_gpumem(self, container: ContainerGpumem) -> tuple[Any, Any]:
        resources = ("spec", container.list_name, container.index, "resources")
        return (
            self.draft.get((*resources, "requests", self.gpumem_name)),
            self.draft.get((*resources, "limits", self.gpumem_name)),
        )

    def _set_gpumem(self, container: ContainerGpumem, mib: str) -> None:
        resources = ("spec", container.list_name, container.index, "resources")
        self.draft.set((*resources, "requests", self.gpumem_name), mib)
        self.draft.set((*resources, "limits", self.gpumem_name), mib)


def _unchanged(reason: str) -> Reply:
    # Why the pod is left alone ("not a GPU pod"): the API server ignores it, people debugging
    # with a captured review do not.
    return responses.allowed(reason)


def _denied(message: str) -> Reply:
    return responses.denied(WARNING_PREFIX + message)


def _left_alone_names(left_alone: tuple[LeftAlone, ...]) -> list[str]:
    return [name for left in left_alone for name, _ in left.hint.env]


def _gpu_access_denial(pod: Mapping[str, Any], policy: Policy, namespace: str) -> str | None:
    """A way to a GPU that bypasses the GPU request (and so every budget), or None: a device
    variable on a container without a GPU resource, a GPU RuntimeClass on a pod without one,
    or a DRA claim vramguard cannot count."""
    spec = pod.get("spec")
    if not isinstance(spec, Mapping):
        return None
    gpus = policy.resource_names
    containers = [
        c
        for list_name in ("initContainers", "containers", "ephemeralContainers")
        for c in _items(spec.get(list_name))
    ]
    for container in containers:
        if _requests_gpu(container, gpus):
            continue
        for env in _items(container.get("env")):
            name = env.get("name")
            if name not in policy.device_env_names:
                continue
            value = env.get("value")
            if "valueFrom" not in env and (value is None or value in NO_DEVICES):
                continue
            shown = " from valueFrom" if "valueFrom" in env else f"={_shown(value)}"
            return (
                f"container {_shown(container.get('name'))} sets {name}{shown} without "
                f"requesting a GPU ({', '.join(policy.gpu_resource_names)}): the container "
                "runtime would hand it those cards outside any GPU-memory budget; request a "
                f"GPU, or set {name} to void (namespace {namespace})"
            )
    runtime = spec.get("runtimeClassName")
    if runtime in policy.gpu_runtime_class_names and not any(
        _requests_gpu(c, gpus) for c in containers
    ):
        return (
            f"runtimeClassName {_shown(runtime)} exposes GPUs, and this pod requests none "
            f"({', '.join(policy.gpu_resource_names)}): CUDA images set NVIDIA_VISIBLE_DEVICES="
            f"all themselves, so it would reach every card outside any budget (namespace "
            f"{namespace})"
        )
    if not policy.allow_resource_claims and _items(spec.get("resourceClaims")):
        return (
            "pods with spec.resourceClaims (Dynamic Resource Allocation) are not admitted in "
            f"namespace {namespace}: a claim can allocate a GPU that vramguard cannot see or "
            "count (allowResourceClaims in the policy)"
        )
    return None


def _items(value: object) -> list[Mapping[str, Any]]:
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, Mapping)]


def _requests_gpu(container: Mapping[str, Any], gpus: ResourceNames) -> bool:
    resources = container.get("resources")
    if not isinstance(resources, Mapping):
        return False
    return any(
        isinstance(section, Mapping) and any(gpus.is_gpu_resource(str(key)) for key in section)
        for section in (resources.get("requests"), resources.get("limits"))
    )


def _node_name(pod: Mapping[str, Any]) -> object | None:
    spec = pod.get("spec")
    node = spec.get("nodeName") if isinstance(spec, Mapping) else None
    return node if node not in (None, "") else None


def _pod_namespace(pod: Mapping[str, Any]) -> str:
    metadata = pod.get("metadata")
    namespace = metadata.get("namespace") if isinstance(metadata, Mapping) else None
    return namespace if isinstance(namespace, str) else ""


def _shown(value: object) -> str:
    """A value from the pod as it may appear in a warning: printable and short."""
    if value is None:
        return "unset"
    text = "".join(ch if ch.isprintable() else "?" for ch in str(value))
    return text if len(text) <= 40 else text[:37] + "..."
