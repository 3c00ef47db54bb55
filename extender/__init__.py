"""vramguard's kube-scheduler extender: filter, prioritize, bind and preempt GPU pods by VRAM.

Modules: ``models`` (extender v1 wire types), ``store`` (the locked writer that publishes the
frozen gpumem.state.Snapshot), ``watches`` (pods and nodes into the store), ``telemetry``
(Prometheus), ``scheduling`` (the verbs over a Snapshot, with the fit rule of gpumem.fit),
``binding`` (check-reserve-bind, the Binder port), ``pending`` and ``throttle`` (explaining
Pending pods), ``debug`` (/debug/snapshot), ``metrics``, ``app``, ``settings``. Nothing is
imported here so that importing one module does not pull in the kubernetes client.
"""
