"""Why a Pending GPU pod fits on no node, in vramguard's numbers.

kube-scheduler counts the gpumem extended resource itself (managedResources
ignoredByScheduler: false, which its preemption needs), so a pod whose declared budget does not
fit is refused by NodeResourcesFit before the extender is asked, and its FailedScheduling event
only says "Insufficient vramguard.io/gpumem". This module says why with the numbers: which
Pending pods to explain (`pending_pod`), the pod evaluated against every GPU node it may go to
with the fit rule (`explain_pod`), and when an explanation is worth a new Event
(`EventThrottle`). Pure: frozen data in, data out, the caller passes the time.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from extender.fit import PREFIX, Refusal, check_node
from extender.snapshot import NodeState
from gpumem.demand import DemandError, ResourceNames, read_demand
from gpumem.objects import mapping, sequence
from gpumem.policy import ExtenderSettings

# Events are capped at 1024 characters of message (events.k8s.io note limit); node names
# and resource names are ASCII, so characters are bytes here.
MESSAGE_LIMIT = 1024
MAX_LISTED_NODES = 5
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
# Telemetry ages ("dcgm, 3s old", "telemetry is 75s old"): they change every second, so two
# explanations that differ only there say the same thing.
_AGE = re.compile(r"\b\d+s old\b")
_ELLIPSIS = "..."


# --- Which pods ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PendingPod:
    """A GPU pod that the served scheduler tried and failed to place."""

    uid: str
    namespace: str
    name: str
    need_mib: int
    node_selector: Mapping[str, str] = field(default_factory=dict)
    # requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms, raw (ORed).
    affinity_terms: tuple[Mapping[str, Any], ...] = ()
    # The PodScheduled condition's message: a change means a new scheduling attempt ended
    # differently, worth a fresh look.
    scheduler_message: str = ""

    def admits(self, node: str, labels: Mapping[str, str]) -> bool:
        """Whether the pod's nodeSelector and required node affinity allow the node (taints
        and the rest are kube-scheduler's to explain)."""
        for key, value in self.node_selector.items():
            if labels.get(key) != value:
                return False
        if not self.affinity_terms:
            return True
        return any(_term_matches(term, node, labels) for term in self.affinity_terms)


def pending_pod(
    raw: Mapping[str, Any], scheduler_name: str, names: ResourceNames
) -> PendingPod | None:
    """The pod as a PendingPod when it is one to explain: not bound, not terminating, of the
    served scheduler, PodScheduled=False with reason Unschedulable, declaring GPU memory.

    Only the served scheduler's pods: the extender's fit rule is part of that scheduler's
    decision and no other; a GPU pod of another scheduler (an excluded namespace on the
    default scheduler, say) was never judged by it, and an explanation in vramguard's name
    would be a claim about a decision vramguard did not take.
    The cheap tests come first: the pod watch calls this for every pod event.
    """
    spec = mapping(raw.get("spec"))
    if spec.get("nodeName") or spec.get("schedulerName", "default-scheduler") != scheduler_name:
        return None
    metadata = mapping(raw.get("metadata"))
    uid = metadata.get("uid")
    if not isinstance(uid, str) or not uid or metadata.get("deletionTimestamp"):
        return None
    status = mapping(raw.get("status"))
    if status.get("phase") in TERMINAL_PHASES:
        return None
    message = _unschedulable_message(status)
    if message is None:
        return None
    try:
        need = read_demand(raw, names).declared_mib or 0
    except DemandError:
        return None  # the apiserver validates quantities; the policy reads this one differently
    if need <= 0:
        return None
    selector = mapping(spec.get("nodeSelector"))
    return PendingPod(
        uid=uid,
        namespace=str(metadata.get("namespace", "")),
        name=str(metadata.get("name", "")),
        need_mib=need,
        node_selector={str(k): str(v) for k, v in selector.items()},
        affinity_terms=_required_terms(spec),
        scheduler_message=message,
    )


def _unschedulable_message(status: Mapping[str, Any]) -> str | None:
    for item in sequence(status.get("conditions")):
        condition = mapping(item)
        if condition.get("type") != "PodScheduled":
            continue
        if condition.get("status") == "False" and condition.get("reason") == "Unschedulable":
            return str(condition.get("message") or "")
        return None
    return None


def _required_terms(spec: Mapping[str, Any]) -> tuple[Mapping[str, Any], ...]:
    node_affinity = mapping(mapping(spec.get("affinity")).get("nodeAffinity"))
    required = mapping(node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution"))
    return tuple(mapping(t) for t in sequence(required.get("nodeSelectorTerms")))


def _term_matches(term: Mapping[str, Any], node: str, labels: Mapping[str, str]) -> bool:
    """A nodeSelectorTerm: all its requirements hold; a term with none matches no node."""
    expressions = sequence(term.get("matchExpressions"))
    fields = sequence(term.get("matchFields"))
    if not expressions and not fields:
        return False
    for item in expressions:
        requirement = mapping(item)
        key = str(requirement.get("key", ""))
        if not _requirement_holds(requirement, labels.get(key)):
            return False
    for item in fields:
        requirement = mapping(item)
        value = node if requirement.get("key") == "metadata.name" else None
        if not _requirement_holds(requirement, value):
            return False
    return True


def _requirement_holds(requirement: Mapping[str, Any], value: str | None) -> bool:
    operator = requirement.get("operator")
    values = [str(v) for v in sequence(requirement.get("values"))]
    if operator == "In":
        return value is not None and value in values
    if operator == "NotIn":
        return value is None or value not in values
    if operator == "Exists":
        return value is not None
    if operator == "DoesNotExist":
        return value is None
    if operator in ("Gt", "Lt") and value is not None and len(values) == 1:
        try:
            have, bound = int(value), int(values[0])
        except ValueError:
            return False
        return have > bound if operator == "Gt" else have < bound
    return False


# --- Why no node fits ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Explanation:
    """The pod against every GPU node it may go to. `message` is empty when it fits
    somewhere: the state changed since the scheduler tried, and its next try will do."""

    need_mib: int
    fits_on: tuple[str, ...] = ()
    # Refused nodes, best first: the fewest MiB short, then by name.
    refused: tuple[tuple[str, Refusal], ...] = ()
    message: str = ""

    @property
    def explains(self) -> bool:
        return bool(self.message)

    @property
    def key(self) -> str:
        """What the message says, without telemetry ages: two explanations with the same key
        are one Event."""
        return _AGE.sub("Ns old", self.message)


def explain_pod(
    pod: PendingPod,
    nodes: Mapping[str, NodeState],
    settings: ExtenderSettings,
    now: float,
    *,
    resource: str,
    max_nodes: int = MAX_LISTED_NODES,
    limit: int = MESSAGE_LIMIT,
) -> Explanation:
    """Apply the fit rule (extender.fit.check_node) to every GPU node the pod's selectors
    allow; a GPU node is one vramguard knows with a capacity."""
    need = pod.need_mib
    gpu_nodes = [
        (name, node) for name, node in nodes.items() if node.known and node.capacity.mib is not None
    ]
    candidates = [(name, node) for name, node in gpu_nodes if pod.admits(name, node.labels)]
    fits_on: list[str] = []
    refused: list[tuple[str, Refusal]] = []
    for name, node in candidates:
        fit = check_node(need, name, node, settings, now)
        if fit.refusal is None:
            fits_on.append(name)
        else:
            refused.append((name, fit.refusal))
    if fits_on:
        return Explanation(need, tuple(sorted(fits_on)))
    refused.sort(key=_rank)
    head = f"{PREFIX}no node fits {need} MiB of {resource}: "
    if not gpu_nodes:
        message = head + "no node advertises GPU memory"
    elif not candidates:
        count = len(gpu_nodes)
        message = head + (
            f"none of the {count} GPU node{'s' if count != 1 else ''} matches the pod's "
            "nodeSelector or node affinity"
        )
    else:
        parts = [f"{name}: {_without_prefix(r.message)}" for name, r in refused]
        message = compose(head, parts, max_nodes=max_nodes, limit=limit)
    return Explanation(need, (), tuple(refused), message[:limit])


def compose(head: str, parts: list[str], *, max_nodes: int, limit: int) -> str:
    """head + parts joined by "; ", at most max_nodes of them and at most limit characters,
    ending "; and N more" when some are left out. At least one part is said, cut short with
    "..." if it alone is too long."""
    total = len(parts)

    def render(shown: int) -> str:
        left = total - shown
        return head + "; ".join(parts[:shown]) + (f"; and {left} more" if left else "")

    shown = min(max(1, max_nodes), total)
    while shown > 1 and len(render(shown)) > limit:
        shown -= 1
    message = render(shown)
    if len(message) <= limit:
        return message
    # One part alone is too long (a node name of 253 characters...): cut it, keep the tail.
    left = total - 1
    tail = f"; and {left} more" if left else ""
    room = limit - len(head) - len(tail) - len(_ELLIPSIS)
    return (head + parts[0][: max(0, room)] + _ELLIPSIS + tail)[:limit]


def _rank(item: tuple[str, Refusal]) -> tuple[int, int, str]:
    name, refusal = item
    short = refusal.short_mib
    return (0, short, name) if short is not None else (1, 0, name)


def _without_prefix(message: str) -> str:
    return message[len(PREFIX) :] if message.startswith(PREFIX) else message


# --- When to say it -----------------------------------------------------------------------------

Action = Literal["create", "refresh"]


@dataclass(slots=True)
class _Said:
    key: str | None
    at: float
    count: int


class EventThrottle:
    """One Event per pod and explanation, re-said when the explanation changes but at most
    once per min_interval per pod; the same explanation is refreshed (count and last
    timestamp) every refresh_interval so a long-Pending pod keeps its Event past the API's
    event TTL. Not thread-safe: one worker owns it."""

    def __init__(self, min_interval: float = 30.0, refresh_interval: float | None = 600.0) -> None:
        self.min_interval = min_interval
        self.refresh_interval = refresh_interval
        self._said: dict[str, _Said] = {}

    def due(self, uid: str, now: float) -> bool:
        """Whether evaluating the pod now can lead to an Event (skip the fit work if not)."""
        said = self._said.get(uid)
        return said is None or now - said.at >= self.min_interval

    def decide(self, uid: str, key: str, now: float) -> Action | None:
        said = self._said.get(uid)
        if said is None:
            return "create"
        if said.key == key:
            refresh = self.refresh_interval
            return "refresh" if refresh is not None and now - said.at >= refresh else None
        return "create" if now - said.at >= self.min_interval else None

    def next_count(self, uid: str, action: Action) -> int:
        """The count the Event will carry: 1 for a new one, one more for a refresh."""
        previous = self._said.get(uid)
        return previous.count + 1 if action == "refresh" and previous is not None else 1

    def said(self, uid: str, key: str, now: float, action: Action) -> None:
        """Record an Event handed to the recorder."""
        self._said[uid] = _Said(key, now, self.next_count(uid, action))

    def failed(self, uid: str, key: str) -> None:
        """The Event was not written: say it again, but not before min_interval."""
        said = self._said.get(uid)
        if said is not None and said.key == key:
            said.key = None

    def retain(self, uids: Iterable[str]) -> None:
        """Forget every pod but these (the bound and the deleted)."""
        keep = set(uids)
        for uid in [u for u in self._said if u not in keep]:
            del self._said[uid]

    def __len__(self) -> int:
        return len(self._said)


def event_name(pod_name: str, uid: str, key: str) -> str:
    """A name derived from the pod and the explanation: every extender replica (and a
    restarted one) names the same explanation the same, so the API refuses the second
    create (409) instead of storing the Event twice."""
    digest = hashlib.sha256(f"{uid}\n{key}".encode()).hexdigest()[:16]
    stem = pod_name[: 253 - len(digest) - 1].rstrip(".-") or "pod"
    return f"{stem}.{digest}"
