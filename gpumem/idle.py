"""How much of a pod's budget is not in use yet: what the live check takes off the live free
VRAM, because a pod that has not allocated its memory does not show in it yet. Pure."""

from __future__ import annotations

import math
from collections.abc import Iterable

from gpumem.state import PodView


def idle_budget(pod: PodView, per_pod_usage: bool) -> tuple[int, int]:
    """How much of a pod's budget is not in use yet: (MiB at any time, MiB while warming up).

    A pod that has not allocated its VRAM yet does not show in the live free figure, so the
    live check subtracts its budget. With per-pod usage, a pod absent from it is not using
    anything at any age; a warming pod that is present counts only declared - used, because
    the part it already allocated is already missing from free VRAM and subtracting its whole
    budget would count that part twice. Without per-pod usage only the warm-up window says
    whether a pod has allocated yet.
    """
    if not per_pod_usage:
        return 0, pod.declared_mib
    if pod.used_mib is None:
        return pod.declared_mib, 0
    return 0, max(0, pod.declared_mib - pod.used_mib)


def idle_parts(pods: Iterable[PodView], per_pod_usage: bool) -> tuple[int, list[tuple[float, int]]]:
    """The pods' not-yet-used MiB: (at any time, [(until, MiB while warming)])."""
    base = 0
    warming = []
    for pod in pods:
        always, while_warming = idle_budget(pod, per_pod_usage)
        base += always
        if while_warming:
            warming.append((pod.warm_until, while_warming))
    return base, warming


def idle_window(base: int, warming: list[tuple[float, int]], at: float) -> tuple[float, float, int]:
    """The span around `at` in which the set of warming pods does not change, and the
    not-yet-using MiB within it."""
    start = max((until for until, _ in warming if until <= at), default=-math.inf)
    end = min((until for until, _ in warming if until > at), default=math.inf)
    return start, end, base + sum(mib for until, mib in warming if until > at)
