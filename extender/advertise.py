"""Advertise each GPU node's GPU memory as the extended resource kube-scheduler counts.

kube-scheduler only places a pod requesting `vramguard.io/gpumem` on a node whose
`status.allocatable` carries it (managedResources, ignoredByScheduler false), so every GPU node
must advertise it. Nothing in Kubernetes does: the NVIDIA device plugin advertises GPUs, not
their memory. The value comes from GPU Feature Discovery's labels, card memory (MiB) times the
number of GPUs, minus the policy's capacitySlackMiB (what the driver and CUDA contexts keep).

The decision (which nodes, which value, whether a patch is needed) is pure: `plan_node` reads a
raw Node and returns a `NodeAdvert`. `Advertiser` runs passes over the cluster through a
`NodeClient` (extender.cluster.KubernetesNodes in production), re-asserting the value every
interval because a Node that is recreated, or a kubelet that re-registers, loses it.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal, Protocol

from extender.snapshot import GFD_COUNT_LABEL, GFD_MEMORY_LABEL
from gpumem.objects import mapping
from gpumem.policy import Policy

log = logging.getLogger(__name__)

RawObject = dict[str, Any]
JsonPatch = tuple[dict[str, Any], ...]
Action = Literal["set", "unchanged", "skipped", "would-set", "failed"]
# Both maps are patched; see NodeAdvert.patch for why allocatable too.
STATUS_FIELDS = ("capacity", "allocatable")
# resource.Quantity's grammar, unsigned (a capacity is never negative); bounded exponents.
_QUANTITY = re.compile(
    r"^(?P<number>\d+(?:\.\d*)?|\.\d+)"
    r"(?:(?P<suffix>[KMGTPE]i|[numkMGTPE])|[eE](?P<exponent>[+-]?\d{1,2}))?$"
)
_DECIMAL_SUFFIXES = {
    suffix: Fraction(10) ** power
    for suffix, power in (
        ("n", -9),
        ("u", -6),
        ("m", -3),
        ("", 0),
        ("k", 3),
        ("M", 6),
        ("G", 9),
        ("T", 12),
        ("P", 15),
        ("E", 18),
    )
}


@dataclass(frozen=True, slots=True)
class NodeAdvert:
    """What one node should advertise, and what was done about it.

    `action` is "set" (a patch is needed, or was applied), "unchanged", "skipped" (not a GPU
    node, or labels that give no capacity; `reason` says which), "would-set" (dry run) or
    "failed" (the patch was refused; `reason` says why).
    """

    node: str
    action: Action
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
    card = _positive_int(labels[GFD_MEMORY_LABEL])
    if card is None:
        return NodeAdvert(
            name, "skipped", reason=f"unreadable {GFD_MEMORY_LABEL}={labels[GFD_MEMORY_LABEL]!r}"
        )
    # No count label counts one GPU, as the extender's fit rule does (extender.snapshot).
    count = _positive_int(labels.get(GFD_COUNT_LABEL, "1"))
    if count is None:
        return NodeAdvert(
            name, "skipped", reason=f"no GPU in {GFD_COUNT_LABEL}={labels[GFD_COUNT_LABEL]!r}"
        )
    value = card * count - slack_mib
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
    None when `text` is absent or not a quantity."""
    match = _QUANTITY.match(str(text).strip()) if isinstance(text, str) else None
    if match is None:
        return None
    number = Fraction(match["number"])
    if match["exponent"] is not None:
        return number * Fraction(10) ** int(match["exponent"])
    suffix = match["suffix"] or ""
    if suffix.endswith("i"):
        return number * (1 << (10 * ("KMGTPE".index(suffix[0]) + 1)))
    return number * _DECIMAL_SUFFIXES[suffix]


def escape_pointer(token: str) -> str:
    """A JSON pointer reference token (RFC 6901): "~" is "~0", "/" is "~1"."""
    return token.replace("~", "~0").replace("/", "~1")


# --- Passes over the cluster -------------------------------------------------------------------


class NodeAPIError(Exception):
    """A call to the API failed; the message says why, for a person."""


class NodeClient(Protocol):
    """The API calls the advertiser makes (extender.cluster.KubernetesNodes)."""

    def list_gpu_nodes(self) -> list[RawObject]:
        """Every node carrying the GFD memory label; raises NodeAPIError."""

    def read_node(self, name: str) -> RawObject | None:
        """One node, None when it does not exist; raises NodeAPIError."""

    def patch_status(self, name: str, patch: Sequence[Mapping[str, Any]]) -> None:
        """Apply a JSON patch to the node's status subresource; raises NodeAPIError."""


@dataclass(frozen=True)
class PassResult:
    adverts: list[NodeAdvert]

    @property
    def failed(self) -> list[NodeAdvert]:
        return [advert for advert in self.adverts if advert.action == "failed"]


class Advertiser:
    """Runs advertising passes: plan every GPU node (or the named ones), patch those that
    need it, and report one line per node through `emit`.

    With `quiet_repeats`, a node whose line is the same as in the previous pass is not
    reported again, so a loop over a settled cluster stays silent; a patch or a failure is
    always reported.
    """

    def __init__(
        self,
        client: NodeClient,
        policy: Callable[[], Policy],
        *,
        nodes: Sequence[str] = (),
        dry_run: bool = False,
        emit: Callable[[str], None] = log.info,
        quiet_repeats: bool = False,
    ) -> None:
        self._client = client
        self._policy = policy
        self._nodes = tuple(dict.fromkeys(nodes))
        self._dry_run = dry_run
        self._emit = emit
        self._quiet_repeats = quiet_repeats
        self._last_lines: dict[str, str] = {}
        # For health checks: when the last pass ended (time.monotonic), and whether it could
        # read the nodes.
        self.last_pass_ended: float | None = None
        self.last_pass_ok = False

    def run_once(self) -> PassResult:
        """One pass. Raises NodeAPIError when the nodes cannot be read at all; a refused
        patch is reported on its node's line (action "failed") and the pass goes on."""
        ok = False
        try:
            result = self._pass()
            ok = True
            return result
        finally:
            self.last_pass_ended, self.last_pass_ok = time.monotonic(), ok

    def _pass(self) -> PassResult:
        policy = self._policy()
        if self._nodes:
            raw_nodes, missing = self._read_named()
        else:
            raw_nodes, missing = self._client.list_gpu_nodes(), []
        adverts = plan_nodes(raw_nodes, policy, self._nodes)
        adverts = sorted(
            [self._apply(advert) for advert in adverts]
            + [NodeAdvert(name, "failed", reason="no such node") for name in missing],
            key=lambda advert: advert.node,
        )
        self._report(adverts)
        return PassResult(adverts)

    def loop(
        self, interval: float, stop: threading.Event, *, first_pass_done: bool = False
    ) -> None:
        """Run a pass every `interval` seconds until `stop` is set. A pass that fails is
        logged and retried at the next interval."""
        if not first_pass_done:
            self._logged_pass()
        while not stop.wait(interval):
            self._logged_pass()

    def _logged_pass(self) -> None:
        try:
            self.run_once()
        except NodeAPIError as err:
            log.warning("advertise: cannot read nodes, retrying next pass: %s", err)
        except Exception:
            # The loop must outlive a bug in one pass: a node stays as it is until the next.
            log.exception("advertise: pass failed")

    def _read_named(self) -> tuple[list[RawObject], list[str]]:
        found: list[RawObject] = []
        missing: list[str] = []
        for name in self._nodes:
            raw = self._client.read_node(name)
            if raw is None:
                missing.append(name)
            else:
                found.append(raw)
        return found, missing

    def _apply(self, advert: NodeAdvert) -> NodeAdvert:
        if advert.action != "set":
            return advert
        if self._dry_run:
            return dataclasses.replace(advert, action="would-set")
        try:
            self._client.patch_status(advert.node, advert.patch)
        except NodeAPIError as err:
            return dataclasses.replace(advert, action="failed", reason=str(err))
        return advert

    def _report(self, adverts: list[NodeAdvert]) -> None:
        lines: dict[str, str] = {}
        for advert in adverts:
            line = advert.describe()
            # After a successful set, the next pass's "unchanged" is no news.
            settled = (
                dataclasses.replace(advert, action="unchanged")
                if advert.action == "set"
                else advert
            )
            lines[advert.node] = settled.describe()
            repeated = self._last_lines.get(advert.node) == line
            if not (self._quiet_repeats and repeated) or advert.action in ("set", "failed"):
                self._emit(line)
        self._last_lines = lines


class AdvertiserService:
    """An Advertiser's loop in a daemon thread: the extender's --advertise-interval."""

    def __init__(self, advertiser: Advertiser, interval: float) -> None:
        self._advertiser = advertiser
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._advertiser.loop,
            args=(self._interval, self._stop),
            name="vramguard-advertise",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            # A pass in flight ends within its API timeouts; a daemon thread, so do not wait.
            self._thread.join(timeout=1)


def _positive_int(value: object) -> int | None:
    try:
        number = int(str(value).strip())
    except ValueError:
        return None
    return number if number > 0 else None


def _as_text(value: object) -> str | None:
    return None if value is None else str(value)
