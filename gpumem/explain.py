"""Why a Pending GPU pod fits on no node, in vramguard's numbers.

kube-scheduler counts the gpumem extended resource itself (managedResources
ignoredByScheduler: false, which its preemption needs), so a pod whose declared budget does not
fit is refused by NodeResourcesFit before the extender is asked, and its FailedScheduling event
only says "Insufficient vramguard.io/gpumem". This module says why with the numbers: the pod
(gpumem.pending) judged on every node, node by node (`judge_nodes`, which `vramguard explain`
prints), and the one-line explanation of those verdicts (`explain_pod`), which the extender's
explainer writes as an Event. Pure: frozen data in, data out, the caller passes the time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from gpumem.fit import PREFIX, Refusal, check_node
from gpumem.pending import Placeable
from gpumem.policy import ExtenderSettings
from gpumem.state import NodeState

# Events are capped at 1024 characters of message (events.k8s.io note limit); node names
# and resource names are ASCII, so characters are bytes here.
MESSAGE_LIMIT = 1024
MAX_LISTED_NODES = 5
# Telemetry ages ("dcgm, 3s old", "telemetry is 75s old"): they change every second, so two
# explanations that differ only there say the same thing.
_AGE = re.compile(r"\b\d+s old\b")
_ELLIPSIS = "..."


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
    # fits: MiB left once the pod is placed (gpumem.fit.NodeFit.headroom_mib).
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
    (gpumem.fit.check_node) on every GPU node the pod's selectors allow.

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
    """Apply the fit rule (gpumem.fit.check_node) to every GPU node the pod's selectors
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
