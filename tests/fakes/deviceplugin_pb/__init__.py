"""The kubelet's device plugin API (k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1): api.proto as
vendored, and the Python modules generated from it (api_pb2: messages, api_pb2_grpc: the
Registration and DevicePlugin stubs and servicers; .pyi stubs for mypy). Generated files are
not edited: tests/fakes/deviceplugin_stubs.py rewrites them, and its test checks they are
current."""
