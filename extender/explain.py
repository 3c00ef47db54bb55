"""Why a Pending GPU pod fits on no node, in vramguard's numbers.

kube-scheduler counts the gpumem extended resource itself (managedResources
ignoredByScheduler: false, which its preemption needs), so a pod whose declared budget does not
fit is refused by NodeResourcesFit before the extender is asked, and its FailedScheduling event
only says "Insufficient vramguard.io/gpumem". This module says why with the numbers: what
scheduling reads of a pod (`scheduling_pod`) and which Pending pods to explain
(`pending_pod`), the pod judged on every node, node by node (`judge_nodes`, which
`vramguard explain` prints), the one-line explanation of those verdicts (`explain_pod`), and
when an explanation is worth a new Event (`EventThrottle`). Pure: frozen data in, data out,
the caller passes the time.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

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


class Placeable(Protocol):
    """What judging a pod against nodes reads: its need and its node selectors."""

    @property
    def need_mib(self) -> int: ...

    def admits(self, node: str, labels: Mapping[str, str]) -> bool: ...


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
        return admits(self.node_selector, self.affinity_terms, node, labels)


@dataclass(frozen=True, slots=True)
class SchedulingPod:
    """What scheduling reads of any pod, bound or not: its GPU-memory need, its node
    selectors and where it stands. `vramguard explain` reads every pod this way; the pod
    watch's `pending_pod` keeps the ones to explain with an Event."""

    uid: str
    namespace: str
    name: str
    # The declared GPU memory in MiB; 0 when the pod declares none (or demand_error).
    need_mib: int
    scheduler_name: str
    node_name: str | None = None
    phase: str = ""
    terminating: bool = False
    # A GPU pod (it asks for a GPU resource or for gpumem), whatever it declares.
    gpu: bool = False
    node_selector: Mapping[str, str] = field(default_factory=dict)
    affinity_terms: tuple[Mapping[str, Any], ...] = ()
    # The message of PodScheduled=False with reason Unschedulable; None when the pod does
    # not have that condition (bound, or not tried yet).
    scheduler_message: str | None = None
    # Why the declaration could not be read (a resource the policy reads differently).
    demand_error: str | None = None

    @property
    def terminated(self) -> bool:
        return self.phase in TERMINAL_PHASES

    def admits(self, node: str, labels: Mapping[str, str]) -> bool:
        return admits(self.node_selector, self.affinity_terms, node, labels)

    def pending_for(self, scheduler_name: str) -> bool:
        """Whether the pod is one to explain: not bound, not terminating, of the served
        scheduler, PodScheduled=False with reason Unschedulable, declaring GPU memory.

        Only the served scheduler's pods: the extender's fit rule is part of that
        scheduler's decision and no other; a GPU pod of another scheduler (an excluded
        namespace on the default scheduler, say) was never judged by it, and an explanation
        in vramguard's name would be a claim about a decision vramguard did not take."""
        return (
            not self.node_name
            and self.scheduler_name == scheduler_name
            and bool(self.uid)
            and not self.terminating
            and not self.terminated
            and self.scheduler_message is not None
            and self.demand_error is None
            and self.need_mib > 0
        )

    def as_pending(self) -> PendingPod:
        return PendingPod(
            uid=self.uid,
            namespace=self.namespace,
            name=self.name,
            need_mib=self.need_mib,
            node_selector=self.node_selector,
            affinity_terms=self.affinity_terms,
            scheduler_message=self.scheduler_message or "",
        )


def scheduling_pod(raw: Mapping[str, Any], names: ResourceNames) -> SchedulingPod:
    """Read any raw pod (garbage reads as an unnamed pod that declares nothing)."""
    metadata = mapping(raw.get("metadata"))
    spec = mapping(raw.get("spec"))
    status = mapping(raw.get("status"))
    uid = metadata.get("uid")
    node_name = spec.get("nodeName")
    phase = status.get("phase")
    need, gpu, error = 0, False, None
    try:
        demand = read_demand(raw, names)
        need, gpu = demand.declared_mib or 0, demand.is_gpu
    except DemandError as err:
        # The apiserver validates quantities; the policy reads this one differently.
        gpu, error = True, str(err)
    selector = mapping(spec.get("nodeSelector"))
    return SchedulingPod(
        uid=uid if isinstance(uid, str) else "",
        namespace=str(metadata.get("namespace", "")),
        name=str(metadata.get("name", "")),
        need_mib=need,
        scheduler_name=_scheduler_of(spec),
        node_name=node_name if isinstance(node_name, str) and node_name else None,
        phase=phase if isinstance(phase, str) else "",
        terminating=bool(metadata.get("deletionTimestamp")),
        gpu=gpu,
        node_selector={str(k): str(v) for k, v in selector.items()},
        affinity_terms=_required_terms(spec),
        scheduler_message=_unschedulable_message(status),
        demand_error=error,
    )


def pending_pod(
    raw: Mapping[str, Any], scheduler_name: str, names: ResourceNames
) -> PendingPod | None:
    """The pod as a PendingPod when it is one to explain (SchedulingPod.pending_for).

    The cheap tests come first: the pod watch calls this for every pod event, and reading the
    demand is the costly part.
    """
    spec = mapping(raw.get("spec"))
    if spec.get("nodeName") or _scheduler_of(spec) != scheduler_name:
        return None
    if _unschedulable_message(mapping(raw.get("status"))) is None:
        return None
    pod = scheduling_pod(raw, names)
    return pod.as_pending() if pod.pending_for(scheduler_name) else None


def admits(
    node_selector: Mapping[str, str],
    affinity_terms: Sequence[Mapping[str, Any]],
    node: str,
    labels: Mapping[str, str],
) -> bool:
    """Whether a pod's nodeSelector and required node affinity allow the node (taints and the
    rest are kube-scheduler's to explain)."""
    for key, value in node_selector.items():
        if labels.get(key) != value:
            return False
    if not affinity_terms:
        return True
    return any(_term_matches(term, node, labels) for term in affinity_terms)


def _scheduler_of(spec: Mapping[str, Any]) -> str:
    name = spec.get("schedulerName")
    return name if isinstance(name, str) and name else "default-scheduler"


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


# --- Node by node -------------------------------------------------------------------------------

Verdict = Literal["bound", "fits", "refused", "not-admitted", "no-gpu"]


@dataclass(frozen=True, slots=True)
class NodeVerdict:
    """One node's answer for one pod.

    bound: the pod runs there already (its budget is counted in the node's figures, so it is
    not judged again); fits: the fit rule lets it in, headroom_mib to spare; refused: the fit
    rule's refusal, in the extender's words; not-admitted: the pod's nodeSelector or required
    node affinity rules the node out; no-gpu: the node advertises no GPU memory."""

    node: str
    verdict: Verdict
    refusal: Refusal | None = None
    # fits: MiB left once the pod is placed (extender.fit.NodeFit.headroom_mib).
    headroom_mib: int | None = None
    # fits without the live check: telemetry stale or missing and staleMode budget-only.
    live_skipped: bool = False


_VERDICT_ORDER: Mapping[Verdict, int] = {
    "bound": 0,
    "fits": 1,
    "refused": 2,
    "not-admitted": 3,
    "no-gpu": 4,
}


def judge_nodes(
    pod: Placeable,
    nodes: Mapping[str, NodeState],
    settings: ExtenderSettings,
    now: float,
    *,
    bound_to: str | None = None,
) -> tuple[NodeVerdict, ...]:
    """Every node vramguard knows with its verdict for the pod: the fit rule
    (extender.fit.check_node) on every GPU node the pod's selectors allow.

    Ordered bound first, then fits (most headroom first), refused (best first: the fewest MiB
    short, then the refusals no amount of memory would lift), not admitted, no GPU memory;
    by name within each. bound_to names the node a bound pod runs on: it is shown, not
    judged, since its own budget is already counted there; the other nodes are judged as if
    the pod were placed anew."""
    verdicts: list[NodeVerdict] = []
    for name, node in nodes.items():
        if not node.known:
            continue  # a node only pods mention: nothing to judge it by yet
        if name == bound_to:
            verdicts.append(NodeVerdict(name, "bound"))
        elif node.capacity.mib is None:
            verdicts.append(NodeVerdict(name, "no-gpu"))
        elif not pod.admits(name, node.labels):
            verdicts.append(NodeVerdict(name, "not-admitted"))
        else:
            fit = check_node(pod.need_mib, name, node, settings, now)
            if fit.refusal is None:
                verdicts.append(NodeVerdict(name, "fits", None, fit.headroom_mib, fit.live_skipped))
            else:
                verdicts.append(NodeVerdict(name, "refused", fit.refusal))
    return tuple(sorted(verdicts, key=_verdict_rank))


def _verdict_rank(verdict: NodeVerdict) -> tuple[int, int, int, str]:
    order = _VERDICT_ORDER[verdict.verdict]
    if verdict.refusal is not None:
        first, short, name = _rank((verdict.node, verdict.refusal))
        return (order, first, short, name)
    if verdict.headroom_mib is not None:
        return (order, 0, -verdict.headroom_mib, verdict.node)
    return (order, 0, 0, verdict.node)


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
    pod: Placeable,
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
    verdicts = judge_nodes(pod, nodes, settings, now)
    return explain_verdicts(
        pod.need_mib, verdicts, resource=resource, max_nodes=max_nodes, limit=limit
    )


def explain_verdicts(
    need: int,
    verdicts: Iterable[NodeVerdict],
    *,
    resource: str,
    max_nodes: int = MAX_LISTED_NODES,
    limit: int = MESSAGE_LIMIT,
) -> Explanation:
    """The Explanation of judge_nodes' verdicts (a bound node counts as neither)."""
    fits_on: list[str] = []
    refused: list[tuple[str, Refusal]] = []
    gpu_nodes = 0
    for verdict in verdicts:
        if verdict.verdict in ("fits", "refused", "not-admitted"):
            gpu_nodes += 1
        if verdict.verdict == "fits":
            fits_on.append(verdict.node)
        elif verdict.refusal is not None:
            refused.append((verdict.node, verdict.refusal))
    if fits_on:
        return Explanation(need, tuple(sorted(fits_on)))
    refused.sort(key=_rank)
    head = f"{PREFIX}no node fits {need} MiB of {resource}: "
    if not gpu_nodes:
        message = head + "no node advertises GPU memory"
    elif not refused:
        message = head + (
            f"none of the {gpu_nodes} GPU node{'s' if gpu_nodes != 1 else ''} matches the "
            "pod's nodeSelector or node affinity"
        )
    else:
        parts = [f"{name}: {without_prefix(r.message)}" for name, r in refused]
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


def without_prefix(message: str) -> str:
    """A refusal's message without the \"vramguard: \" every refusal starts with."""
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
