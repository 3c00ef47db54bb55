"""vramguard's kube-scheduler extender: filter, prioritize, bind and preempt GPU pods by VRAM.

Modules: ``models`` (extender v1 wire types), ``fit`` (the pure fit rule), ``snapshot`` (cluster
and telemetry state), ``telemetry`` (Prometheus), ``cluster`` (watches and the Binder),
``binding`` (check-reserve-bind), ``metrics``, ``app``, ``settings``. Nothing is imported here
so that importing one module does not pull in the kubernetes client.
"""
