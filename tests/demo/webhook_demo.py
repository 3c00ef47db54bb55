"""See the webhook decide: six sample pods against the sample policy, over real HTTPS.

    .venv/bin/python tests/demo/webhook_demo.py

Issues a certificate with `python -m certs` into a temporary directory, starts
`python -m webhook` with manifests/base/policy.yaml on 127.0.0.1, sends one AdmissionReview
per sample pod, prints what came back as a table, and stops the webhook (also on Ctrl-C).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import jsonpatch

REPO = Path(__file__).resolve().parents[2]
POLICY = REPO / "manifests" / "base" / "policy.yaml"
GPUMEM = "vramguard.io/gpumem"


def pod(
    namespace: str,
    name: str,
    gpu: bool = True,
    gpumem: str | None = None,
    priority_class: str | None = None,
) -> dict[str, Any]:
    """A pod as the API server hands it to webhooks (defaulted: scheduler, priority)."""
    limits: dict[str, str] = {"memory": "4Gi"}
    if gpu:
        limits["nvidia.com/gpu"] = "1"
    if gpumem is not None:
        limits[GPUMEM] = gpumem
    spec: dict[str, Any] = {
        "containers": [
            {
                "name": "main",
                "image": f"registry.example/{name}:1",
                # API defaulting copies limits to requests.
                "resources": {"limits": limits, "requests": dict(limits)},
            }
        ],
        "schedulerName": "default-scheduler",
        "priority": 0,
        "preemptionPolicy": "PreemptLowerPriority",
    }
    if priority_class is not None:
        spec["priorityClassName"] = priority_class
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


SAMPLES = [
    pod("immich", "immich-ml"),
    pod("llama-swap", "llama-swap", gpumem="5Gi"),
    pod("frigate", "frigate-huge", gpumem="12Gi"),
    pod("immich", "immich-web", gpu=False),
    pod("kube-system", "nvidia-device-plugin"),
    pod("tts", "tts-urgent", priority_class="system-cluster-critical"),
]


def review(obj: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": str(uuid.uuid4()),
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "name": obj["metadata"]["name"],
                "namespace": obj["metadata"]["namespace"],
                "operation": "CREATE",
                "userInfo": {"username": "demo"},
                "object": obj,
                "dryRun": False,
            },
        }
    ).encode()


def outcome(obj: dict[str, Any], response: dict[str, Any]) -> list[str]:
    """One table row: what the pod looks like after the webhook's answer."""
    namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
    if not response["allowed"]:
        message = response["status"]["message"].removeprefix("vramguard: ")
        return [namespace, name, "DENIED", "", "", "", message]
    result = obj
    if "patch" in response:
        result = jsonpatch.apply_patch(obj, json.loads(base64.b64decode(response["patch"])))
    spec = result["spec"]
    limits = spec["containers"][0]["resources"]["limits"]
    warnings = [w.removeprefix("vramguard: ") for w in response.get("warnings", [])]
    return [
        namespace,
        name,
        "patched" if "patch" in response else "unchanged",
        spec.get("priorityClassName", "-"),
        limits.get(GPUMEM, "-"),
        spec.get("schedulerName", "-"),
        "; ".join(warnings) or response["status"].get("message", ""),
    ]


def print_table(rows: list[list[str]]) -> None:
    header = ["NAMESPACE", "POD", "DECISION", "CLASS", "GPUMEM", "SCHEDULER", "MESSAGE"]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_webhook(directory: Path, port: int) -> subprocess.Popen[bytes]:
    subprocess.run(
        [sys.executable, "-m", "certs", "--out", str(directory), "--dns", "localhost",
         "--ip", "127.0.0.1"],
        cwd=REPO,
        check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    command = [
        sys.executable, "-m", "webhook",
        "--policy", str(POLICY),
        "--tls-cert", str(directory / "tls.crt"),
        "--tls-key", str(directory / "tls.key"),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--log-format", "text",
    ]  # fmt: skip
    log = (directory / "webhook.log").open("wb")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(command, cwd=REPO, stdout=log, stderr=log, env=env)


def wait_ready(port: int, context: ssl.SSLContext, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the webhook exited with {server.returncode}")
        try:
            connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=2)
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the webhook did not become ready within 30 s")


def stop(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGINT)  # uvicorn shuts down gracefully on SIGINT
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="vramguard-demo-") as tmp:
        directory = Path(tmp)
        port = free_port()
        server = start_webhook(directory, port)
        try:
            context = ssl.create_default_context(cafile=str(directory / "ca.crt"))
            wait_ready(port, context, server)
            print(f"webhook on https://127.0.0.1:{port}, policy {POLICY.relative_to(REPO)}\n")
            connection = http.client.HTTPSConnection("127.0.0.1", port, context=context)
            rows = []
            for sample in SAMPLES:
                connection.request(
                    "POST", "/mutate", body=review(sample),
                    headers={"Content-Type": "application/json"},
                )  # fmt: skip
                reply = connection.getresponse()
                rows.append(outcome(sample, json.loads(reply.read())["response"]))
            connection.close()  # an open keep-alive connection would hold the shutdown
            print_table(rows)
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            return 130
        finally:
            stop(server)
            print("\nwebhook stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
