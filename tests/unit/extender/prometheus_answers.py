"""Prometheus instant-query answers as dcgm-exporter, a per-pod exporter and the node agent
would make them, and a fake query function, for the telemetry tests."""

from __future__ import annotations

from typing import Any

from tests.unit.extender.factories import NOW

NODE_LABELS = ("Hostname", "hostname", "node", "kubernetes_node", "instance")
EVAL = NOW  # instant queries answer with the evaluation time
MIB = 1 << 20


def dcgm_series(hostname: str, gpu: int, value: str, label: str = "Hostname") -> dict[str, Any]:
    """One DCGM_FI_DEV_FB_FREE series as dcgm-exporter labels it."""
    return {
        "metric": {
            "__name__": "DCGM_FI_DEV_FB_FREE",
            "DCGM_FI_DRIVER_VERSION": "535.104.05",
            label: hostname,
            "UUID": f"GPU-6f5e{gpu}c2a-93b1-4e8e-8f3c-0b1c2d3e4f5a",
            "device": f"nvidia{gpu}",
            "gpu": str(gpu),
            "instance": "10.244.1.5:9400",
            "job": "gpu-metrics",
            "modelName": "NVIDIA A10G",
            # dcgm-exporter's own pod: not the workload's.
            "namespace": "gpu-operator",
            "pod": "nvidia-dcgm-exporter-7xk2p",
            "pci_bus_id": f"00000000:00:1{gpu}.0",
        },
        "value": [EVAL, value],
    }


def on_pod(series: dict[str, Any], namespace: str, pod: str) -> dict[str, Any]:
    """The series repeated for a workload pod, as dcgm-exporter's Kubernetes mapping does
    (--kubernetes-virtual-gpus): same value, the pod's labels, which Prometheus renames to
    exported_* because the scrape target's own namespace/pod took the plain names."""
    metric = series["metric"] | {
        "exported_namespace": namespace,
        "exported_pod": pod,
        "exported_container": "main",
    }
    return {"metric": metric, "value": list(series["value"])}


def at(series: dict[str, Any], value: str, when: float = EVAL) -> dict[str, Any]:
    """The series with another value and evaluation time."""
    return {"metric": dict(series["metric"]), "value": [when, value]}


def labelled(value: str, **labels: str) -> dict[str, Any]:
    """A series with just these labels, at the evaluation time (``at`` moves it)."""
    return {"metric": labels, "value": [EVAL, value]}


def api_response(result: list[Any]) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


def timestamps_of(result: list[dict[str, Any]], scraped_at: float) -> list[dict[str, Any]]:
    """The answer of timestamp(<query>): the same series without __name__, valued by the
    scrape time."""
    return [
        {
            "metric": {k: v for k, v in s["metric"].items() if k != "__name__"},
            "value": [EVAL, str(scraped_at)],
        }
        for s in result
    ]


def exporter_series(namespace: str, pod: str, pid: int, used_bytes: int, **extra: str) -> Any:
    return {
        "metric": {
            "__name__": "gpu_pod_memory_used_bytes",
            "namespace": namespace,
            "pod": pod,
            "pid": str(pid),
            "gpu": "0",
            "instance": "10.0.0.7:9835",
            **extra,
        },
        "value": [EVAL, str(used_bytes)],
    }


class FakePrometheus:
    """Answers instant queries from a dict, as custom_query does (the result list)."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.queries: list[str] = []

    def __call__(self, expr: str) -> object:
        self.queries.append(expr)
        answer = self.answers.get(expr, [])
        if isinstance(answer, Exception):
            raise answer
        return answer


def answers_for(results: dict[str, list[dict[str, Any]]], scraped_at: float) -> dict[str, Any]:
    """Each query's series and its timestamp() answer, all scraped at ``scraped_at``."""
    answers: dict[str, Any] = {}
    for expr, series in results.items():
        answers[expr] = series
        answers[f"timestamp({expr})"] = timestamps_of(series, scraped_at)
    return answers
