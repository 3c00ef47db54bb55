"""The one package that talks to the Kubernetes API: client, list+watch, events, writes.

Everything above it (the webhook, the extender, the operator commands) reads and writes the
cluster through these modules and never imports the `kubernetes` client itself.
"""
