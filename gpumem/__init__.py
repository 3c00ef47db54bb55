"""The GPU-memory domain, shared by the webhook, the extender and the operator commands.

Quantities, the GPU demand of a pod, the policy, nodes and their capacity, the frozen state a
request reads, the one fit rule, explanations, the watchdog's rule and the advertise plan (the
README's Architecture lists each module). Pure code: no web framework, cluster or telemetry
client and no service package is imported here (import contracts check it).
"""
