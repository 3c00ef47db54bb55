"""The Binding of a pod to a node, as the default binder creates it (extender.binding.Binder)."""

from __future__ import annotations

from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kube.errors import BindError, api_message


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
                f"binding {namespace}/{name} to {node}: {err.status} {api_message(err)}"
            ) from err
        except Exception as err:  # urllib3 and socket errors
            raise BindError(f"binding {namespace}/{name} to {node}: {err}") from err
