"""components/node-agent: the DaemonSet's least privilege for what it must read, its RBAC,
Service, ServiceMonitor and NetworkPolicy, in the source and in every overlay's build."""

from __future__ import annotations

import pytest

from .conftest import INSTALLS, MANIFESTS, K8sObject, named, objects, of_kind
from .test_manifests import (
    NODE_AGENT_NAMESPACE,
    SERVICE_MONITORS,
    assert_least_privilege,
    assert_probes_are_http,
    command_line,
    container,
    granted,
    mount_for,
    port_number,
    volume,
)

NODE_AGENT = MANIFESTS / "components" / "node-agent" / "node-agent.yaml"


def assert_node_agent(docs: list[K8sObject]) -> None:
    """The node agent's DaemonSet: least privilege for what it must read (hostPID, the
    kubelet's socket read-only, root without capabilities), on GPU nodes only."""
    daemonset = named(docs, "DaemonSet", "vramguard-node-agent")
    assert daemonset["metadata"]["namespace"] == NODE_AGENT_NAMESPACE
    namespace = named(docs, "Namespace", NODE_AGENT_NAMESPACE)
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"
    spec = daemonset["spec"]["template"]["spec"]
    assert spec["hostPID"] is True  # NVML gives host PIDs
    assert not spec.get("hostNetwork")
    assert not spec.get("hostIPC")
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["runtimeClassName"] == "nvidia"
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    keys = {e["key"] for t in terms["nodeSelectorTerms"] for e in t["matchExpressions"]}
    assert keys == {"nvidia.com/gpu.present", "nvidia.com/gpu.count"}
    (agent,) = spec["containers"]
    sc = agent["securityContext"]
    assert sc["privileged"] is False
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert {"cpu", "memory"} <= set(agent["resources"]["requests"])
    assert "memory" in agent["resources"]["limits"]
    # One hostPath, the kubelet's PodResources folder, mounted read-only.
    host_paths = [v for v in spec["volumes"] if "hostPath" in v]
    assert [v["hostPath"]["path"] for v in host_paths] == ["/var/lib/kubelet/pod-resources"]
    for mount in agent["volumeMounts"]:
        if mount["name"] == host_paths[0]["name"]:
            assert mount["readOnly"] is True
    env = {e["name"]: e for e in agent["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["NVIDIA_VISIBLE_DEVICES"]["value"] == "all"
    assert "resources" not in agent or "nvidia.com/gpu" not in str(agent["resources"])
    assert_probes_are_http([daemonset])
    accounts = {
        d["metadata"]["name"]
        for d in of_kind(docs, "ServiceAccount")
        if d["metadata"]["namespace"] == NODE_AGENT_NAMESPACE
    }
    assert spec["serviceAccountName"] in accounts


def test_node_agent_runs_the_console_script_with_least_privilege() -> None:
    from ops import build_parser  # noqa: PLC0415

    docs = objects(NODE_AGENT)
    assert_node_agent(docs)
    assert_least_privilege(docs)
    daemonset = named(docs, "DaemonSet", "vramguard-node-agent")
    spec = daemonset["spec"]["template"]["spec"]
    agent = container(daemonset, "node-agent")
    args = command_line(agent)
    assert args[:2] == ["vramguard", "node-agent"]
    options = build_parser().parse_args(args[1:])
    assert (options.interval, options.once, options.pod_resources_timeout) == (10, False, 5)
    # The socket it asks for is inside the read-only mount of the kubelet's folder.
    mount = mount_for(agent, str(options.pod_resources_socket))
    assert mount["readOnly"] is True
    assert volume(daemonset, mount["name"])["hostPath"]["path"] == mount["mountPath"]
    assert str(options.proc_root) == "/proc"  # the host's, through hostPID
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = agent[probe]["httpGet"]
        assert (get["path"], port_number(agent, get["port"])) == (path, options.metrics_port)
    role = named(docs, "ClusterRole", "vramguard-node-agent")
    assert granted(role) == {("", "pods", "list"), ("", "pods", "watch")}
    binding = named(docs, "ClusterRoleBinding", "vramguard-node-agent")
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": spec["serviceAccountName"],
            "namespace": NODE_AGENT_NAMESPACE,
        }
    ]
    labels = daemonset["spec"]["selector"]["matchLabels"]
    # A headless Service: one scrape target per node.
    service = named(docs, "Service", "vramguard-node-agent-metrics")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == labels
    (port,) = service["spec"]["ports"]
    assert port_number(agent, port["targetPort"]) == options.metrics_port
    # Scraped with its own namespace/pod/container labels kept (honorLabels).
    monitor = named(objects(SERVICE_MONITORS), "ServiceMonitor", "vramguard-node-agent")
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NODE_AGENT_NAMESPACE]}
    assert monitor["spec"]["selector"]["matchLabels"] == {
        k: v for k, v in service["metadata"]["labels"].items() if k in labels
    }
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"], endpoint["honorLabels"]) == (
        port["name"],
        "/metrics",
        True,
    )
    # Prometheus may scrape it; it may reach the API server; nothing else.
    policy = named(docs, "NetworkPolicy", "vramguard-node-agent")
    assert policy["metadata"]["namespace"] == NODE_AGENT_NAMESPACE
    assert policy["spec"]["podSelector"]["matchLabels"] == labels
    (ingress,) = policy["spec"]["ingress"]
    assert {p["port"] for p in ingress["ports"]} == {options.metrics_port}
    egress = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert egress == {443, 6443}


def test_node_agent_exports_the_metric_names_the_presets_read() -> None:
    # Imported here, as in the extender's test below.
    from ops.node_agent_metrics import AgentView, NodeAgentMetrics  # noqa: PLC0415

    metrics = NodeAgentMetrics()
    metrics.publish(AgentView("gpu-1"))
    exported = {family.name for family in metrics.registry.collect()}
    assert {
        "vramguard_gpu_memory_free_bytes",
        "vramguard_gpu_memory_used_bytes",
        "vramguard_gpu_memory_total_bytes",
        "gpu_pod_memory_used_bytes",
        "vramguard_pod_gpu_assignment",
        "vramguard_node_agent_errors",  # a counter's family name, without _total
        "vramguard_node_agent_last_success_timestamp_seconds",
        "vramguard_node_agent_scan_duration_seconds",
    } <= exported


@pytest.mark.parametrize("overlay", INSTALLS)
def test_every_overlay_runs_the_node_agent_unweakened(
    built: dict[str, list[K8sObject]], overlay: str
) -> None:
    docs = built[overlay]
    assert [d["metadata"]["name"] for d in of_kind(docs, "DaemonSet")] == ["vramguard-node-agent"]
    assert_node_agent(docs)
