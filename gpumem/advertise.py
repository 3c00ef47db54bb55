"""Which value each GPU node should advertise as the extended resource kube-scheduler counts,
and the patch that sets it.

kube-scheduler only places a pod requesting `vramguard.io/gpumem` on a node whose
`status.allocatable` carries it (managedResources, ignoredByScheduler false), so every GPU node
must advertise it. Nothing in Kubernetes does: the NVIDIA device plugin advertises GPUs, not
their memory. The value comes from GPU Feature Discovery's labels (gpumem.nodes.gfd_cards), card
memory (MiB) times the number of GPUs, minus the policy's capacitySlackMiB (what the driver and
CUDA contexts keep).

Pure: `plan_node` reads a raw Node and returns a `NodeAdvert`; the passes that apply the plan
over the cluster are ops.advertiser's.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

from gpumem.nodes import GFD_COUNT_LABEL, GFD_MEMORY_LABEL, gfd_cards
from gpumem.objects import mapping
from gpumem.policy import Policy
from gpumem.quantity import QuantityError, parse_quantity

JsonPatch = tuple[dict[str, Any], ...]
AdvertAction = Literal["set", "unchanged", "skipped", "would-set", "failed"]
# Both maps are patched; see NodeAdvert.patch for why allocatable too.
STATUS_FIELDS = ("capacity", "allocatable")


@dataclass(frozen=True, slots=True)
class NodeAdvert:
    """What one node should advertise, and what was done about it.

    `action` is "set" (a patch is needed, or was applied), "unchanged", "skipped" (not a GPU
    node, or labels that give no capacity; `reason` says which), "would-set" (dry run) or
    "failed" (the patch was refused; `reason` says why).
    """

    node: str
    action: AdvertAction
    resource: str = ""
    card_mib: int | None = None
    gpu_count: int | None = None
    slack_mib: int | None = None
    value_mib: int | None = None
    capacity: str | None = None
    allocatable: str | None = None
    reason: str = ""
    # A JSON patch of the node's status subresource; empty unless action is "set".
    #
    # Both capacity and allocatable: on a real node the kubelet copies extended resources
    # from capacity to allocatable at its next status update, so capacity alone would do; but
    # without a kubelet (the e2e control plane, a node whose kubelet is down) nothing copies
    # it, and kube-scheduler reads allocatable. Writing allocatable as well is harmless with a
    # kubelet: it writes the same value there.
    patch: JsonPatch = ()

    def describe(self) -> str:
        """One line for a person: the arithmetic, then what happened."""
        if self.value_mib is None:
            return f"{self.node}: {self._outcome()}"
        return (
            f"{self.node}: {self.card_mib} MiB x {self.gpu_count} GPU - {self.slack_mib} MiB "
            f"slack = {self.value_mib} MiB {self.resource}: {self._outcome()}"
        )

    def _outcome(self) -> str:
        if self.action in ("skipped", "failed"):
            return f"{self.action} ({self.reason})"
        if self.action == "unchanged":
            return "unchanged"
        verb = "set" if self.action == "set" else "would set (dry run)"
        return f"{verb}, was {self._was()}"

    def _was(self) -> str:
        if self.capacity == self.allocatable:
            return self.capacity or "unset"
        return f"capacity {self.capacity or 'unset'}, allocatable {self.allocatable or 'unset'}"


def plan_node(raw: Mapping[str, Any], resource: str, slack_mib: int) -> NodeAdvert:
    """What `raw` (a Node as the API returns it) should advertise as `resource`."""
    metadata = mapping(raw.get("metadata"))
    name = str(metadata.get("name") or "?")
    labels = mapping(metadata.get("labels"))
    if GFD_MEMORY_LABEL not in labels:
        return NodeAdvert(name, "skipped", reason=f"no {GFD_MEMORY_LABEL} label: not a GPU node")
    cards = gfd_cards(labels)
    if cards is None or cards.memory_mib == 0:
        return NodeAdvert(
            name, "skipped", reason=f"unreadable {GFD_MEMORY_LABEL}={labels[GFD_MEMORY_LABEL]!r}"
        )
    # No count label counts one GPU (GfdCards.total_mib); a count of 0, or one that is not a
    # number (read as 0), skips the node, and the fit rule sees no GFD capacity there either.
    if cards.count == 0:
        return NodeAdvert(
            name, "skipped", reason=f"no GPU in {GFD_COUNT_LABEL}={labels[GFD_COUNT_LABEL]!r}"
        )
    card, count = cards.memory_mib, 1 if cards.count is None else cards.count
    value = cards.total_mib - slack_mib
    if value <= 0:
        return NodeAdvert(
            name,
            "skipped",
            reason=f"{card} MiB x {count} GPU leaves nothing after {slack_mib} MiB slack",
        )
    status = mapping(raw.get("status"))
    # None where absent.
    current = {field: mapping(status.get(field)).get(resource) for field in STATUS_FIELDS}
    wanted = str(value)
    # Compared as kube-scheduler compares them, by quantity value: the API server stores 15000
    # as "15k", which is the same; "14336Mi" is not (it counts bytes, 2**20 times too many).
    needed = any(quantity_value(current[field]) != value for field in STATUS_FIELDS)
    return NodeAdvert(
        node=name,
        action="set" if needed else "unchanged",
        resource=resource,
        card_mib=card,
        gpu_count=count,
        slack_mib=slack_mib,
        value_mib=value,
        capacity=_as_text(current["capacity"]),
        allocatable=_as_text(current["allocatable"]),
        patch=status_patch(raw, resource, wanted) if needed else (),
    )


def plan_nodes(
    raw_nodes: Iterable[Mapping[str, Any]], policy: Policy, only: Collection[str] = ()
) -> list[NodeAdvert]:
    """The plan for every node (or only the named ones), sorted by node name."""
    resource = policy.gpumem_resource_name
    slack = policy.extender.capacity_slack_mib
    adverts = [plan_node(raw, resource, slack) for raw in raw_nodes]
    if only:
        adverts = [advert for advert in adverts if advert.node in only]
    return sorted(adverts, key=lambda advert: advert.node)


def status_patch(raw: Mapping[str, Any], resource: str, value: str) -> JsonPatch:
    """A JSON patch (RFC 6902) setting `resource` to `value` in status.capacity and
    status.allocatable, touching no other key."""
    key = escape_pointer(resource)
    status = raw.get("status")
    ops: list[dict[str, Any]] = []
    if not isinstance(status, Mapping):
        ops.append(
            {"op": "add", "path": "/status", "value": {f: {resource: value} for f in STATUS_FIELDS}}
        )
    else:
        for field in STATUS_FIELDS:
            current = status.get(field)
            if not isinstance(current, Mapping):
                ops.append({"op": "add", "path": f"/status/{field}", "value": {resource: value}})
            elif quantity_value(current.get(resource)) != quantity_value(value):
                # "add" on an existing member replaces it (RFC 6902 4.1).
                ops.append({"op": "add", "path": f"/status/{field}/{key}", "value": value})
    if any(op["path"].count("/") < 3 for op in ops):
        # That op replaces a whole map that was absent when the node was read; if a kubelet
        # wrote it since, refuse rather than wipe its cpu and memory: the next pass rereads.
        version = mapping(raw.get("metadata")).get("resourceVersion")
        if isinstance(version, str) and version:
            ops.insert(0, {"op": "test", "path": "/metadata/resourceVersion", "value": version})
    return tuple(ops)


def quantity_value(text: object) -> Fraction | None:
    """The value of a Kubernetes quantity ("15k" = 15000, "2Ki" = 2048, "1.5e3" = 1500), or
    None when `text` is absent, not a quantity (gpumem.quantity's one grammar) or negative (a
    capacity never is)."""
    if not isinstance(text, str):
        return None
    try:
        value = parse_quantity(text)
    except QuantityError:
        return None
    return value if value >= 0 else None


def escape_pointer(token: str) -> str:
    """A JSON pointer reference token (RFC 6901): "~" is "~0", "/" is "~1"."""
    return token.replace("~", "~0").replace("/", "~1")


def _as_text(value: object) -> str | None:
    return None if value is None else str(value)
