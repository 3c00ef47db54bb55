"""The Kubernetes side: list+watch of pods and nodes into the store, the Binder, the node
status patches of the advertiser, and the Events that explain Pending pods.

Objects are read as raw JSON (`_preload_content=False`): the store wants camelCase dicts for
read_demand, and skipping the generated models' deserialization is much cheaper on a busy pod
watch. Each watch runs in a daemon thread: list (paginated), then watch from the list's
resourceVersion, resuming from the last seen version when the server ends the stream; a 410
Gone relists; any other failure retries after an exponential backoff with jitter.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from extender.advertise import NodeAPIError
from extender.metrics import ExtenderMetrics
from extender.pending import (
    EVENT_COMPONENT,
    EVENT_REASON,
    FITS_CONDITION,
    EventExists,
    EventMissing,
    EventRequest,
    EventWriteError,
    NudgeRequest,
)
from extender.store import ClusterStore
from gpumem.nodes import GFD_MEMORY_LABEL

log = logging.getLogger(__name__)

HTTP_GONE = 410
HTTP_NOT_FOUND = 404
HTTP_CONFLICT = 409
# The field manager of the advertiser's status patches (managedFields show who set gpumem).
ADVERTISE_FIELD_MANAGER = "vramguard-advertise"
Resource = Literal["pods", "nodes"]
RawObject = dict[str, Any]


class WatchExpired(Exception):
    """The resourceVersion is too old (410 Gone): only a relist can continue."""


class ListFunction(Protocol):
    """CoreV1Api.list_pod_for_all_namespaces or CoreV1Api.list_node."""

    def __call__(self, **kwargs: Any) -> Any: ...


class ResourceWatch:
    """Keep the store's view of one resource in sync with the API."""

    def __init__(
        self,
        resource: Resource,
        list_function: ListFunction,
        replace: Callable[[list[RawObject]], None],
        apply: Callable[[str, RawObject], None],
        metrics: ExtenderMetrics,
        *,
        page_size: int = 500,
        watch_timeout_seconds: int = 300,
        backoff_initial_seconds: float = 0.5,
        backoff_max_seconds: float = 30.0,
    ) -> None:
        self.resource = resource
        self._list_function = list_function
        self._replace = replace
        self._apply = apply
        self._metrics = metrics
        self._page_size = page_size
        self._watch_timeout = watch_timeout_seconds
        self._backoff_initial = backoff_initial_seconds
        self._backoff_max = backoff_max_seconds
        self._stop = threading.Event()
        self._relist = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.run, name=f"vramguard-watch-{self.resource}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        # The thread may sit in a socket read until the server ends the watch; it is a daemon
        # thread and stops at its next event, so do not wait long for it.
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)

    def request_relist(self) -> None:
        """Relist at the next event or stream end (the policy changed what a GPU pod is)."""
        self._relist.set()

    def run(self) -> None:
        """List and watch until stopped."""
        delay = self._backoff_initial
        while not self._stop.is_set():
            try:
                self._relist.clear()
                version = self.list_once()
                delay = self._backoff_initial
                while not self._stop.is_set() and not self._relist.is_set():
                    version = self.watch_once(version)
                if self._relist.is_set():
                    self._restarted("relist", "relisting on request")
            except WatchExpired as err:
                self._restarted("expired", f"watch expired, relisting: {err}")
            except Exception as err:  # network, apiserver, garbage: all retried the same way
                self._restarted("error", f"failed, retrying in {delay:.1f}s: {err}")
                # Jitter spreads the reconnects of many replicas after an apiserver restart.
                self._stop.wait(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self._backoff_max)

    def list_once(self) -> str:
        """List every object, page by page, into the store; returns the resourceVersion."""
        items: list[RawObject] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {
                "limit": self._page_size,
                "_preload_content": False,
                "_request_timeout": 60,
            }
            if token:
                kwargs["_continue"] = token
            page = _read_json(self._call(**kwargs))
            items.extend(item for item in page.get("items") or () if isinstance(item, dict))
            metadata = page.get("metadata") or {}
            token = metadata.get("continue")
            if not token:
                break
        version = metadata.get("resourceVersion")
        if not isinstance(version, str) or not version:
            raise ValueError(f"{self.resource} list has no resourceVersion")
        self._replace(items)
        log.info("listed %d %s at resourceVersion %s", len(items), self.resource, version)
        return version

    def watch_once(self, version: str) -> str:
        """Apply watch events until the server ends the stream; returns the last version."""
        response = self._call(
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=self._watch_timeout,
            _preload_content=False,
            # A read timeout past the server-side one detects a connection that died silently.
            _request_timeout=(10, self._watch_timeout + 30),
        )
        try:
            for line in _lines(response):
                event = json.loads(line)
                kind = event.get("type")
                obj = event.get("object")
                if not isinstance(obj, dict):
                    raise ValueError(f"watch event without object: {line[:200]}")
                if kind == "ERROR":
                    if obj.get("code") == HTTP_GONE:
                        raise WatchExpired(obj.get("message", "410 Gone"))
                    raise ValueError(f"watch error {obj.get('code')}: {obj.get('message')}")
                new_version = (obj.get("metadata") or {}).get("resourceVersion")
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    self._apply(kind, obj)
                if isinstance(new_version, str) and new_version:
                    version = new_version
                if self._stop.is_set() or self._relist.is_set():
                    break
        finally:
            response.close()
            release = getattr(response, "release_conn", None)
            if release is not None:
                release()
        return version

    def _call(self, **kwargs: Any) -> Any:
        try:
            return self._list_function(**kwargs)
        except ApiException as err:
            if err.status == HTTP_GONE:
                raise WatchExpired(str(err.reason)) from err
            raise

    def _restarted(self, reason: str, message: str) -> None:
        self._metrics.watch_restarts.labels(resource=self.resource, reason=reason).inc()
        level = logging.INFO if reason != "error" else logging.WARNING
        log.log(level, "%s watch: %s", self.resource, message)


def _read_json(response: Any) -> Mapping[str, Any]:
    try:
        body = json.loads(response.data)
    finally:
        release = getattr(response, "release_conn", None)
        if release is not None:
            release()
    if not isinstance(body, dict):
        raise ValueError(f"list answer is not an object: {str(body)[:200]}")
    return body


def _lines(response: Any) -> Iterator[str]:
    """Lines of a streamed watch response (one JSON event per line)."""
    buffer = bytearray()
    for chunk in response.stream(amt=None, decode_content=False):
        buffer.extend(chunk if isinstance(chunk, bytes) else str(chunk).encode())
        start = 0
        while (end := buffer.find(b"\n", start)) != -1:
            line = buffer[start:end].strip()
            if line:
                yield line.decode("utf-8", errors="replace")
            start = end + 1
        del buffer[:start]
    if buffer.strip():
        yield buffer.strip().decode("utf-8", errors="replace")


class PodListener(Protocol):
    """Something else fed by the pod watch, after the store (extender.pending)."""

    def replace_pods(self, raw_pods: list[RawObject]) -> None: ...

    def apply_pod_event(self, event_type: str, raw: RawObject) -> None: ...


def pod_watch(
    core: Any,
    store: ClusterStore,
    metrics: ExtenderMetrics,
    *,
    listeners: Sequence[PodListener] = (),
    **options: Any,
) -> ResourceWatch:
    """The pod watch into the store and then into each listener, so a listener reading the
    store's snapshot sees the event it is handed already applied."""
    replace: Callable[[list[RawObject]], None] = store.replace_pods
    apply: Callable[[str, RawObject], None] = store.apply_pod_event
    if listeners:

        def replace(items: list[RawObject]) -> None:
            store.replace_pods(items)
            for listener in listeners:
                listener.replace_pods(items)

        def apply(event_type: str, raw: RawObject) -> None:
            store.apply_pod_event(event_type, raw)
            for listener in listeners:
                listener.apply_pod_event(event_type, raw)

    return ResourceWatch(
        "pods", core.list_pod_for_all_namespaces, replace, apply, metrics, **options
    )


def node_watch(
    core: Any, store: ClusterStore, metrics: ExtenderMetrics, **options: Any
) -> ResourceWatch:
    return ResourceWatch(
        "nodes", core.list_node, store.replace_nodes, store.apply_node_event, metrics, **options
    )


# --- Binding ------------------------------------------------------------


class BindError(Exception):
    """The Binding could not be created; the message says why."""


class Binder(Protocol):
    def bind(self, namespace: str, name: str, uid: str, node: str) -> None:
        """Bind the pod to the node (blocking); raise BindError on failure."""


class KubernetesBinder:
    """Creates the pods/binding subresource, as the default binder does."""

    def __init__(self, core: Any, timeout_seconds: float = 10.0) -> None:
        self._core = core
        self._timeout = timeout_seconds

    def bind(self, namespace: str, name: str, uid: str, node: str) -> None:
        body = client.V1Binding(
            # The UID makes the apiserver refuse to bind a newer pod of the same name.
            metadata=client.V1ObjectMeta(name=name, namespace=namespace, uid=uid),
            target=client.V1ObjectReference(api_version="v1", kind="Node", name=node),
        )
        try:
            # Raw response: the generated client fails to deserialize a Binding answer.
            response = self._core.create_namespaced_pod_binding(
                name=name,
                namespace=namespace,
                body=body,
                _preload_content=False,
                _request_timeout=self._timeout,
            )
            response.release_conn()
        except ApiException as err:
            raise BindError(
                f"binding {namespace}/{name} to {node}: {err.status} {_api_message(err)}"
            ) from err
        except Exception as err:  # urllib3 and socket errors
            raise BindError(f"binding {namespace}/{name} to {node}: {err}") from err


# --- Events explaining Pending pods (extender.pending) ----------------------------------------


class KubernetesEvents:
    """extender.pending.EventSink over core/v1 Events, the API `kubectl describe pod` lists
    (it shows events.k8s.io Events too: one object, two versions; core/v1 keeps count and
    firstTimestamp/lastTimestamp, so a refresh reads "x3 over 20m" there)."""

    def __init__(
        self,
        core: Any,
        *,
        instance: str,
        component: str = EVENT_COMPONENT,
        timeout_seconds: float = 10.0,
    ) -> None:
        self._core = core
        self._instance = instance[:128]  # the API's reportingInstance limit
        self._component = component
        self._timeout = timeout_seconds

    def create(self, request: EventRequest, now: float) -> None:
        body = event_body(request, now, component=self._component, instance=self._instance)
        try:
            response = self._core.create_namespaced_event(
                request.namespace,
                body,
                _preload_content=False,
                _request_timeout=self._timeout,
            )
        except ApiException as err:
            if err.status == HTTP_CONFLICT:
                raise EventExists(request.name) from err
            raise EventWriteError(f"creating an event: {err.status} {_api_message(err)}") from err
        except Exception as err:  # urllib3 and socket errors
            raise EventWriteError(f"creating an event: {_cause(err)}") from err
        _release(response)

    def refresh(self, request: EventRequest, now: float) -> None:
        patch = {"count": request.count, "lastTimestamp": _rfc3339(now), "message": request.message}
        try:
            response = self._core.patch_namespaced_event(
                request.name,
                request.namespace,
                patch,
                _content_type="application/merge-patch+json",
                _preload_content=False,
                _request_timeout=self._timeout,
            )
        except ApiException as err:
            if err.status == HTTP_NOT_FOUND:
                raise EventMissing(request.name) from err
            raise EventWriteError(f"patching an event: {err.status} {_api_message(err)}") from err
        except Exception as err:
            raise EventWriteError(f"patching an event: {_cause(err)}") from err
        _release(response)

    def nudge(self, request: NudgeRequest, now: float) -> None:
        """Set the pod's FITS_CONDITION condition (a strategic merge on the conditions' type,
        so kube-scheduler's PodScheduled and the kubelet's are left alone). The uid in the
        patch is a precondition: a pod recreated under the same name is not touched."""
        patch = {
            "metadata": {"uid": request.pod_uid},
            "status": {
                "conditions": [
                    {
                        "type": FITS_CONDITION,
                        "status": "True",
                        "reason": "FitsNow",
                        "message": request.message,
                        "lastTransitionTime": _rfc3339(now),
                    }
                ]
            },
        }
        try:
            response = self._core.patch_namespaced_pod_status(
                request.pod_name,
                request.namespace,
                patch,
                _content_type="application/strategic-merge-patch+json",
                _preload_content=False,
                _request_timeout=self._timeout,
            )
        except ApiException as err:
            raise EventWriteError(
                f"setting {FITS_CONDITION} on a pod: {err.status} {_api_message(err)}"
            ) from err
        except Exception as err:
            raise EventWriteError(f"setting {FITS_CONDITION} on a pod: {_cause(err)}") from err
        _release(response)


def event_body(
    request: EventRequest, now: float, *, component: str, instance: str
) -> dict[str, Any]:
    """A core/v1 Event about the pod, as kube-scheduler's own FailedScheduling is shaped."""
    timestamp = _rfc3339(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": request.name, "namespace": request.namespace},
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": request.namespace,
            "name": request.pod_name,
            "uid": request.pod_uid,
        },
        "type": "Warning",
        "reason": EVENT_REASON,
        "message": request.message,
        "action": "Scheduling",
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": instance,
        "firstTimestamp": timestamp,
        "lastTimestamp": timestamp,
        "count": request.count,
    }


def _rfc3339(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _api_message(err: ApiException) -> str:
    try:
        message = json.loads(err.body or "")["message"]
    except (ValueError, KeyError, TypeError):
        return str(err.reason)
    return str(message)


def core_api(kubeconfig: str | None, pool_size: int = 32) -> Any:
    """A CoreV1Api from a kubeconfig file, else the in-cluster service account, else the
    default kubeconfig. A Configuration of its own: load_kube_config would change the global
    default that other code in the process might use."""
    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=configuration
        )
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    # Two long-lived watch connections plus concurrent binds.
    configuration.connection_pool_maxsize = pool_size
    # No urllib3 retries: the watches back off and relist themselves, and a Binding POST
    # retried after a lost answer would report 409 for a bind that succeeded.
    configuration.retries = 0
    return client.CoreV1Api(client.ApiClient(configuration))


# --- Advertising GPU memory (extender.advertise) ---------------------------------------------


class KubernetesNodes:
    """extender.advertise.NodeClient over a CoreV1Api: GPU nodes read as raw JSON, status
    patched through the status subresource with a JSON patch. Every failure becomes a
    NodeAPIError whose message a person can act on (no urllib3 object reprs)."""

    def __init__(self, core: Any, timeout_seconds: float = 30.0) -> None:
        self._core = core
        self._timeout = timeout_seconds

    def list_gpu_nodes(self) -> list[RawObject]:
        items: list[RawObject] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {
                # Existence selector: only nodes GPU Feature Discovery labelled; on a large
                # cluster the CPU nodes are never transferred.
                "label_selector": GFD_MEMORY_LABEL,
                "limit": 500,
                "_preload_content": False,
                "_request_timeout": self._timeout,
            }
            if token:
                kwargs["_continue"] = token
            page = self._call("listing nodes", self._core.list_node, **kwargs)
            items.extend(item for item in page.get("items") or () if isinstance(item, dict))
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items

    def read_node(self, name: str) -> RawObject | None:
        try:
            return dict(
                self._call(
                    f"reading node {name}",
                    self._core.read_node,
                    name,
                    _preload_content=False,
                    _request_timeout=self._timeout,
                )
            )
        except _NotFound:
            return None

    def patch_status(self, name: str, patch: Sequence[Mapping[str, Any]]) -> None:
        response = self._call_raw(
            f"patching node {name} status",
            self._core.patch_node_status,
            name,
            [dict(op) for op in patch],
            field_manager=ADVERTISE_FIELD_MANAGER,
            _content_type="application/json-patch+json",
            _preload_content=False,
            _request_timeout=self._timeout,
        )
        _release(response)

    def _call(self, what: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        response = self._call_raw(what, function, *args, **kwargs)
        try:
            return _read_json(response)
        except ValueError as err:
            raise NodeAPIError(f"{what}: unreadable answer: {err}") from err

    def _call_raw(self, what: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except ApiException as err:
            if err.status == HTTP_NOT_FOUND:
                raise _NotFound(what) from err
            raise NodeAPIError(f"{what}: {err.status} {_api_message(err)}") from err
        except Exception as err:  # urllib3 and socket errors: the API cannot be reached
            host = getattr(getattr(self._core, "api_client", None), "configuration", None)
            where = f" at {host.host}" if host is not None else ""
            raise NodeAPIError(
                f"{what}: cannot reach the API server{where}: {_cause(err)}"
            ) from err


class _NotFound(Exception):
    pass


def _cause(err: BaseException) -> str:
    """The innermost useful message of a urllib3 error chain, without object reprs:
    "Failed to establish a new connection: [Errno 111] Connection refused"."""
    reason = getattr(err, "reason", None)
    if isinstance(reason, BaseException):
        return _cause(reason)
    # urllib3 prefixes the connection's repr: "<...HTTPSConnection object at 0x..>: " (1.x),
    # "HTTPSConnection(host='127.0.0.1', port=1): " (2.x); the address is said elsewhere.
    text = re.sub(r"^(<[^>]*>|\w+\([^)]*\)):\s*", "", str(err))
    return text or type(err).__name__


def _release(response: Any) -> None:
    release = getattr(response, "release_conn", None)
    if release is not None:
        release()
