"""The policy file: which pods are GPU pods and what vramguard injects and enforces for them.

One YAML file configures both services; `extender:` holds what only the extender reads.
Every model forbids unknown keys, so a typo fails at startup with the field's path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from gpumem.demand import ResourceNames
from gpumem.hints import HintRules

# An extended resource name: a DNS subdomain prefix, a slash, a name (k8s IsQualifiedName).
_RESOURCE = re.compile(
    r"^(?:[a-z0-9]([-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
# A pattern: the start of such a name (prefix, slash, and any start of a name), then `*`.
_RESOURCE_PATTERN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/"
    r"(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?\*$"
)
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,253}$")
_CLASS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")

# Values of a deviceEnvNames variable that give a container no card (NVIDIA Container
# Toolkit): void or empty behave like runc, none mounts the driver but no GPU. Ordered, since
# the ephemeral-container policy writes them as a CEL list; the webhook and that policy read
# this one tuple.
NO_DEVICES: tuple[str, ...] = ("", "void", "none")

T = TypeVar("T")

MiB = Annotated[int, Field(ge=0, le=16 * 1024 * 1024)]
PositiveMiB = Annotated[int, Field(gt=0, le=16 * 1024 * 1024)]
# limit = budget x factor: never below the request (the toolkit's hook refuses a request above
# the limit, and the container then fails to start), and a bound that still means something.
LimitFactor = Annotated[float, Field(ge=1, le=16)]
# A PriorityClass value: user classes go up to 1e9, the two system classes to 2000001000.
PriorityValue = Annotated[int, Field(ge=-2147483648, le=2000001000)]
ClassViolation = Literal["replace", "deny"]


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


def _check_class(value: str | None) -> str | None:
    if value is not None and (len(value) > 253 or not _CLASS_NAME.match(value)):
        raise ValueError(f"{value!r} is not a valid PriorityClass name")
    return value


def _check_classes(value: tuple[str, ...] | None) -> tuple[str, ...] | None:
    for name in value or ():
        _check_class(name)
    return value


class Hints(_Model):
    """Enforcement hints: environment variables the webhook writes into every GPU container
    that has a budget of its own, for the stack under it to enforce that budget (README,
    "Enforcement hints"). Every switch is off by default; a variable the pod sets itself is
    left alone, with a warning."""

    container_toolkit: bool = Field(
        default=False,
        description="NVIDIA_GPU_MEMORY_REQUEST / NVIDIA_GPU_MEMORY_LIMIT (MiB), read by the "
        "NVIDIA Container Toolkit's apply-cuda-memory-limits CDI hook, enforced by the driver. "
        "Needs cgroup v2 and a driver with NVML SetMemoryLimits (CUDA 13.4): elsewhere the hook "
        "fails and so does the container.",
    )
    toolkit_limit_factor: LimitFactor = Field(
        default=1.0,
        description="NVIDIA_GPU_MEMORY_LIMIT = budget x this (rounded down); the request is the "
        "budget.",
    )
    mps: bool = Field(
        default=False,
        description="CUDA_MPS_PINNED_DEVICE_MEM_LIMIT (0=<budget>M per device), enforced by "
        "the MPS server; it can only lower the server's default limit.",
    )
    jax: bool = Field(
        default=False,
        description="XLA_PYTHON_CLIENT_PREALLOCATE=false, and XLA_PYTHON_CLIENT_MEM_FRACTION = "
        "budget / cardMiB when the card size is known.",
    )
    tensorflow: bool = Field(
        default=False,
        description="TF_FORCE_GPU_ALLOW_GROWTH=true: no up-front grab of the card (not a cap).",
    )
    cupy: bool = Field(default=False, description="CUPY_GPU_MEMORY_LIMIT = budget in bytes.")
    dry_run: bool = Field(
        default=False,
        description="Write nothing; warn (and annotate the audit event) with what would be set.",
    )
    card_mib: PositiveMiB | None = Field(
        default=None,
        alias="cardMiB",
        description="Total memory of the namespace's cards (as GPU Feature Discovery's "
        "nvidia.com/gpu.memory reports it), for the fraction hints; null: no fraction.",
    )


class HintsOverride(_Model):
    """Per-namespace hints; a field left out falls back to `defaults.hints`."""

    container_toolkit: bool | None = None
    toolkit_limit_factor: LimitFactor | None = None
    mps: bool | None = None
    jax: bool | None = None
    tensorflow: bool | None = None
    cupy: bool | None = None
    dry_run: bool | None = None
    card_mib: PositiveMiB | None = Field(
        default=None,
        alias="cardMiB",
        description="This namespace's card size; an explicit null refuses the default's.",
    )


class NamespaceOverride(_Model):
    """Per-namespace overrides; a field left out falls back to `defaults`."""

    priority_class_name: str | None = None
    gpumem_mib: PositiveMiB | None = Field(default=None, alias="gpumemMiB")
    max_gpumem_mib: PositiveMiB | None = Field(default=None, alias="maxGpumemMiB")
    require_declaration: bool | None = None
    allowed_priority_classes: tuple[str, ...] | None = Field(
        default=None, description="This namespace's list; an explicit null allows any class."
    )
    max_priority: PriorityValue | None = Field(
        default=None, description="This namespace's ceiling; an explicit null lifts the default's."
    )
    disallowed_priority_class: ClassViolation | None = None
    hints: HintsOverride = HintsOverride()

    _class = field_validator("priority_class_name")(_check_class)
    _classes = field_validator("allowed_priority_classes")(_check_classes)


class Defaults(_Model):
    priority_class_name: str | None = Field(
        default=None, description="Class set on GPU pods; null injects none."
    )
    gpumem_mib: PositiveMiB = Field(
        default=1024, alias="gpumemMiB", description="Budget injected when a pod declares none."
    )
    max_gpumem_mib: PositiveMiB | None = Field(
        default=None, alias="maxGpumemMiB", description="A pod declaring more is denied."
    )
    require_declaration: bool = Field(
        default=False, description="Deny GPU pods that declare no gpumem instead of injecting."
    )
    allowed_priority_classes: tuple[str, ...] | None = Field(
        default=(),
        description="PriorityClasses a GPU pod may name itself and keep, besides the one the "
        "policy gives its namespace (and the cluster's globalDefault, which is replaced). "
        "Empty: none; null: any class (subject to maxPriority). Any other class could preempt "
        "every pod below it.",
    )
    max_priority: PriorityValue | None = Field(
        default=None,
        description="Ceiling on the value of a class a GPU pod names itself, as the "
        "webhook's PriorityClass watch knows it; a class whose value is not known (no API "
        "access, or not synced yet) counts as above it. null: no ceiling.",
    )
    disallowed_priority_class: ClassViolation = Field(
        default="replace",
        description="A GPU pod whose own class is not allowed: replace it by the namespace's "
        "class (or remove it where the namespace has none) with a warning, or deny the pod.",
    )
    hints: Hints = Hints()

    _class = field_validator("priority_class_name")(_check_class)
    _classes = field_validator("allowed_priority_classes")(_check_classes)


class TelemetryQueries(_Model):
    """PromQL for live GPU memory, each replacing its preset's query. Series name their node
    (nodeLabels); those that also carry a GPU UUID (label UUID or uuid) are one card each,
    de-duplicated, and the node's figure is the sum of its cards."""

    free_mib: str | None = Field(default=None, alias="freeMiB")
    used_mib: str | None = Field(default=None, alias="usedMiB")
    total_mib: str | None = Field(default=None, alias="totalMiB")
    pod_used_mib: str | None = Field(
        default=None, alias="podUsedMiB", description="Per pod: labels namespace and pod."
    )
    pod_card: str | None = Field(
        default=None,
        alias="podCard",
        description="Which card each pod holds: series labelled namespace, pod and the GPU's "
        "UUID (UUID or uuid); the value is ignored. Wins over pod labels on the other series.",
    )


class Telemetry(_Model):
    preset: Literal["dcgm", "pod-exporter", "node-agent", "custom"] = Field(
        default="dcgm",
        description="dcgm: dcgm-exporter's DCGM_FI_DEV_FB_FREE/USED per GPU; pod-exporter: "
        "gpu_pod_memory_used_bytes per pod; node-agent: `vramguard node-agent` (per GPU, per "
        "pod, and which card each pod holds); custom: only the queries given.",
    )
    queries: TelemetryQueries = TelemetryQueries()
    node_labels: tuple[str, ...] = Field(
        default=("Hostname", "hostname", "node", "kubernetes_node", "instance"),
        description="Labels tried in order to map a series to a Node name.",
    )
    node_total_mib: PositiveMiB | None = Field(
        default=None,
        alias="nodeTotalMiB",
        description="Card size when telemetry reports only usage and nodes have no GFD labels.",
    )

    @model_validator(mode="after")
    def _custom_needs_queries(self) -> Telemetry:
        q = self.queries
        if self.preset == "custom" and q.free_mib is None and q.used_mib is None:
            raise ValueError("preset custom needs queries.freeMiB or queries.usedMiB")
        return self


# How the NVIDIA device plugin picks a time-sliced replica's card (gpumem.cards).
AllocationPolicy = Literal["distributed", "packed"]


class ExtenderSettings(_Model):
    floor_mib: MiB = Field(default=512, alias="floorMiB", description="Live headroom kept free.")
    capacity_slack_mib: MiB = Field(
        default=1024,
        alias="capacitySlackMiB",
        description="Subtracted from GFD card memory when gpumem is not advertised.",
    )
    telemetry: Telemetry = Telemetry()
    refresh_seconds: Annotated[float, Field(gt=0, le=3600)] = 5.0
    max_age_seconds: Annotated[float, Field(gt=0, le=86400)] = 60.0
    stale_mode: Literal["budget-only", "deny"] = "budget-only"
    warmup_seconds: Annotated[float, Field(ge=0, le=86400)] = 120.0
    scoring: Literal["binpack", "spread"] = "binpack"
    allocation_policy: AllocationPolicy = Field(
        default="distributed",
        description="How the NVIDIA device plugin picks the card of a time-sliced replica "
        "(--shared-devices-allocation-policy): distributed (its default) takes the card with "
        "the fewest allocated replicas, packed the most. On nodes with several cards the fit "
        "rule checks every card the plugin could give the pod under this policy.",
    )
    reservation_ttl_seconds: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=60.0,
        alias="reservationTTLSeconds",
        description="A reservation made at bind ends when the watch sees the pod, or after this.",
    )


class Policy(_Model):
    """The whole policy file."""

    gpu_resource_names: tuple[str, ...] = Field(
        default=("nvidia.com/gpu",),
        min_length=1,
        description="Resources that make a GPU pod: names, or patterns ending in * for a "
        "device plugin that renames its resource (nvidia.com/mig-* for MIG profiles, "
        "nvidia.com/gpu.* for renamed shared GPUs). A pattern needs the name's prefix and "
        "slash (vendor.example/...).",
    )
    gpumem_resource_name: str = Field(
        default="vramguard.io/gpumem", description="Extended resource counting GPU memory in MiB."
    )
    scheduler_name: str | None = Field(
        default="vramguard-scheduler", description="Set on GPU pods; null leaves it alone."
    )
    allowed_scheduler_names: tuple[str, ...] = Field(
        default=(),
        description="Schedulers a GPU pod may name itself and keep; any other schedulerName "
        "(default-scheduler included) is replaced by schedulerName, so a pod cannot leave the "
        "GPU-aware scheduler by naming another one.",
    )
    min_gpumem_mib: PositiveMiB = Field(
        default=1,
        alias="minGpumemMiB",
        description="The smallest GPU-memory budget a GPU pod may declare; a declaration below "
        "it (0, or 1n, which rounds to 0 or 1) is denied: a budget of 0 fits everywhere and "
        "reserves nothing.",
    )
    allow_node_name: bool = Field(
        default=False,
        description="Admit GPU pods that set spec.nodeName. Such a pod skips the scheduler and "
        "vramguard's per-card and live checks (only the kubelet's node-level count remains), "
        "so by default it is denied outside excludedNamespaces.",
    )
    device_env_names: tuple[str, ...] = Field(
        default=("NVIDIA_VISIBLE_DEVICES",),
        description="Environment variables that hand a container GPUs through the container "
        "runtime. A container that sets one to anything but void, none or empty without "
        "requesting a gpuResourceNames resource is denied: it would reach every card named "
        "(all: every card of the node) with no budget.",
    )
    gpu_runtime_class_names: tuple[str, ...] = Field(
        default=("nvidia",),
        description="RuntimeClasses that expose GPUs (the NVIDIA container runtime: CUDA "
        "images set NVIDIA_VISIBLE_DEVICES=all themselves). A pod that names one without "
        "requesting a gpuResourceNames resource is denied.",
    )
    allow_resource_claims: bool = Field(
        default=False,
        description="Admit pods with spec.resourceClaims (Dynamic Resource Allocation). A "
        "claim can allocate a GPU that vramguard neither sees nor counts (the webhook sees "
        "only the claim's name), so by default such pods are denied outside "
        "excludedNamespaces.",
    )
    excluded_namespaces: tuple[str, ...] = ("kube-system",)
    defaults: Defaults = Defaults()
    namespaces: dict[str, NamespaceOverride] = {}
    namespace_labels: dict[str, dict[str, str]] = Field(
        default={}, description="label key -> label value -> PriorityClass name."
    )
    extender: ExtenderSettings = ExtenderSettings()

    @field_validator("gpumem_resource_name")
    @classmethod
    def _gpumem_name(cls, value: str) -> str:
        if len(value) > 253 or not _RESOURCE.match(value):
            raise ValueError(f"{value!r} is not a valid resource name")
        return value

    @field_validator("gpu_resource_names")
    @classmethod
    def _gpu_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if len(name) > 253 or not (_RESOURCE.match(name) or _RESOURCE_PATTERN.match(name)):
                raise ValueError(
                    f"{name!r} is neither a valid resource name nor a pattern "
                    "(vendor.example/prefix*)"
                )
        return value

    @field_validator("allowed_scheduler_names")
    @classmethod
    def _scheduler_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if len(name) > 253 or not _CLASS_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid scheduler name")
        return value

    @field_validator("device_env_names")
    @classmethod
    def _env_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not _ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not an environment variable name")
        return value

    @field_validator("gpu_runtime_class_names")
    @classmethod
    def _runtime_classes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if len(name) > 253 or not _CLASS_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid RuntimeClass name")
        return value

    @field_validator("excluded_namespaces")
    @classmethod
    def _namespace_list(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            _check_namespace(name)
        return value

    @field_validator("namespaces")
    @classmethod
    def _namespace_keys(cls, value: dict[str, NamespaceOverride]) -> dict[str, NamespaceOverride]:
        for name in value:
            _check_namespace(name)
        return value

    @field_validator("namespace_labels")
    @classmethod
    def _label_classes(cls, value: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for classes in value.values():
            for name in classes.values():
                _check_class(name)
        return value

    @model_validator(mode="after")
    def _gpumem_not_a_gpu(self) -> Policy:
        if self.resource_names.is_gpu_resource(self.gpumem_resource_name):
            raise ValueError(
                "gpumemResourceName must not also be listed in (or match) gpuResourceNames"
            )
        return self

    @model_validator(mode="after")
    def _defaults_within_caps(self) -> Policy:
        # A budget above its own cap would deny every pod that declares nothing.
        for where, namespace in [("defaults", None)] + [
            (f"namespaces.{name}", name) for name in self.namespaces
        ]:
            rules = self.for_namespace(namespace or "")
            if rules.gpumem_mib < self.min_gpumem_mib:
                raise ValueError(
                    f"{where}: gpumemMiB {rules.gpumem_mib} is below minGpumemMiB "
                    f"{self.min_gpumem_mib}"
                )
            cap = rules.max_gpumem_mib
            if cap is not None and rules.gpumem_mib > cap:
                raise ValueError(
                    f"{where}: gpumemMiB {rules.gpumem_mib} is above maxGpumemMiB {cap}"
                )
        return self

    @property
    def resource_names(self) -> ResourceNames:
        exact = frozenset(name for name in self.gpu_resource_names if not name.endswith("*"))
        prefixes = tuple(name[:-1] for name in self.gpu_resource_names if name.endswith("*"))
        return ResourceNames(exact, self.gpumem_resource_name, prefixes)

    def for_namespace(
        self, namespace: str, labels: Mapping[str, str] | None = None
    ) -> NamespaceRules:
        """Resolve the rules for one namespace.

        Precedence for the class: the namespace's own entry, then the first namespaceLabels
        match (in file order), then defaults. Labels are None when they are not known.
        """
        override = self.namespaces.get(namespace, NamespaceOverride())
        d = self.defaults
        class_name, source = d.priority_class_name, "defaults"
        for key, classes in self.namespace_labels.items():
            value = (labels or {}).get(key)
            if value is not None and value in classes:
                class_name, source = classes[value], f"namespace label {key}={value}"
                break
        if "priority_class_name" in override.model_fields_set:
            class_name, source = override.priority_class_name, f"namespaces.{namespace}"
        return NamespaceRules(
            namespace=namespace,
            excluded=namespace in self.excluded_namespaces,
            priority_class_name=class_name,
            priority_class_source=source,
            gpumem_mib=_pick(override.gpumem_mib, d.gpumem_mib),
            max_gpumem_mib=(
                override.max_gpumem_mib
                if "max_gpumem_mib" in override.model_fields_set
                else d.max_gpumem_mib
            ),
            require_declaration=_pick(override.require_declaration, d.require_declaration),
            allowed_priority_classes=(
                override.allowed_priority_classes
                if "allowed_priority_classes" in override.model_fields_set
                else d.allowed_priority_classes
            ),
            max_priority=(
                override.max_priority
                if "max_priority" in override.model_fields_set
                else d.max_priority
            ),
            disallowed_priority_class=_pick(
                override.disallowed_priority_class, d.disallowed_priority_class
            ),
            hints=_hint_rules(namespace, override.hints, d.hints),
        )


@dataclass(frozen=True)
class NamespaceRules:
    """The policy as it applies to one namespace, every field resolved."""

    namespace: str
    excluded: bool
    priority_class_name: str | None
    priority_class_source: str
    gpumem_mib: int
    max_gpumem_mib: int | None
    require_declaration: bool
    hints: HintRules
    # The classes a pod may name itself (None: any), the ceiling on their value, and what
    # happens to a pod naming another.
    allowed_priority_classes: tuple[str, ...] | None = ()
    max_priority: int | None = None
    disallowed_priority_class: ClassViolation = "replace"


def _hint_rules(namespace: str, override: HintsOverride, defaults: Hints) -> HintRules:
    card_mib, card_source = defaults.card_mib, "defaults.hints.cardMiB"
    if "card_mib" in override.model_fields_set:
        card_mib, card_source = override.card_mib, f"namespaces.{namespace}.hints.cardMiB"
    return HintRules(
        container_toolkit=_pick(override.container_toolkit, defaults.container_toolkit),
        toolkit_limit_factor=_pick(override.toolkit_limit_factor, defaults.toolkit_limit_factor),
        mps=_pick(override.mps, defaults.mps),
        jax=_pick(override.jax, defaults.jax),
        tensorflow=_pick(override.tensorflow, defaults.tensorflow),
        cupy=_pick(override.cupy, defaults.cupy),
        dry_run=_pick(override.dry_run, defaults.dry_run),
        card_mib=card_mib,
        card_source=card_source,
    )


def _pick(override: T | None, default: T) -> T:
    return default if override is None else override


def _check_namespace(name: str) -> None:
    if len(name) > 63 or not _DNS_LABEL.match(name):
        raise ValueError(f"{name!r} is not a valid namespace name")


class PolicyError(ValueError):
    """A policy file that cannot be used; the message names the file and the field."""


def parse_policy(text: str, source: str = "policy") -> Policy:
    """Parse and validate policy YAML; raise PolicyError naming each bad field."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise PolicyError(f"{source}: not valid YAML: {err}") from err
    if data is None:
        # An empty file is far more often a half-written edit than a wish for all defaults
        # (which `{}` still asks for): refusing it keeps the last good policy in force.
        raise PolicyError(f"{source}: the policy is empty; write {{}} for all defaults")
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: the top level must be a mapping, not {type(data).__name__}")
    try:
        return Policy.model_validate(data)
    except ValidationError as err:
        raise PolicyError(f"{source}: {_describe(err)}") from err


def read_policy_text(path: Path) -> str:
    """The policy file's text; an unreadable file is a PolicyError naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as err:
        raise PolicyError(f"{path}: cannot read policy file: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise PolicyError(f"{path}: not UTF-8 text: {err}") from err


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file."""
    return parse_policy(read_policy_text(Path(path)), str(path))


def _describe(err: ValidationError) -> str:
    problems = []
    for item in err.errors():
        message = item["msg"].removeprefix("Value error, ")
        where = ".".join(str(part) for part in item["loc"])
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)


def policy_schema() -> dict[str, Any]:
    """JSON Schema of the policy file (field names as written in YAML)."""
    schema = Policy.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "vramguard policy"
    return schema
