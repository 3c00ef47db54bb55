"""Advertise each GPU node's GPU memory: passes over the cluster that apply the plan.

The plan (which nodes, which value, which patch) is gpumem.advertise's. `Advertiser` runs passes
through a `NodeClient` (kube.nodes.KubernetesNodes in production), re-asserting the value
every interval because a Node that is recreated, or a kubelet that re-registers, loses it.
`vramguard advertise` (ops.advertise) runs them, as its own Deployment: the one advertiser, so
that only it needs to patch nodes/status (the extender used to offer a second one in a thread).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gpumem.advertise import NodeAdvert, plan_nodes
from gpumem.policy import Policy
from kube.errors import NodeAPIError

log = logging.getLogger(__name__)

RawObject = dict[str, Any]


class NodeClient(Protocol):
    """The API calls the advertiser makes (kube.nodes.KubernetesNodes)."""

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
