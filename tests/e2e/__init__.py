"""End-to-end tests against a real kube-apiserver and kube-scheduler (``-m e2e``)."""
