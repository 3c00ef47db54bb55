"""Latency of the webhook under a fixed request rate, over HTTPS, from another process.

    .venv/bin/python -m tests.bench.webhook_bench [--rates 100 500 1000] [--seconds 5]

Starts `python -m webhook` on 127.0.0.1 with a certificate issued by `python -m certs` into a
temporary directory, then drives it open-loop: a dispatcher thread releases one request every
1/rate seconds whatever the replies do, and a pool of keep-alive connections sends them.
Latency is measured from the scheduled send time, so a stalled server shows up as latency
instead of as a slower schedule (no coordinated omission); "wire" latency is from the moment a
connection actually sent the request. The server's own view comes from the /metrics histogram.
Target: p99 < 2 ms at 500 req/s on one worker. `measure` and `summary_rows` are what
tests.bench.run calls (which always drives the /healthz baseline).
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import queue
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.bench.table import Row, Target
from tests.http.webhook.process import free_port, issue_certificate, wait_ready, webhook_process
from tests.http.webhook.reviews import gpu_pod, review, web_pod

UID_MARK = "00000000-0000-0000-0000-000000000000"


def review_body(gpu: bool) -> bytes:
    """The API server's AdmissionReview for a Deployment's pod, with or without a GPU."""
    return json.dumps(review(gpu_pod() if gpu else web_pod(), uid=UID_MARK)).encode()


# --- the server under test -----------------------------------------------------------------------


def cpu_seconds(server: subprocess.Popen[bytes]) -> float:
    """CPU time the server process has used so far (Linux /proc), user + system."""
    fields = Path(f"/proc/{server.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrape_histogram(port: int, context: ssl.SSLContext) -> dict[float, float]:
    """Cumulative bucket counts of the server's request-duration histogram."""
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    buckets = {}
    for line in text.splitlines():
        if line.startswith("vramguard_webhook_request_duration_seconds_bucket"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[float(bound)] = float(line.rsplit(" ", 1)[1])
    return buckets


def histogram_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """Upper bound of the bucket holding quantile q of the requests between two scrapes."""
    counts = sorted((bound, after[bound] - before.get(bound, 0.0)) for bound in after)
    total = counts[-1][1] if counts else 0.0
    if not total:
        return math.nan  # nothing reached /mutate (the /healthz baseline)
    return next(bound for bound, count in counts if count >= q * total)


# --- the load ------------------------------------------------------------------------------------


@dataclass
class Run:
    """The results of one rate for one kind of pod."""

    latencies: list[float] = field(default_factory=list)  # from the scheduled time
    wire: list[float] = field(default_factory=list)  # from the actual send
    errors: int = 0
    first_scheduled: float = 0.0
    last_done: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


def drive(
    port: int,
    context: ssl.SSLContext,
    body: bytes | None,
    *,
    rate: float,
    seconds: float,
    connections: int,
) -> Run:
    run = Run()
    jobs: queue.SimpleQueue[float | None] = queue.SimpleQueue()

    def sender() -> None:
        connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
        connection.connect()
        while (scheduled := jobs.get()) is not None:
            sent = time.perf_counter()
            try:
                if body is None:  # the floor: TLS, HTTP and this client, no admission work
                    connection.request("GET", "/healthz")
                else:
                    request = body.replace(UID_MARK.encode(), str(uuid.uuid4()).encode())
                    connection.request(
                        "POST",
                        "/mutate",
                        body=request,
                        headers={"Content-Type": "application/json"},
                    )
                reply = connection.getresponse()
                payload = reply.read()
                ok = reply.status == 200 and (body is None or b'"allowed":true' in payload)
            except (OSError, http.client.HTTPException):
                ok = False
                connection.close()
                connection = http.client.HTTPSConnection(
                    "127.0.0.1", port, context=context, timeout=10
                )
            done = time.perf_counter()
            with run.lock:
                run.latencies.append(done - scheduled)
                run.wire.append(done - sent)
                run.errors += 0 if ok else 1
                run.last_done = max(run.last_done, done)
        connection.close()

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(connections)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)  # connections (and their TLS handshakes) are up before the clock starts
    interval = 1.0 / rate
    total = int(rate * seconds)
    start = time.perf_counter() + 0.01
    run.first_scheduled = start
    for index in range(total):
        scheduled = start + index * interval
        delay = scheduled - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        jobs.put(scheduled)
    for _ in threads:
        jobs.put(None)
    for thread in threads:
        thread.join()
    return run


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def histogram_estimate(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """Quantile q of the requests between two scrapes, interpolated linearly inside its
    bucket as Prometheus's histogram_quantile does: an estimate, exact only at the bounds."""
    counts = sorted((bound, after[bound] - before.get(bound, 0.0)) for bound in after)
    total = counts[-1][1] if counts else 0.0
    if not total:
        return math.nan
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in counts:
        if count >= rank:
            if math.isinf(bound):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return math.nan


@dataclass(frozen=True)
class WebhookRow:
    """One kind of request at one offered rate; latencies in ms."""

    name: str
    rate: float
    sent: int
    errors: int
    got: float  # requests answered per second
    p50: float  # from the scheduled send time (open loop)
    p99: float
    peak: float
    wire_p50: float  # from the actual send
    wire_p99: float
    server_p50: float  # upper bound of the server histogram's bucket
    server_p99: float
    server_p99_estimate: float  # interpolated inside that bucket
    cpu_us: float  # the server's CPU time per request


GPU = "GPU pod"
NON_GPU = "non-GPU pod"
HEALTHZ = "GET /healthz"


def measure(
    rates: list[float],
    seconds: float,
    *,
    connections: int = 8,
    baseline: bool = True,
    profile: Path | None = None,
) -> list[WebhookRow]:
    """Start the webhook, drive each kind of request at each rate, stop it; one row each."""
    with tempfile.TemporaryDirectory(prefix="vramguard-bench-") as tmp:
        directory = Path(tmp)
        context = issue_certificate(directory)
        port = free_port()
        bodies: dict[str, bytes | None] = {
            GPU: review_body(gpu=True),
            NON_GPU: review_body(gpu=False),
        }
        if baseline:
            bodies[HEALTHZ] = None
        rows = []
        python_args = [] if profile is None else ["-m", "cProfile", "-o", str(profile)]
        with webhook_process(directory, port, python_args=python_args) as server:
            wait_ready(port, context, server)
            drive(port, context, bodies[GPU], rate=200, seconds=1, connections=8)  # warm-up
            for name, body in bodies.items():
                for rate in rates:
                    before = scrape_histogram(port, context)
                    cpu_before = cpu_seconds(server)
                    run = drive(
                        port,
                        context,
                        body,
                        rate=rate,
                        seconds=seconds,
                        connections=connections,
                    )
                    cpu = cpu_seconds(server) - cpu_before
                    after = scrape_histogram(port, context)
                    elapsed = run.last_done - run.first_scheduled
                    rows.append(
                        WebhookRow(
                            name=name,
                            rate=rate,
                            sent=len(run.latencies),
                            errors=run.errors,
                            got=len(run.latencies) / elapsed,
                            p50=1000 * statistics.median(run.latencies),
                            p99=1000 * percentile(run.latencies, 0.99),
                            peak=1000 * max(run.latencies),
                            wire_p50=1000 * statistics.median(run.wire),
                            wire_p99=1000 * percentile(run.wire, 0.99),
                            server_p50=1000 * histogram_quantile(before, after, 0.5),
                            server_p99=1000 * histogram_quantile(before, after, 0.99),
                            server_p99_estimate=1000 * histogram_estimate(before, after, 0.99),
                            cpu_us=1e6 * cpu / max(1, len(run.latencies)),
                        )
                    )
                    print(f"  {name} at {rate:.0f}/s done", file=sys.stderr, flush=True)
    return rows


TARGET_RATE = 500.0
TARGET = Target("value", "<", 2.0)  # p99 < 2 ms at 500 req/s on one worker


def summary_rows(rows: list[WebhookRow]) -> list[Row]:
    """The suite's rows: p99 of each request against the /healthz floor at the same rate,
    the server's own p99 where the target applies, and throughput against the offered rate."""
    floor = {row.rate: row.p99 for row in rows if row.name == HEALTHZ}
    result = []
    for row in rows:
        if row.name == HEALTHZ or (row.name == NON_GPU and row.rate != TARGET_RATE):
            continue
        result.append(
            Row(
                measure=f"webhook p99, {row.name} (client, HTTPS)",
                configuration=f"{row.rate:,.0f} req/s offered, 1 worker",
                value=row.p99,
                unit="ms",
                baseline=floor.get(row.rate),
                baseline_label=HEALTHZ,
                target=TARGET if row.rate == TARGET_RATE else None,
            )
        )
        if row.name == GPU and row.rate == TARGET_RATE:
            result.append(
                Row(
                    measure=f"webhook p99, {row.name} (server handler)",
                    configuration=f"{row.rate:,.0f} req/s, /metrics histogram, interpolated",
                    value=row.server_p99_estimate,
                    unit="ms",
                    target=TARGET,
                )
            )
    for row in rows:
        if row.name == GPU:
            result.append(
                Row(
                    measure=f"webhook throughput, {row.name}",
                    configuration=f"{row.rate:,.0f} req/s offered, 1 worker",
                    value=row.got,
                    unit="req/s",
                    baseline=row.rate,
                    baseline_label="offered",
                )
            )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[100, 500, 1000])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--profile", type=Path, help="run the server under cProfile into FILE")
    parser.add_argument(
        "--baseline", action="store_true", help="also drive GET /healthz: the transport's floor"
    )
    args = parser.parse_args()
    rows = measure(
        args.rates,
        args.seconds,
        connections=args.connections,
        baseline=args.baseline,
        profile=args.profile,
    )
    print()
    print(details(rows, connections=args.connections, seconds=args.seconds))
    return 0


def details(rows: list[WebhookRow], *, connections: int, seconds: float) -> str:
    lines = [
        f"webhook over HTTPS, one uvicorn worker, {connections} keep-alive connections, "
        f"{seconds:g} s per rate, latency in ms",
        "",
    ]
    header = (
        f"{'pod':<12} {'rate/s':>7} {'sent':>6} {'err':>4} {'got/s':>7} "
        f"{'p50':>6} {'p99':>6} {'max':>6} | {'wire p50':>8} {'wire p99':>8} | "
        f"{'server p50≤':>11} {'p99≤':>6} {'p99~':>6} {'CPU µs/req':>10}"
    )
    lines += [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row.name:<12} {row.rate:>7.0f} {row.sent:>6} {row.errors:>4} {row.got:>7.0f} "
            f"{row.p50:>6.2f} {row.p99:>6.2f} {row.peak:>6.1f} | "
            f"{row.wire_p50:>8.2f} {row.wire_p99:>8.2f} | "
            f"{_ms(row.server_p50):>11} {_ms(row.server_p99):>6} "
            f"{_ms(row.server_p99_estimate):>6} {row.cpu_us:>10.0f}"
        )
    lines.append(
        "\np50/p99/max: from the scheduled send time (open loop); wire: from the actual send;"
        "\nserver: upper bound of the /metrics histogram bucket (handler time, no TLS or HTTP),"
        "\np99~ interpolated inside it as histogram_quantile does;"
        "\nCPU µs/req: the server process's CPU time (TLS, HTTP, app) per request."
    )
    return "\n".join(lines)


def _ms(value: object) -> str:
    return "-" if not isinstance(value, float) or math.isnan(value) else f"{value:.2f}"


if __name__ == "__main__":
    sys.exit(main())
