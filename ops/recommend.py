"""`vramguard recommend`: GPU-memory budgets from history, per workload.

    vramguard recommend --prometheus-url URL [--window 7d] [--safety 1.2] [--step 256]
                        [--oversized-ratio 1.5] [-n NAMESPACE ...] [-o table|json|policy]
                        [--policy FILE] [--kubeconfig FILE]

One range query of the telemetry preset's per-pod series over the window (each point the
highest sample of its step, so no peak between two points is lost), one list of the API
(nodes, pods, and the controllers that own pods) and one instant read (which card each pod
holds) give, per workload (a Deployment through its ReplicaSets, a StatefulSet, a DaemonSet,
a CronJob through its Jobs, a Job, a bare pod), the peak and p99 of its per-pod usage, its
declared budget and where it is set, a recommended budget (peak x --safety, rounded up to
--step MiB) and a verdict: over budget, oversized, ok or no data (gpumem.recommend). Pods that
are gone from the API (recycled, replaced by a rollout, finished runs) count for the workload
whose pods they were, by the names its controller gives them. Then, per node and per card,
whether the recommended budgets of the pods there fit the advertised capacity.

`-o policy` prints the `namespaces:` entries of a policy file that would set the recommended
budgets the policy can set (the namespace's gpumemMiB for pods that declare none, and the cap
raised where it is below them), with the reasons as comments; budgets declared in a pod
template, which the policy does not change, are named in comments with their new value.

Exit status: 0 when no selected workload is over budget; 1 when one is (a finding, like
preflight's "no": the output says which); 2 when it could not tell or was used wrongly:
Prometheus, the API server or the kubeconfig unreadable, a preset without per-pod series
(dcgm), an unreadable policy, bad arguments. Budgets that do not fit a card are shown, not
counted in the status: they are what the workloads use, and the card is too small for them.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

from extender.telemetry import (
    HistoryWindow,
    PrometheusQuery,
    QueryPlan,
    TelemetryError,
    plan_queries,
    read_pod_history,
)
from gpumem.policy_file import PolicyError
from gpumem.recommend import RecommendSettings, UsageHistory
from gpumem.state import PodKey
from gpumem.workloads import controllers_from
from kube.client import api_client
from kube.workloads import WorkloadListError, workload_lister
from ops import common, readings
from ops.common import CANNOT_TELL, OK, USAGE_ERROR
from ops.recommend_report import (
    HistorySource,
    build_report,
    recommendation_json,
    render_policy,
    render_recommendation,
)

NAME = "recommend"
# A finding, not a failure to read (as preflight's NO): some workload used more than it
# declared.
OVER_BUDGET = common.NO
# At most this many points per series in the range query (Prometheus refuses more than
# 11,000): the step grows with the window, in whole minutes, never below one.
MAX_POINTS = 2000
MIN_STEP_SECONDS = 60
HISTORY_TIMEOUT_SECONDS = 120.0
_DURATION = re.compile(r"(\d+)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MIN_WINDOW_SECONDS = 600
MAX_WINDOW_SECONDS = 90 * 86400


def duration(text: str) -> float:
    """A Prometheus-style duration (`7d`, `12h`, `1w2d`), 10 minutes to 90 days."""
    value = text.strip()
    if not value or _DURATION.sub("", value):
        raise argparse.ArgumentTypeError(f"not a duration like 7d, 12h or 30m: {text!r}")
    seconds = sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION.findall(value))
    if not MIN_WINDOW_SECONDS <= seconds <= MAX_WINDOW_SECONDS:
        raise argparse.ArgumentTypeError(f"must be from 10m to 90d: {text!r}")
    return float(seconds)


def factor(least: Fraction, most: Fraction, *, strict: bool) -> Callable[[str], Fraction]:
    """A decimal factor within [least, most] (above least when strict), as a Fraction, so
    that 10700 x 1.2 is 12840 exactly."""

    def parse(text: str) -> Fraction:
        try:
            value = Fraction(Decimal(text.strip()))
        except (InvalidOperation, ValueError):
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        low_ok = value > least if strict else value >= least
        if not (low_ok and value <= most):
            bound = "more than" if strict else "at least"
            raise argparse.ArgumentTypeError(
                f"must be {bound} {float(least):g} and at most {float(most):g}: {text!r}"
            )
        return value

    return parse


def positive_mib(text: str) -> int:
    value = common.mib(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {text!r}")
    return value


def resolution(window_seconds: float) -> int:
    """The range query's step for a window: whole minutes, at most MAX_POINTS points."""
    minutes = math.ceil(window_seconds / MAX_POINTS / 60)
    return max(MIN_STEP_SECONDS, minutes * 60)


def register(subcommands: Any) -> None:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        NAME,
        help="GPU-memory budgets from Prometheus history, per workload, and whether they fit",
        description="From the per-pod GPU memory history in Prometheus, per workload: peak, "
        "p99, declared budget, a recommended budget (peak x safety, rounded up to the step) "
        "and a verdict (over budget, oversized, ok, no data); per node and card, whether the "
        "recommended budgets fit its capacity. -o policy prints the policy entries that set "
        "them. Exit 1 when a workload is over budget, 2 when something could not be read.",
    )
    add = parser.add_argument
    add("--prometheus-url", required=True, metavar="URL", help="Prometheus base URL")
    add("--window", type=duration, default=duration("7d"), help="history to read (default 7d)")
    add(
        "--safety",
        type=factor(Fraction(1), Fraction(10), strict=False),
        default=Fraction(6, 5),
        help="recommended = peak x this (default 1.2; at least 1)",
    )
    add(
        "--step",
        type=positive_mib,
        default=256,
        metavar="MIB",
        help="recommended budgets are rounded up to a multiple of this (default 256)",
    )
    add(
        "--oversized-ratio",
        type=factor(Fraction(1), Fraction(100), strict=True),
        default=Fraction(3, 2),
        help="oversized: declared above this x recommended (default 1.5: a third of the "
        "budget or more would be given back)",
    )
    add(
        "-n",
        "--namespace",
        dest="namespaces",
        action="extend",
        nargs="+",
        default=[],
        metavar="NS",
        help="only these namespaces' workloads (default: all)",
    )
    add("-o", "--output", choices=["table", "json", "policy"], default="table")
    common.add_cluster_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        policy = readings.load_policy(args.policy)
    except PolicyError as err:
        return common.fail(NAME, str(err), USAGE_ERROR)
    plan = plan_queries(policy.extender.telemetry)
    if plan.pod_used is None:
        return common.fail(
            NAME,
            f"telemetry preset {plan.source} has no per-pod GPU memory series (dcgm-exporter "
            "repeats a card's figure for every pod on it); use preset node-agent or "
            "pod-exporter, or set extender.telemetry.queries.podUsedMiB",
            USAGE_ERROR,
        )
    step = resolution(args.window)
    try:
        nodes, pods = readings.list_cluster(args.kubeconfig)
        controllers = list_controllers(args)
        now = readings.now()
        window = HistoryWindow(now - args.window, now, step)
        histories = read_history(args.prometheus_url, plan, window)
        reading = readings.read_live(args.prometheus_url, policy, now)
    except readings.ReadError as err:
        # 1 is a finding here, so a read that failed is "cannot tell" (2), as in preflight.
        return common.fail(NAME, str(err), CANNOT_TELL)
    report = build_report(
        policy=policy,
        pods=pods,
        controllers=controllers_from(controllers),
        histories=histories,
        snapshot=readings.build_snapshot(policy, nodes, pods, reading, now),
        settings=RecommendSettings(
            safety=args.safety,
            step_mib=args.step,
            oversized_ratio=args.oversized_ratio,
            resolution_seconds=float(step),
        ),
        source=HistorySource(plan.source, plan.pod_used.expr, args.window, now),
        namespaces=args.namespaces,
    )
    if args.output == "policy":
        print(render_policy(report), end="", flush=True)
    else:
        common.show(
            args.output,
            lambda: recommendation_json(report),
            lambda colour: render_recommendation(report, colour=colour),
        )
    return OVER_BUDGET if report.over_budget else OK


def list_controllers(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """The controllers that own pods (kube.workloads), every namespace."""
    lister = readings.connect(
        args.kubeconfig,
        lambda path: workload_lister(
            api_client(str(path) if path else None, pool_size=2, retries=0)
        ),
    )
    try:
        return lister.list_controllers()
    except WorkloadListError as err:
        raise readings.ReadError(str(err)) from err


def read_history(
    prometheus_url: str, plan: QueryPlan, window: HistoryWindow
) -> dict[PodKey, UsageHistory]:
    """Each pod's usage over the window, through the preset's per-pod query."""
    try:
        query = PrometheusQuery(prometheus_url, HISTORY_TIMEOUT_SECONDS)
        histories, _ = read_pod_history(query.range, plan, window)
    except TelemetryError as err:
        detail = readings.cause(err.__cause__) if err.__cause__ is not None else str(err)
        raise readings.TelemetryUnavailable(
            f"history from Prometheus at {prometheus_url} unavailable: {detail}"
        ) from err
    except Exception as err:  # a URL the client cannot even use
        raise readings.TelemetryUnavailable(
            f"history from Prometheus at {prometheus_url} unavailable: {readings.cause(err)}"
        ) from err
    return histories


__all__ = ["duration", "register", "resolution", "run"]
