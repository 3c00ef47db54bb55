"""The I/O of the operator commands that read the cluster (`explain`, `preflight`, `status`,
`watchdog`): one list of nodes and pods (the extender's own list code,
extender.watches.ResourceWatch.list_once), one telemetry read
(extender.telemetry.read_telemetry), and the extender's /debug/snapshot. Every failure becomes
a ReadError whose message a person can act on, so a command prints one line and no traceback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from extender.metrics import ExtenderMetrics
from extender.store import ClusterStore
from extender.telemetry import PrometheusQuery, TelemetryError, plan_queries, read_telemetry
from extender.watches import Resource, ResourceWatch
from gpumem.policy import Policy
from gpumem.policy_file import PolicyError, PolicyFile
from gpumem.state import PodKey, Snapshot, TelemetryReading
from kube import errors
from kube.client import ApiException, core_api
from kube.reflector import RawObject
from ops.common import FAILED, USAGE_ERROR

T = TypeVar("T")

API_TIMEOUT_SECONDS = 30
PROMETHEUS_TIMEOUT_SECONDS = 10.0
EXTENDER_TIMEOUT_SECONDS = 10.0


class ReadError(Exception):
    """The cluster, Prometheus or the extender could not be read; the message says why.
    `status` is the exit status of a command that cannot go on without the reading."""

    status = FAILED


class SetupError(ReadError):
    """The kubeconfig names no file, or its credentials cannot be loaded: a usage error like
    an unreadable policy, which every command reports with the same exit status."""

    status = USAGE_ERROR


class TelemetryUnavailable(ReadError):
    """Prometheus could not be queried or answered nonsense."""


def load_policy(path: Path | None) -> Policy:
    """The policy file's policy, else the built-in defaults. Raises PolicyError."""
    if path is None:
        return Policy()
    return PolicyFile(path).current


def policy_source(path: Path | None) -> Callable[[], Policy]:
    """The current policy of a looping command: the file's, reloaded when it changes (a broken
    edit is logged and the last good one kept), else the built-in defaults. Raises
    PolicyError when the file cannot be read at the start."""
    if path is None:
        return Policy
    policy_file = PolicyFile(path)

    def current() -> Policy:
        policy_file.reload_if_changed()
        return policy_file.current

    return current


def connect(kubeconfig: Path | None, client: Callable[[Path | None], T]) -> T:
    """`client(kubeconfig)`, a Kubernetes client; a ReadError when the named kubeconfig is no
    file or the credentials cannot be loaded."""
    if kubeconfig is not None and not kubeconfig.is_file():
        raise SetupError(f"kubeconfig {kubeconfig}: no such file")
    try:
        return client(kubeconfig)
    except Exception as err:  # kubernetes.config raises several kinds, all a setup problem
        raise SetupError(f"cannot load Kubernetes credentials: {err}") from err


def list_cluster(kubeconfig: Path | None) -> tuple[list[RawObject], list[RawObject]]:
    """Every node and every pod, as raw JSON, through the extender's paginated list."""
    core = connect(kubeconfig, lambda path: core_api(str(path) if path else None, pool_size=2))
    host = getattr(getattr(core.api_client, "configuration", None), "host", "?")
    metrics = ExtenderMetrics()  # ResourceWatch wants one; nothing serves it here
    nodes: list[RawObject] = []
    pods: list[RawObject] = []
    lists: tuple[tuple[Resource, Any, list[RawObject]], ...] = (
        ("nodes", core.list_node, nodes),
        ("pods", core.list_pod_for_all_namespaces, pods),
    )
    for resource, function, into in lists:
        watch = ResourceWatch(resource, function, into.extend, _ignore_event, metrics)
        try:
            with _quiet(logging.getLogger("extender.watches")):
                watch.list_once()
        except ApiException as err:
            raise ReadError(f"listing {resource}: {err.status} {err.reason}") from err
        except Exception as err:  # urllib3 and socket errors: the API cannot be reached
            raise ReadError(
                f"listing {resource}: cannot reach the API server at {host}: {cause(err)}"
            ) from err
    return nodes, pods


def read_live(prometheus_url: str, policy: Policy, now: float) -> TelemetryReading:
    """One telemetry read with the policy's queries (the extender's read_telemetry)."""
    telemetry = policy.extender.telemetry
    try:
        query = PrometheusQuery(prometheus_url, PROMETHEUS_TIMEOUT_SECONDS)
        reading, _ = read_telemetry(query, plan_queries(telemetry), telemetry.node_labels, now)
    except TelemetryError as err:
        # A connection failure: its innermost cause, not the HTTP stack's reprs.
        detail = cause(err.__cause__) if err.__cause__ is not None else _short(str(err))
        raise TelemetryUnavailable(
            f"telemetry from Prometheus at {prometheus_url} unavailable: {detail}"
        ) from err
    except Exception as err:  # a URL the client cannot even use
        raise TelemetryUnavailable(
            f"telemetry from Prometheus at {prometheus_url} unavailable: {cause(err)}"
        ) from err
    return reading


def build_snapshot(
    policy: Policy,
    nodes: Sequence[RawObject],
    pods: Sequence[RawObject],
    reading: TelemetryReading | None,
    now: float,
) -> Snapshot:
    """The snapshot the extender would hold after these lists and this read (without its
    reservations, which live only inside it)."""
    store = ClusterStore(policy, clock=lambda: now)
    store.replace_nodes(nodes)
    store.replace_pods(pods)  # before telemetry: per-pod usage is attributed through pods
    if reading is not None:
        store.apply_telemetry(reading)
    return store.snapshot()


def pod_classes(pods: Sequence[Mapping[str, Any]]) -> dict[PodKey, str]:
    """The priorityClassName of each pod that has one (the class the webhook gave it)."""
    classes: dict[PodKey, str] = {}
    for raw in pods:
        metadata = raw.get("metadata") or {}
        spec = raw.get("spec") or {}
        name = spec.get("priorityClassName") if isinstance(spec, Mapping) else None
        if isinstance(metadata, Mapping) and isinstance(name, str) and name:
            classes[(str(metadata.get("namespace", "")), str(metadata.get("name", "")))] = name
    return classes


def fetch_extender_snapshot(extender_url: str) -> Mapping[str, Any]:
    """GET the extender's /debug/snapshot."""
    url = extender_url.rstrip("/") + "/debug/snapshot"
    try:
        with urllib.request.urlopen(url, timeout=EXTENDER_TIMEOUT_SECONDS) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as err:
        raise ReadError(f"extender at {extender_url}: {err.code} {err.reason}") from err
    except (urllib.error.URLError, OSError) as err:
        raise ReadError(f"cannot reach the extender at {extender_url}: {cause(err)}") from err
    except ValueError as err:
        raise ReadError(f"extender at {extender_url}: unreadable answer: {err}") from err
    if not isinstance(body, Mapping):
        raise ReadError(f"extender at {extender_url}: unreadable answer: not an object")
    return body


def now() -> float:
    return time.time()


@contextlib.contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    """The watch's "listed N nodes" lines are noise on a one-shot command's stderr; kept with
    --log-level debug."""
    previous = logger.level
    if not logger.isEnabledFor(logging.DEBUG):
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _ignore_event(event_type: str, raw: RawObject) -> None:
    """A single list applies no watch events."""


def cause(err: BaseException) -> str:
    """The innermost useful message of an error chain, without connection object reprs, on
    one line of at most 300 characters."""
    return errors.cause(err, limit=300)


def _short(text: str) -> str:
    return errors.short(text, 300)


__all__ = [
    "PolicyError",
    "ReadError",
    "SetupError",
    "TelemetryUnavailable",
    "build_snapshot",
    "cause",
    "connect",
    "fetch_extender_snapshot",
    "list_cluster",
    "load_policy",
    "pod_classes",
    "policy_source",
    "read_live",
]
