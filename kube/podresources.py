"""A client of the kubelet's PodResources v1 API: gRPC over the kubelet's unix socket
(/var/lib/kubelet/pod-resources/kubelet.sock), the `v1.PodResourcesLister` service with its
List, Get and GetAllocatableResources calls.

The node agent asks List every scan: which devices each container on the node holds, by
namespace, pod and container name, from the moment the kubelet admits the container. Every
call has a deadline; a missing socket, a kubelet that does not answer in time and an error
status all raise PodResourcesError with one line that says which.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import grpc

from gpumem.devices import ContainerDevices
from kube.podresources_pb import api_pb2, api_pb2_grpc

DEFAULT_SOCKET = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
# Well above gRPC's 4 MiB default: a List answer grows with every pod and device on the node,
# and a node with hundreds of pods must not be refused for its size.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

T = TypeVar("T")


class PodResourcesError(Exception):
    """The API could not be read: no socket, no answer before the deadline, or an error."""


class PodResourcesClient:
    """One channel to the kubelet's socket, opened at the first call and kept: gRPC
    reconnects by itself when the kubelet restarts and recreates the socket."""

    def __init__(self, socket: Path = DEFAULT_SOCKET, *, timeout: float = 5.0) -> None:
        self.socket = socket
        self.timeout = timeout
        self._channel: grpc.Channel | None = None
        self._stub: api_pb2_grpc.PodResourcesListerStub | None = None

    def list(self) -> tuple[ContainerDevices, ...]:
        """Every container's devices on the node (containers without devices left out)."""
        request = api_pb2.ListPodResourcesRequest()
        response = self._call("List", lambda stub: stub.List(request, timeout=self.timeout))
        return tuple(_devices(response.pod_resources))

    def get(self, namespace: str, name: str) -> tuple[ContainerDevices, ...]:
        """One pod's devices (the kubelet's KubeletPodResourcesGet feature, beta and on by
        default from Kubernetes 1.34; an older kubelet answers UNIMPLEMENTED)."""
        request = api_pb2.GetPodResourcesRequest(pod_name=name, pod_namespace=namespace)
        response = self._call("Get", lambda stub: stub.Get(request, timeout=self.timeout))
        return tuple(_devices([response.pod_resources]))

    def allocatable(self) -> dict[str, tuple[str, ...]]:
        """The device IDs the kubelet can hand out, by resource name."""
        request = api_pb2.AllocatableResourcesRequest()
        response = self._call(
            "GetAllocatableResources",
            lambda stub: stub.GetAllocatableResources(request, timeout=self.timeout),
        )
        found: dict[str, list[str]] = {}
        for devices in response.devices:
            found.setdefault(devices.resource_name, []).extend(devices.device_ids)
        return {name: tuple(ids) for name, ids in found.items()}

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel = self._stub = None

    def _call(self, method: str, call: Callable[[api_pb2_grpc.PodResourcesListerStub], T]) -> T:
        # Checked on every call, not only the first: the socket vanishes while the kubelet
        # restarts, and gRPC alone would say only "UNAVAILABLE".
        if not self.socket.exists():
            raise PodResourcesError(f"no kubelet socket at {self.socket}")
        try:
            return call(self._connected())
        except grpc.RpcError as err:
            raise PodResourcesError(f"{method}: {_status(err)}") from err

    def _connected(self) -> api_pb2_grpc.PodResourcesListerStub:
        if self._stub is None:
            target = f"unix://{self.socket.resolve()}"
            self._channel = grpc.insecure_channel(
                target, options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
            )
            self._stub = api_pb2_grpc.PodResourcesListerStub(self._channel)
        return self._stub


def _status(err: grpc.RpcError) -> str:
    """`DEADLINE_EXCEEDED: ...`: the status code and the server's or gRPC's detail."""
    code = err.code() if isinstance(err, grpc.Call) else None
    details = err.details() if isinstance(err, grpc.Call) else None
    name = code.name if code is not None else "error"
    return f"{name}: {details}" if details else name


def _devices(pods: Iterable[api_pb2.PodResources]) -> Iterable[ContainerDevices]:
    for pod in pods:
        for container in pod.containers:
            for devices in container.devices:
                if devices.device_ids:
                    yield ContainerDevices(
                        namespace=pod.namespace,
                        pod=pod.name,
                        container=container.name,
                        resource=devices.resource_name,
                        device_ids=tuple(devices.device_ids),
                    )


__all__ = ["DEFAULT_SOCKET", "PodResourcesClient", "PodResourcesError"]
