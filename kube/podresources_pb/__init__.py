"""The kubelet's PodResources v1 API (k8s.io/kubelet/pkg/apis/podresources/v1): api.proto as
vendored, and the Python modules generated from it (api_pb2: messages, api_pb2_grpc: the
PodResourcesLister stub and servicer; .pyi stubs for mypy). Generated files are not edited:
tests/unit/kube/podresources_stubs.py rewrites them, and its test checks they are current."""
