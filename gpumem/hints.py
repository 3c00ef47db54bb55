"""Enforcement hints: environment variables through which the stack under a GPU container
holds the container to its vramguard budget.

The budget is a scheduling promise: nothing in Kubernetes stops a process from allocating past
it once it runs. Some layers under the process read a cap from its environment, and the policy
(`hints:`, per namespace, all off by default) asks the webhook to write them:

- the NVIDIA Container Toolkit's `apply-cuda-memory-limits` CDI hook reads
  NVIDIA_GPU_MEMORY_REQUEST / NVIDIA_GPU_MEMORY_LIMIT (integer MiB) and has the driver enforce
  them on the container's cgroup through NVML (hard);
- an MPS client reads CUDA_MPS_PINNED_DEVICE_MEM_LIMIT and the MPS server enforces it (hard,
  and only ever lower than the server's own default);
- JAX, TensorFlow and CuPy read allocator settings (soft: the process's own allocator obeys
  them, nothing else does).

This module says, for one container and its budget, which variables to write and which hints
to leave alone because the pod sets one of their variables itself. Where each variable comes
from and what enforces it: README, "Enforcement hints". Pure: the raw container in, data out;
webhook.decide writes the result into the pod.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

from gpumem.demand import ResourceNames
from gpumem.objects import mapping, sequence
from gpumem.quantity import MIB, QuantityError, parse_quantity

# NVIDIA Container Toolkit, cmd/nvidia-cdi-hook/apply-cuda-memory-limits: the hook reads these
# two from the container's OCI spec (whole MiB, request <= limit, else the container fails to
# start). One version of the hook read the plural spellings first, so a pod that sets those
# decides too.
TOOLKIT_REQUEST = "NVIDIA_GPU_MEMORY_REQUEST"
TOOLKIT_LIMIT = "NVIDIA_GPU_MEMORY_LIMIT"
TOOLKIT_PLURALS = ("NVIDIA_GPU_MEMORY_REQUESTS", "NVIDIA_GPU_MEMORY_LIMITS")
# CUDA MPS client: "<device>=<limit>" pairs, comma separated; "M" counts MiB, as in the NVIDIA
# device plugin's own set_default_device_pinned_mem_limit ("%vM" of bytes / 2^20).
MPS_LIMIT = "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"
# JAX (jaxlib xla_client.generate_pjrt_gpu_plugin_options): the deprecated spelling is the one
# every jaxlib reads, and setting both raises ValueError, so a pod that sets either decides.
JAX_PREALLOCATE = "XLA_PYTHON_CLIENT_PREALLOCATE"
JAX_FRACTION = "XLA_PYTHON_CLIENT_MEM_FRACTION"
JAX_FRACTION_NEW = "XLA_CLIENT_MEM_FRACTION"
# TensorFlow (core/common_runtime/gpu/gpu_bfc_allocator.cc): exactly "true" or "false".
TF_GROWTH = "TF_FORCE_GPU_ALLOW_GROWTH"
# CuPy (docs/source/reference/environment.rst): absolute bytes, or a percentage of the card.
CUPY_LIMIT = "CUPY_GPU_MEMORY_LIMIT"

# A fraction is written in thousandths, rounded down, so that fraction x card stays within
# the budget.
_FRACTION_STEPS = 1000
# The MPS value names every device of the container; a container asking for more GPUs than
# this is not a time-sliced tenant, and the value would only grow with a typo ("1e9").
MAX_MPS_DEVICES = 64

Switch = Literal["containerToolkit", "mps", "jax", "tensorflow", "cupy"]


@dataclass(frozen=True)
class HintRules:
    """The policy's `hints:` as it applies to one namespace, every field resolved."""

    container_toolkit: bool = False
    toolkit_limit_factor: float = 1.0
    mps: bool = False
    jax: bool = False
    tensorflow: bool = False
    cupy: bool = False
    dry_run: bool = False
    card_mib: int | None = None
    # Where card_mib came from, for the warnings ("defaults.hints.cardMiB").
    card_source: str = "defaults.hints.cardMiB"

    @property
    def enabled(self) -> bool:
        return self.container_toolkit or self.mps or self.jax or self.tensorflow or self.cupy


@dataclass(frozen=True)
class Hint:
    """Variables written together for one policy switch. `guards` are the variables whose
    presence in the pod leaves the whole hint alone: its own, and any spelling the reader
    would take instead (or fail on, next to ours)."""

    switch: Switch
    env: tuple[tuple[str, str], ...]
    guards: tuple[str, ...]


@dataclass(frozen=True)
class Unset:
    """A variable a switch asks for that cannot be computed for this container."""

    switch: Switch
    variable: str
    reason: str


@dataclass(frozen=True)
class PodValue:
    """A variable the container sets itself: its value, or None when it comes from valueFrom."""

    variable: str
    value: str | None


@dataclass(frozen=True)
class LeftAlone:
    hint: Hint
    found: PodValue


@dataclass(frozen=True)
class ContainerHints:
    """What to do to one container: the variables to add (in order), the hints left alone
    because the pod sets one of their variables, and the variables that cannot be computed.
    `env_from` is true when the container reads envFrom: vramguard cannot see those variables
    and an entry it added would override one, so nothing is planned."""

    add: tuple[tuple[str, str], ...] = ()
    left_alone: tuple[LeftAlone, ...] = ()
    unset: tuple[Unset, ...] = ()
    env_from: bool = False


def hints_for(
    budget_mib: int, gpus: int, rules: HintRules
) -> tuple[tuple[Hint, ...], tuple[Unset, ...]]:
    """The hints `rules` turn on for a container with a positive budget (MiB) and `gpus` GPUs,
    and the variables that cannot be computed. Every cap is per card, at the budget on each card
    the container gets: the fit rule counts a pod's need against every card it could land on."""
    hints: list[Hint] = []
    unset: list[Unset] = []
    if rules.container_toolkit:
        limit = _floor(Fraction(budget_mib) * Fraction(repr(rules.toolkit_limit_factor)))
        hints.append(
            Hint(
                "containerToolkit",
                ((TOOLKIT_REQUEST, str(budget_mib)), (TOOLKIT_LIMIT, str(limit))),
                (TOOLKIT_REQUEST, TOOLKIT_LIMIT, *TOOLKIT_PLURALS),
            )
        )
    if rules.mps:
        if 1 <= gpus <= MAX_MPS_DEVICES:
            value = ",".join(f"{device}={budget_mib}M" for device in range(gpus))
            hints.append(Hint("mps", ((MPS_LIMIT, value),), (MPS_LIMIT,)))
        else:
            reason = f"it asks for {gpus} GPUs, and the limit is written for 1 to {MAX_MPS_DEVICES}"
            unset.append(Unset("mps", MPS_LIMIT, reason))
    if rules.jax:
        hints.append(Hint("jax", ((JAX_PREALLOCATE, "false"),), (JAX_PREALLOCATE,)))
        fraction, reason = _fraction(budget_mib, rules)
        if fraction is None:
            unset.append(Unset("jax", JAX_FRACTION, reason))
        else:
            guards = (JAX_FRACTION, JAX_FRACTION_NEW)
            hints.append(Hint("jax", ((JAX_FRACTION, fraction),), guards))
    if rules.tensorflow:
        hints.append(Hint("tensorflow", ((TF_GROWTH, "true"),), (TF_GROWTH,)))
    if rules.cupy:
        hints.append(Hint("cupy", ((CUPY_LIMIT, str(budget_mib * MIB)),), (CUPY_LIMIT,)))
    return tuple(hints), tuple(unset)


def plan_container(
    container: Mapping[str, Any], budget_mib: int, gpus: int, rules: HintRules
) -> ContainerHints:
    """What to write into one raw container with a positive budget.

    A hint whose variables the container already holds with vramguard's values (its own
    earlier pass: reinvocation) adds nothing and says nothing; a hint one of whose guards the
    container sets to anything else is left alone whole, so a pair the toolkit reads together
    is never half the pod's and half vramguard's.
    """
    if sequence(container.get("envFrom")):
        return ContainerHints(env_from=True)
    hints, unset = hints_for(budget_mib, gpus, rules)
    present = pod_env(container)
    add: list[tuple[str, str]] = []
    left_alone: list[LeftAlone] = []
    for hint in hints:
        ours = dict(hint.env)
        conflict = next(
            (
                present[name]
                for name in hint.guards
                if name in present and present[name].value != ours.get(name)
            ),
            None,
        )
        if conflict is not None:
            left_alone.append(LeftAlone(hint, conflict))
            continue
        add.extend((name, value) for name, value in hint.env if name not in present)
    return ContainerHints(add=tuple(add), left_alone=tuple(left_alone), unset=unset)


def pod_env(container: Mapping[str, Any]) -> dict[str, PodValue]:
    """The container's own `env`, by name; the last entry of a repeated name wins, as in the
    kubelet."""
    found: dict[str, PodValue] = {}
    for item in sequence(container.get("env")):
        entry = mapping(item)
        name = entry.get("name")
        if not isinstance(name, str):
            continue
        if entry.get("valueFrom") is not None:
            found[name] = PodValue(name, None)
            continue
        value = entry.get("value")
        found[name] = PodValue(name, value if isinstance(value, str) else "")
    return found


def gpu_count(container: Mapping[str, Any], names: ResourceNames) -> int:
    """How many GPUs a raw container asks for: its largest GPU resource (limits, else
    requests), at least 1 (a container that declares only GPU memory still sees device 0)."""
    resources = mapping(container.get("resources"))
    count = 0
    for section in ("limits", "requests"):
        values = mapping(resources.get(section))
        for name, value in values.items():
            if names.is_gpu_resource(str(name)):
                count = max(count, _whole(value))
        if count:
            break
    return max(count, 1)


def _fraction(budget_mib: int, rules: HintRules) -> tuple[str | None, str]:
    """The budget as a fraction of the card, in thousandths rounded down; or None and why."""
    card = rules.card_mib
    if card is None:
        return None, "no card size is known (hints.cardMiB)"
    steps = budget_mib * _FRACTION_STEPS // card
    if steps == 0:
        return None, f"the budget is under 0.001 of the {card} MiB card ({rules.card_source})"
    if steps >= _FRACTION_STEPS:
        return None, f"the budget is not below the {card} MiB card ({rules.card_source})"
    return f"0.{steps:03d}", ""


def _whole(value: object) -> int:
    """A count of devices from a raw quantity; 0 where it is not a positive whole number."""
    try:
        number = parse_quantity(str(value))
    except QuantityError:
        return 0
    return int(number) if number.denominator == 1 and number > 0 else 0


def _floor(value: Fraction) -> int:
    return value.numerator // value.denominator
