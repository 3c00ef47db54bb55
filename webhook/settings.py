"""The webhook's settings: flags override VRAMGUARD_WEBHOOK_* environment variables."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "VRAMGUARD_WEBHOOK_"
# controller-runtime's limit: an AdmissionReview holds the object and the old object, each
# up to the API server's 3 MiB request limit, plus the envelope.
MAX_BODY_BYTES = 7 * 1024 * 1024


class Settings(BaseSettings):
    """Everything the webhook process is configured with."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    policy: Path = Field(description="policy YAML file (reloaded when it changes)")
    tls_cert: Path = Field(description="serving certificate (PEM, reloaded when it changes)")
    tls_key: Path = Field(description="serving key (PEM)")
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
    max_body_bytes: Annotated[int, Field(gt=0)] = MAX_BODY_BYTES


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
