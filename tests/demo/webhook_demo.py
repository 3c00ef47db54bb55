"""See the webhook decide: six sample pods against the sample policy, over real HTTPS.

    .venv/bin/python -m tests.demo.webhook_demo

Issues a certificate with `python -m certs` into a temporary directory, starts
`python -m webhook` with manifests/base/policy.yaml on 127.0.0.1, sends one AdmissionReview
per sample pod, prints what came back as a table, and stops the webhook (also on Ctrl-C).
"""

from __future__ import annotations

import http.client
import json
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from tests.http.webhook.process import (
    REPO,
    SAMPLE_POLICY,
    free_port,
    issue_certificate,
    wait_ready,
    webhook_process,
)
from tests.http.webhook.reviews import gpu_pod, patched, review, web_pod

GPUMEM = "vramguard.io/gpumem"


def pod(
    namespace: str,
    name: str,
    gpu: bool = True,
    gpumem: str | None = None,
    priority_class: str | None = None,
) -> dict[str, Any]:
    """The API server's pod from tests/http/webhook/reviews.py, named `name` in `namespace`."""
    if gpu:
        obj = gpu_pod(
            namespace, **({} if gpumem is None else {"limits": gpumem, "requests": gpumem})
        )
    else:
        obj = web_pod()
        obj["metadata"]["namespace"] = namespace
    del obj["metadata"]["generateName"]
    obj["metadata"]["name"] = name
    if priority_class is not None:
        obj["spec"]["priorityClassName"] = priority_class
    return obj


SAMPLES = [
    pod("immich", "immich-ml"),
    pod("llama-swap", "llama-swap", gpumem="5Gi"),
    pod("frigate", "frigate-huge", gpumem="12Gi"),
    pod("immich", "immich-web", gpu=False),
    pod("kube-system", "nvidia-device-plugin"),
    pod("tts", "tts-urgent", priority_class="system-cluster-critical"),
]


def outcome(obj: dict[str, Any], response: dict[str, Any]) -> list[str]:
    """One table row: what the pod looks like after the webhook's answer."""
    namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
    if not response["allowed"]:
        message = response["status"]["message"].removeprefix("vramguard: ")
        return [namespace, name, "DENIED", "", "", "", message]
    spec = patched(obj, response)["spec"]
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


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="vramguard-demo-") as tmp:
        directory = Path(tmp)
        context = issue_certificate(directory)
        port = free_port()
        try:
            with webhook_process(
                directory, port, args=["--log-format", "text"], stop_timeout=10
            ) as server:
                wait_ready(port, context, server)
                policy = SAMPLE_POLICY.relative_to(REPO)
                print(f"webhook on https://127.0.0.1:{port}, policy {policy}\n")
                connection = http.client.HTTPSConnection("127.0.0.1", port, context=context)
                rows = []
                for sample in SAMPLES:
                    body = json.dumps(review(sample, uid=str(uuid.uuid4())))
                    connection.request(
                        "POST", "/mutate", body=body, headers={"Content-Type": "application/json"}
                    )
                    reply = connection.getresponse()
                    rows.append(outcome(sample, json.loads(reply.read())["response"]))
                connection.close()  # an open keep-alive connection would hold the shutdown
                print_table(rows)
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            return 130
        finally:
            print("\nwebhook stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
