"""A fake kubelet PodResources server: the real v1 proto (kube/podresources_pb), served by
grpcio on a unix socket, answering what the test sets."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path

import grpc

from kube.podresources_pb import api_pb2, api_pb2_grpc

# (namespace, pod, [(container, [(resource, [device ids])])])
Pod = tuple[str, str, Sequence[tuple[str, Sequence[tuple[str, Sequence[str]]]]]]


def pod_resources(namespace: str, name: str, *containers: tuple[str, str, Sequence[str]]) -> Pod:
    """One pod: (container, resource, device IDs) for each container's one resource."""
    return namespace, name, [(c, [(resource, ids)]) for c, resource, ids in containers]


class FakeKubelet(api_pb2_grpc.PodResourcesListerServicer):
    def __init__(self) -> None:
        self.pods: list[Pod] = []
        self.allocatable: dict[str, list[str]] = {}
        self.delay = 0.0  # seconds before answering: past a client's deadline
        self.failure: tuple[grpc.StatusCode, str] | None = None
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def _answer(self, method: str, context: grpc.ServicerContext) -> None:
        with self._lock:
            self.calls.append(method)
        if self.delay:
            time.sleep(self.delay)
        if self.failure is not None:
            context.abort(*self.failure)

    def List(
        self, request: api_pb2.ListPodResourcesRequest, context: grpc.ServicerContext
    ) -> api_pb2.ListPodResourcesResponse:
        self._answer("List", context)
        return api_pb2.ListPodResourcesResponse(pod_resources=[_message(p) for p in self.pods])

    def Get(
        self, request: api_pb2.GetPodResourcesRequest, context: grpc.ServicerContext
    ) -> api_pb2.GetPodResourcesResponse:
        self._answer("Get", context)
        for pod in self.pods:
            if (pod[0], pod[1]) == (request.pod_namespace, request.pod_name):
                return api_pb2.GetPodResourcesResponse(pod_resources=_message(pod))
        context.abort(grpc.StatusCode.NOT_FOUND, f"pod {request.pod_name} not found")
        raise AssertionError("abort raises")

    def GetAllocatableResources(
        self, request: api_pb2.AllocatableResourcesRequest, context: grpc.ServicerContext
    ) -> api_pb2.AllocatableResourcesResponse:
        self._answer("GetAllocatableResources", context)
        return api_pb2.AllocatableResourcesResponse(
            devices=[
                api_pb2.ContainerDevices(resource_name=name, device_ids=ids)
                for name, ids in self.allocatable.items()
            ],
            cpu_ids=[0, 1],
        )


def _message(pod: Pod) -> api_pb2.PodResources:
    namespace, name, containers = pod
    return api_pb2.PodResources(
        namespace=namespace,
        name=name,
        containers=[
            api_pb2.ContainerResources(
                name=container,
                devices=[
                    api_pb2.ContainerDevices(resource_name=resource, device_ids=list(ids))
                    for resource, ids in devices
                ],
                cpu_ids=[3],  # fields the client does not read must not disturb it
            )
            for container, devices in containers
        ],
    )


@contextmanager
def serving(socket: Path) -> Iterator[FakeKubelet]:
    """Serve a FakeKubelet on `socket` until the block ends, also when it fails."""
    # sun_path holds 107 bytes: a deep tmp_path would fail far from here, with a vague error.
    assert len(str(socket)) < 100, f"socket path too long for AF_UNIX: {socket}"
    kubelet = FakeKubelet()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    api_pb2_grpc.add_PodResourcesListerServicer_to_server(kubelet, server)
    if server.add_insecure_port(f"unix://{socket}") == 0:
        raise RuntimeError(f"could not listen on {socket}")
    server.start()
    try:
        yield kubelet
    finally:
        server.stop(grace=None).wait()
