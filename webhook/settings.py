"""The webhook's settings: flags override VRAMGUARD_WEBHOOK_* environment variables."""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from certs.authority import SubjectNames, subject_names
from certs.rotation import Timings

ENV_PREFIX = "VRAMGUARD_WEBHOOK_"
TLSMode = Literal["files", "self-managed"]
MiB = 1024 * 1024
# kube-apiserver refuses a request body over 3 MiB (k8s.io/apiserver's MaxRequestBodyBytes,
# 3 * 1024 * 1024), and this webhook is registered for CREATE only, where the AdmissionReview
# carries the object and no old object: the object plus the review's envelope.
APISERVER_MAX_REQUEST_BYTES = 3 * MiB
REVIEW_ENVELOPE_BYTES = 64 * 1024
# Measured on loopback (tests/http/webhook/test_limits_memory.py prints them):
# the process at rest, and what each accepted TLS connection costs (the event loop's SSL read
# buffer, OpenSSL's state, the protocol objects) until it is closed.
BASE_RSS_MIB = 64
CONNECTION_MIB = 0.35
# Parsing JSON into Python objects costs up to ~32x the body (a body of empty objects,
# `[{},{},...]`, measured with webhook.models.parse_review); real pods are mostly strings, ~2x.
# Parsing is synchronous, so one review is parsed at a time; bodies being read add 1x each.
PARSE_AMPLIFICATION = 32
SLACK_MIB = 16


def default_body_limit(memory_limit_mib: int, buffered_bodies: int) -> int:
    """The largest review that fits: kube-apiserver's request limit plus the envelope, or
    what half the memory left after the process allows for one parse and the bodies being
    read, if that is less (256 KiB at the least)."""
    wanted = APISERVER_MAX_REQUEST_BYTES + REVIEW_ENVELOPE_BYTES
    budget = (memory_limit_mib - BASE_RSS_MIB - SLACK_MIB) * MiB // 2
    fits = budget // (PARSE_AMPLIFICATION + buffered_bodies)
    return max(256 * 1024, min(wanted, fits))


DEFAULT_MEMORY_LIMIT_MIB = 256
DEFAULT_BUFFERED_BODIES = 4
# The default body limit under the default memory limit (256 MiB): 2.44 MiB.
MAX_BODY_BYTES = default_body_limit(DEFAULT_MEMORY_LIMIT_MIB, DEFAULT_BUFFERED_BODIES)


class Settings(BaseSettings):
    """Everything the webhook process is configured with."""

    # populate_by_name: --namespace reaches the field whose environment names are aliases.
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="forbid", populate_by_name=True
    )

    policy: Path = Field(description="policy YAML file (reloaded when it changes)")
    # "files" by default so that an existing command line keeps its meaning; the manifests
    # choose self-managed (manifests/base/webhook.yaml).
    tls_mode: TLSMode = Field(
        default="files",
        description="files: serve --tls-cert/--tls-key as someone else writes them (cert-manager, "
        "your own); self-managed: keep a CA and serving certificate in the Secret --tls-secret, "
        "publish the CA into the MutatingWebhookConfiguration --webhook-configuration, rotate "
        "both, and write the serving pair to --tls-cert/--tls-key",
    )
    tls_cert: Path = Field(
        description="serving certificate (PEM, reloaded when it changes); self-managed: "
        "written here from the Secret"
    )
    tls_key: Path = Field(description="serving key (PEM); self-managed: written here")
    host: str = Field(default="0.0.0.0", description="address to listen on")
    port: Annotated[int, Field(ge=1, le=65535)] = 8443
    kubeconfig: Path | None = Field(
        default=None,
        description="kubeconfig for the Namespace and PriorityClass watches; without it the "
        "in-cluster service account is used when there is one, else no API access",
    )
    # The API server keeps connections to webhooks open; closing them after uvicorn's default
    # 5 idle seconds would cost a TLS handshake on the next pod created after a lull.
    keep_alive_seconds: Annotated[int, Field(gt=0, le=3600)] = 120
    # On SIGTERM, in-flight reviews finish; connections the API server keeps open idle would
    # otherwise hold the shutdown until the pod is killed.
    graceful_shutdown_seconds: Annotated[int, Field(gt=0, le=3600)] = 10
    policy_reload_seconds: Annotated[float, Field(gt=0, le=3600)] = 5.0
    tls_reload_seconds: Annotated[float, Field(gt=0, le=3600)] = 10.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"

    # -- what one replica accepts (issue: memory exhaustion by unauthenticated callers) ------
    memory_limit_mib: Annotated[int, Field(ge=96)] = Field(
        default=DEFAULT_MEMORY_LIMIT_MIB,
        description="the container's memory limit in MiB (the Deployment sets it from "
        "resources.limits.memory); --max-body-bytes and --max-connections default to what "
        "fits in it",
    )
    max_body_bytes: Annotated[int, Field(ge=64 * 1024)] | None = Field(
        default=None,
        description="largest AdmissionReview accepted; a larger one is answered 413 as soon "
        "as its Content-Length or its streamed size says so (default: kube-apiserver's 3 MiB "
        "request limit plus the review's envelope, smaller if --memory-limit-mib is too small "
        "for it)",
    )
    max_buffered_bodies: Annotated[int, Field(ge=1, le=1024)] = Field(
        default=DEFAULT_BUFFERED_BODIES,
        description="the bodies of all reviews being read are held to this many times "
        "--max-body-bytes together; a review that would go over is answered 503 (real pods "
        "are kilobytes: hundreds fit)",
    )
    max_connections: Annotated[int, Field(ge=1)] | None = Field(
        default=None,
        description="open connections (TLS handshakes included); one more is closed at once "
        "(default: what --memory-limit-mib leaves after the process, one review being parsed "
        "and the bodies being read)",
    )
    tls_handshake_timeout_seconds: Annotated[float, Field(gt=0, le=600)] = Field(
        default=5.0, description="a TLS handshake not done by then is aborted"
    )
    header_timeout_seconds: Annotated[float, Field(gt=0, le=600)] = Field(
        default=10.0,
        description="a request's line and headers must arrive within this from the end of the "
        "handshake (a connection that sends nothing is closed then) or from the request's "
        "first byte on a kept-alive connection; else 408 and closed",
    )
    body_timeout_seconds: Annotated[float, Field(gt=0, le=600)] = Field(
        default=10.0,
        description="a request's body must arrive within this from the end of its headers; "
        "else closed",
    )
    max_header_bytes: Annotated[int, Field(ge=1024, le=1024 * 1024)] = Field(
        default=32 * 1024,
        description="request line and headers together; more is answered 431 and closed",
    )
    tls_client_ca: Path | None = Field(
        default=None,
        description="CA file (PEM, reloaded with the certificate) that callers' client "
        "certificates must chain to; without it no client certificate is asked for. The API "
        "server presents one when its --admission-control-config-file names a kubeconfig "
        "for this webhook",
    )
    malloc_trim_seconds: Annotated[float, Field(ge=0, le=3600)] = Field(
        default=10.0,
        description="how often, after connections closed, memory freed by them is returned "
        "to the system (glibc malloc_trim); 0: never",
    )

    # -- self-managed certificates ---------------------------------------------------------
    namespace: str | None = Field(
        default=None,
        # The Deployment sets POD_NAMESPACE from the downward API (metadata.namespace).
        validation_alias=AliasChoices(f"{ENV_PREFIX}NAMESPACE", "POD_NAMESPACE"),
        description="namespace of the Secret and the Service (self-managed; default: the "
        "POD_NAMESPACE environment variable)",
    )
    tls_secret: str = Field(
        default="vramguard-webhook-tls", description="Secret of the CA and serving certificate"
    )
    webhook_configuration: str = Field(
        default="vramguard",
        description="MutatingWebhookConfiguration whose webhooks' caBundle is kept current",
    )
    service: str = Field(
        default="vramguard-webhook",
        description="Service the API server calls: the serving certificate names "
        "<service>.<namespace>.svc, <service>.<namespace> and <service>.<namespace>.svc.<domain>",
    )
    cluster_domain: str = "cluster.local"
    tls_extra_names: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="more DNS names or IP addresses for the serving certificate, comma "
        "separated (a webhook registered by URL)",
    )
    tls_sync_seconds: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=30.0,
        description="how often each replica reads the Secret (and follows a rotation)",
    )
    tls_ca_days: Annotated[int, Field(ge=2)] = 730
    tls_ca_renew_days: Annotated[int, Field(ge=1)] = 60
    tls_cert_days: Annotated[int, Field(ge=2)] = 90
    tls_cert_renew_days: Annotated[int, Field(ge=1)] = 30
    tls_propagation_seconds: Annotated[float, Field(ge=0, le=86400)] = Field(
        default=60.0,
        description="how long a new CA bundle is published before a certificate from the new "
        "CA is served",
    )
    tls_overlap_seconds: Annotated[float, Field(gt=0)] = Field(
        default=86400.0,
        description="how long the previous CA stays trusted after the switch to a new one",
    )

    @field_validator("tls_extra_names", mode="before")
    @classmethod
    def _split_names(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(name.strip() for name in value.split(",") if name.strip())
        return value

    @model_validator(mode="after")
    def _self_managed(self) -> Settings:
        if self.tls_mode != "self-managed":
            return self
        if not self.namespace:
            raise ValueError(
                "self-managed TLS needs the namespace: set POD_NAMESPACE (the downward API's "
                "metadata.namespace) or --namespace"
            )
        self.serving_names()
        self.rotation_timings()
        # A replica moves to a new certificate within one sync (plus the reload); the old CA
        # must outlive that by far, or a slow replica would serve an untrusted certificate.
        if self.tls_overlap_seconds < 2 * (self.tls_sync_seconds + self.tls_reload_seconds):
            raise ValueError(
                "tls_overlap_seconds must be at least twice tls_sync_seconds + "
                "tls_reload_seconds: every replica must have switched before the old CA goes"
            )
        return self

    def body_limit(self) -> int:
        """max_body_bytes, or its default for memory_limit_mib."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        return default_body_limit(self.memory_limit_mib, self.max_buffered_bodies)

    def connection_limit(self) -> int:
        """max_connections, or its default for memory_limit_mib."""
        if self.max_connections is not None:
            return self.max_connections
        reviews = self.body_limit() * (PARSE_AMPLIFICATION + self.max_buffered_bodies) / MiB
        left = self.memory_limit_mib - BASE_RSS_MIB - SLACK_MIB - reviews
        return max(16, int(left / CONNECTION_MIB))

    def serving_names(self) -> SubjectNames:
        """The serving certificate's names: the Service's, and the extra ones."""
        service = f"{self.service}.{self.namespace}"
        dns = [f"{service}.svc", service, f"{service}.svc.{self.cluster_domain}"]
        ips: list[str] = []
        for name in self.tls_extra_names:
            try:
                ipaddress.ip_address(name)
            except ValueError:
                dns.append(name)
            else:
                ips.append(name)
        return subject_names(dns, ips)

    def rotation_timings(self) -> Timings:
        return Timings(
            ca_days=self.tls_ca_days,
            ca_renew_days=self.tls_ca_renew_days,
            serving_days=self.tls_cert_days,
            serving_renew_days=self.tls_cert_renew_days,
            propagation=timedelta(seconds=self.tls_propagation_seconds),
            overlap=timedelta(seconds=self.tls_overlap_seconds),
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m webhook",
        description="vramguard mutating admission webhook (HTTPS). Every flag can also be set "
        f"as an environment variable: {ENV_PREFIX}<FLAG> (e.g. {ENV_PREFIX}TLS_CERT); "
        "flags win.",
    )
    for name, info in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        choices = _choices(info.annotation)
        parser.add_argument(
            flag,
            dest=name,
            default=None,
            metavar=None if choices else name.upper(),
            choices=choices,
            help=info.description
            or (f"default {info.default}" if not info.is_required() else None),
        )
    return parser


def settings_from(argv: Sequence[str] | None = None) -> Settings:
    """Settings from the environment, overridden by the given command-line flags.

    Raises pydantic.ValidationError naming each missing or bad setting.
    """
    args = build_parser().parse_args(argv)
    given: dict[str, Any] = {k: v for k, v in vars(args).items() if v is not None}
    # Init arguments take precedence over the environment in pydantic-settings.
    return Settings(**given)


def _choices(annotation: Any) -> list[str] | None:
    if get_origin(annotation) is Literal:
        return [str(choice) for choice in get_args(annotation)]
    return None
