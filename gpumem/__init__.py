"""GPU-memory domain shared by the webhook and the extender.

Quantities ("5k", "3Gi" -> MiB), the GPU demand of a pod, and the policy file model. Pure code:
no web framework, cluster or telemetry client is imported here (an import contract checks it).
"""
