"""The extender's service settings: environment VRAMGUARD_EXTENDER_*, overridden by the CLI.

What the cluster operator tunes per policy (floor, telemetry, stale mode...) lives in the
policy file (gpumem.policy.ExtenderSettings); these are the process's own settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VRAMGUARD_EXTENDER_", extra="forbid")

    policy: Path = Field(description="Policy file (YAML), re-read when it changes.")
    prometheus_url: str = Field(description="Prometheus base URL for live GPU memory.")
    kubeconfig: Path | None = Field(
        default=None, description="Kubeconfig file; default: in-cluster, else ~/.kube/config."
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8888, ge=0, le=65535)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = Field(
        default=None, description="Require client certificates signed by this CA."
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    prometheus_timeout_seconds: float = Field(default=5.0, gt=0, le=300)
    policy_poll_seconds: float = Field(default=5.0, gt=0, le=3600)
    watch_timeout_seconds: int = Field(default=300, ge=10, le=3600)
    bind_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    reservation_sweep_seconds: float = Field(default=1.0, gt=0, le=3600)
    max_preemption_nodes: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="Candidate nodes /preempt vets at most (fewest PDB violations, then fewest "
        "victims, first); the others are left out of its answer, logged and counted. 100,000 "
        "nodes would take seconds against the scheduler's timeout.",
    )
    max_body_bytes: int = Field(
        default=256 * 1024 * 1024, gt=0, description="Largest request body (NodeLists are big)."
    )
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Also serve GET /metrics, /healthz and /readyz, and nothing else, in plain "
        "HTTP on this port (for Prometheus and kubelet probes); default: no such listener.",
    )
    metrics_host: str = Field(default="0.0.0.0", description="Listen address of metrics_port.")

    explain_pending: bool = Field(
        default=True,
        description="Explain Pending GPU pods of the served scheduler with a GPUMemoryUnavailable "
        "Event that gives vramguard's numbers (kube-scheduler's own event only says "
        "'Insufficient vramguard.io/gpumem'). Needs create and patch on events.",
    )
    scheduler_name: str = Field(
        default="vramguard-scheduler",
        min_length=1,
        description="The scheduler this extender serves when the policy's schedulerName is "
        "null; otherwise the policy's schedulerName is served. Only its pods are explained.",
    )
    explain_interval_seconds: float = Field(
        default=30.0,
        ge=1,
        le=3600,
        description="At most one explanation Event per Pending pod per this many seconds.",
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.client_ca is not None and self.tls_cert is None:
            raise ValueError("client_ca needs tls_cert and tls_key")
        if self.metrics_port is not None and self.metrics_port == self.port:
            # 0.0.0.0 includes 127.0.0.1: the two listeners would collide.
            raise ValueError("metrics_port must differ from port")
        return self

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert is not None
