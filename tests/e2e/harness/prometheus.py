"""A real Prometheus (Debian's package: tests/e2e/install-deps.sh) scraping the suite's
GPU exporter every second, as a process the cluster harness owns.

    prometheus = Prometheus(cluster, targets=[exporter.address])
    prometheus.start()          # waits for /-/ready and the first scrape of every target
    prometheus.query("up")
    prometheus.stop()           # telemetry outage; start() again brings it back (same port)
"""

from __future__ import annotations

import json
import shutil
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .process import ManagedProcess, ProcessError, free_port, url_ok, wait_until

if TYPE_CHECKING:
    from .controlplane import ClusterBase

LOCALHOST = "127.0.0.1"
SCRAPE_INTERVAL = "1s"
JOB = "gpu"
INSTALL_HINT = "run tests/e2e/install-deps.sh (as root) to install Prometheus"


class PrometheusUnavailable(RuntimeError):
    """The prometheus binary is not installed."""


def prometheus_binary() -> Path:
    found = shutil.which("prometheus")
    if found is None:
        raise PrometheusUnavailable(f"no prometheus on PATH; {INSTALL_HINT}")
    return Path(found)


class Prometheus:
    """One Prometheus on 127.0.0.1 with its data in the cluster's working directory."""

    def __init__(self, cluster: ClusterBase, targets: Sequence[str]) -> None:
        self._cluster = cluster
        self._targets = list(targets)
        self._directory = cluster.workdir / "prometheus"
        self._port = free_port()
        self._process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self._port}"

    @property
    def process(self) -> ManagedProcess | None:
        return self._process

    def running(self) -> bool:
        return self._process is not None and self._process.alive()

    def start(self, timeout: float = 60.0) -> None:
        """Start (or restart, on the same port and data) and wait until every target has
        been scraped successfully."""
        if self._process is None:
            self._process = self._new_process()
        self._cluster.start_process(
            self._process,
            ready=lambda: url_ok(f"{self.url}/-/ready"),
            what=f"Prometheus {self.url}/-/ready",
            timeout=timeout,
        )
        wait_until(
            f"Prometheus's first scrape of {', '.join(self._targets)} (query up)",
            self._targets_up,
            timeout=timeout,
            watch=[self._process],
        )

    def stop(self) -> None:
        if self._process is not None:
            self._cluster.stop_process(self._process)

    def add_target(self, address: str, timeout: float = 30.0) -> None:
        """Scrape one more ``host:port`` (the real node's node agent, say), without a restart:
        the targets are a file Prometheus rereads (file_sd); waits for its first scrape."""
        if address not in self._targets:
            self._targets.append(address)
            self._write_targets()
        wait_until(
            f"Prometheus's first scrape of {address}",
            self._targets_up,
            timeout=timeout,
            watch=[self._process] if self._process else [],
        )

    def remove_target(self, address: str) -> None:
        if address in self._targets:
            self._targets.remove(address)
            self._write_targets()

    def query(self, expr: str, timeout: float = 5.0) -> list[dict[str, Any]]:
        """An instant query; the result vector."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=timeout) as response:
            answer = json.load(response)
        if answer.get("status") != "success":
            raise ProcessError(f"Prometheus query {expr!r} failed: {answer}")
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    # -- internals ---------------------------------------------------------------------

    @property
    def _targets_file(self) -> Path:
        return self._directory / "targets.json"

    def _write_targets(self) -> None:
        scratch = self._targets_file.with_suffix(".tmp")
        scratch.write_text(json.dumps([{"targets": self._targets}]))
        scratch.replace(self._targets_file)  # Prometheus never reads half a file

    def _new_process(self) -> ManagedProcess:
        self._directory.mkdir(parents=True, exist_ok=True)
        self._write_targets()
        config = self._directory / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {
                        "scrape_interval": SCRAPE_INTERVAL,
                        "scrape_timeout": SCRAPE_INTERVAL,
                        "evaluation_interval": SCRAPE_INTERVAL,
                    },
                    "scrape_configs": [
                        {
                            "job_name": JOB,
                            "file_sd_configs": [
                                {"files": [str(self._targets_file)], "refresh_interval": "1s"}
                            ],
                        }
                    ],
                },
                sort_keys=False,
            )
        )
        return ManagedProcess(
            "prometheus",
            [
                str(prometheus_binary()),
                f"--config.file={config}",
                f"--storage.tsdb.path={self._directory / 'data'}",
                "--storage.tsdb.retention.time=2h",
                f"--web.listen-address={LOCALHOST}:{self._port}",
                # Debian's defaults point at /usr/share/prometheus; nothing here uses them.
                f"--web.console.templates={self._directory}",
                f"--web.console.libraries={self._directory}",
                "--log.level=info",
            ],
            self._cluster.workdir / "logs" / "prometheus.log",
        )

    def _targets_up(self) -> bool:
        try:
            result = self.query(f'up{{job="{JOB}"}}')
        except (OSError, ValueError, ProcessError):
            return False
        up = {item["metric"].get("instance"): item["value"][1] for item in result}
        return all(up.get(target) == "1" for target in self._targets)
