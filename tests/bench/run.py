"""vramguard's benchmark suite: every measure beside its baseline from the same run, one table.

    .venv/bin/python -m tests.bench.run [--quick] [--out build/bench/latest.md] [--only ITEM ...]

Items (each module also runs alone, with its own flags):

1. webhook     tests.bench.webhook_bench: /mutate over HTTPS at fixed rates, GPU and non-GPU
               pods, against GET /healthz (the TLS + HTTP floor) at the same rate.
2. apiserver   tests.bench.apiserver_bench: pod CREATE through a real kube-apiserver with the
               webhook registered vs not, in alternating blocks.
3. extender    tests.bench.extender_bench: /filter and /prioritize (after the pod's /filter,
               and alone) at 100, 1,000, 5,000 nodes, against GET /healthz on the same server.
4. scheduling  tests.bench.scheduling_bench: pods bound per second by kube-scheduler with the
               extender vs the same configuration without it.
5. memory      tests.bench.memory_bench: resident memory of both services, idle vs with
               1,000 nodes and 10,000 pods.

Prints the table and writes it, with the machine, its load and this command line, as Markdown
to --out. Numbers are never judged here: a missed target is a row that says "no", and the exit
status is 0 unless an item could not run. --quick shrinks every size for a smoke run of a few
minutes; its numbers are too small to quote.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.bench.table import Row, markdown_table

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "build" / "bench" / "latest.md"
ITEMS = ("webhook", "apiserver", "extender", "scheduling", "memory")


@dataclass(frozen=True)
class Sizes:
    webhook_rates: tuple[float, ...] = (100, 500, 1000)
    webhook_seconds: float = 5.0
    apiserver_pods: int = 250  # of each kind, per block
    apiserver_rounds: int = 4
    extender_nodes: tuple[int, ...] = (100, 1000, 5000)
    extender_requests: int = 1000
    scheduling_nodes: tuple[int, ...] = (500, 1000)
    scheduling_pods: int = 1000
    scheduling_repeats: int = 2  # extender, plain, plain, extender: drifts hit both arms
    memory_nodes: int = 1000
    memory_pods: int = 10000


FULL = Sizes()
QUICK = Sizes(
    webhook_seconds=1.0,
    apiserver_pods=25,
    apiserver_rounds=2,
    extender_nodes=(100, 1000),
    extender_requests=200,
    scheduling_nodes=(100,),
    scheduling_pods=100,
    scheduling_repeats=1,
    memory_nodes=100,
    memory_pods=1000,
)


@dataclass
class Outcome:
    """What one item produced: its rows for the table and its own detailed table."""

    item: str
    rows: list[Row] = field(default_factory=list)
    details: str = ""
    seconds: float = 0.0
    failed: bool = False


def run_webhook(sizes: Sizes) -> tuple[list[Row], str]:
    from tests.bench import webhook_bench  # noqa: PLC0415 - each item imports what it needs

    rows = webhook_bench.measure(list(sizes.webhook_rates), sizes.webhook_seconds)
    details = webhook_bench.details(rows, connections=8, seconds=sizes.webhook_seconds)
    return webhook_bench.summary_rows(rows), details


def run_apiserver(sizes: Sizes) -> tuple[list[Row], str]:
    from tests.bench import apiserver_bench  # noqa: PLC0415

    latencies = apiserver_bench.measure(sizes.apiserver_pods, sizes.apiserver_rounds)
    rows = apiserver_bench.summary_rows(latencies, sizes.apiserver_pods, sizes.apiserver_rounds)
    return rows, apiserver_bench.details(latencies)


def run_extender(sizes: Sizes) -> tuple[list[Row], str]:
    from tests.bench import extender_bench  # noqa: PLC0415

    rows = extender_bench.measure_sizes(list(sizes.extender_nodes), sizes.extender_requests)
    return extender_bench.summary_rows(rows), extender_bench.details(rows)


def run_scheduling(sizes: Sizes) -> tuple[list[Row], str]:
    from tests.bench import scheduling_bench  # noqa: PLC0415

    arms = scheduling_bench.measure(
        sizes.scheduling_nodes, sizes.scheduling_pods, repeats=sizes.scheduling_repeats
    )
    return scheduling_bench.rows(arms), scheduling_bench.details(arms)


def run_memory(sizes: Sizes) -> tuple[list[Row], str]:
    from tests.bench import memory_bench  # noqa: PLC0415

    result = memory_bench.measure(sizes.memory_nodes, sizes.memory_pods)
    return memory_bench.summary_rows(result), memory_bench.details(result)


RUNNERS: dict[str, Callable[[Sizes], tuple[list[Row], str]]] = {
    "webhook": run_webhook,
    "apiserver": run_apiserver,
    "extender": run_extender,
    "scheduling": run_scheduling,
    "memory": run_memory,
}


def run_item(item: str, sizes: Sizes) -> Outcome:
    """One item; a failure becomes a row saying so (the other items still run)."""
    print(f"[bench] {item} ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    outcome = Outcome(item)
    try:
        outcome.rows, outcome.details = RUNNERS[item](sizes)
    except Exception as err:
        traceback.print_exc()
        outcome.failed = True
        outcome.rows = [Row(item, "", None, "", note=f"failed: {_first_line(err)}")]
        outcome.details = f"failed:\n{traceback.format_exc()}"
    outcome.seconds = time.monotonic() - started
    print(f"[bench] {item} done in {outcome.seconds:.0f} s", file=sys.stderr, flush=True)
    return outcome


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:120] if text else ''}"


# --- the report ------------------------------------------------------------------------------


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        total_kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {total_kib / 1024**2:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    cores = os.cpu_count() or 0
    return f"{cores} cores{f' ({model})' if model else ''}{memory}, {platform.system()}"


def load_average() -> str:
    try:
        return " / ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def git_revision() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}{' with local changes' if dirty else ''}"


def kubernetes() -> str:
    try:
        from tests.e2e.harness import kubernetes_version  # noqa: PLC0415

        return kubernetes_version()
    except Exception:
        return "unknown"


@dataclass(frozen=True)
class Header:
    command: str
    started: str
    load_start: str
    load_end: str
    quick: bool


def report(header: Header, outcomes: Sequence[Outcome]) -> str:
    rows = [row for outcome in outcomes for row in outcome.rows]
    lines = [
        "# vramguard benchmarks" + (" (--quick: sizes too small to quote)" if header.quick else ""),
        "",
        f"- command: `{header.command}`",
        f"- started: {header.started}, revision {git_revision()}",
        f"- machine: {machine()}; Python {platform.python_version()}; Kubernetes {kubernetes()}",
        f"- load average (1 / 5 / 15 min): {header.load_start} at the start, "
        f"{header.load_end} at the end",
        "- ratio = value / baseline, both measured in this run on this machine",
        "",
        markdown_table(rows),
        "",
    ]
    for outcome in outcomes:
        lines += [
            f"## {outcome.item} ({outcome.seconds:.0f} s)",
            "",
            "```",
            outcome.details.rstrip(),
            "```",
            "",
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Markdown file to write")
    parser.add_argument("--only", nargs="+", choices=ITEMS, help="run only these items")
    args = parser.parse_args(argv)
    arguments = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", "-m", "tests.bench.run", *arguments])
    sizes = QUICK if args.quick else FULL
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_start = load_average()
    outcomes = [run_item(item, sizes) for item in ITEMS if not args.only or item in args.only]
    header = Header(command, started, load_start, load_average(), args.quick)
    text = report(header, outcomes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    print(f"[bench] written to {args.out}", file=sys.stderr)
    return 1 if any(outcome.failed for outcome in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
