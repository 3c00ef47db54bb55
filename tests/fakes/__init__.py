"""Fakes of the GPU stack for a machine without a GPU: NVML (nvml, nvml_state and the pynvml
shim a real node-agent process imports), NVIDIA's device plugin speaking the kubelet's real
deviceplugin/v1beta1 API (device_plugin), and the card UUIDs all of them share (cards).

The unit tests hand these fakes in directly; the end-to-end suite runs them as processes
beside a real kubelet. Importing this package starts nothing and reads no file."""
