"""Fuzz POST /mutate with >= 10,000 generated AdmissionReviews.

Any 5xx, any errored review (a 500 inside a 200), any response that is not strict JSON, any
patch that does not apply to its pod, and any patched pod that would be patched again is a bug.

Requests go straight into the ASGI app (routing, body reading, handler, response) from one
event loop: the TestClient's thread hop and httpx would take most of the CI time budget.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.types import ASGIApp, Message

from gpumem.policy_file import PolicyFile
from webhook.app import Dependencies, create_app
from webhook.decide import decide
from webhook.metrics import WebhookMetrics
from webhook.models import parse_review
from webhook.settings import Settings
from webhook.view import ClusterView

EXAMPLES = int(os.environ.get("VRAMGUARD_FUZZ_EXAMPLES", "10000"))

POLICY = """
gpuResourceNames: ["nvidia.com/gpu", "amd.com/gpu"]
gpumemResourceName: vramguard.io/gpumem
schedulerName: vramguard-scheduler
excludedNamespaces: [kube-system]
defaults: {priorityClassName: tier-2-gpu, gpumemMiB: 1024, maxGpumemMiB: 8192}
namespaces:
  immich: {priorityClassName: tier-1-gpu, gpumemMiB: 3000}
  strict: {requireDeclaration: true}
  generous: {gpumemMiB: 9000, maxGpumemMiB: 9000}
  classless: {priorityClassName: null}
namespaceLabels:
  tier: {"0": tier-0-core}
"""

CLASSES = ["tier-0-core", "tier-1-gpu", "tier-2-gpu", "cluster-default", "mine"]
CLUSTERS = [
    ClusterView(),
    ClusterView(
        namespace_labels={"labelled": {"tier": "0"}},
        priority_classes=frozenset(CLASSES),
        global_default_class="cluster-default",
    ),
    ClusterView(namespace_labels={}, priority_classes=frozenset({"mine"})),
]


class SwitchableCluster:
    """A cluster source whose view each example picks."""

    def __init__(self) -> None:
        self.view = CLUSTERS[0]
        self.synced = True

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


# --- strategies --------------------------------------------------------------------------------

garbage = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def mostly(
    valid: st.SearchStrategy[Any], odd: st.SearchStrategy[Any] = garbage, one_in: int = 20
) -> st.SearchStrategy[Any]:
    """Valid but one time in `one_in`: reviews must mostly get far enough to be decided."""
    pick = st.integers(0, one_in - 1)

    @st.composite
    def choose(draw: st.DrawFn) -> Any:
        # 0, the choice Hypothesis tries first and shrinks towards, picks the valid one.
        return draw(odd) if draw(pick) == one_in - 1 else draw(valid)

    return choose()


# Drawn from lists where that is as good as random: fewer draws per review keep 10,000 of them
# within a CI minute or two.
RESOURCE_NAMES = [
    "vramguard.io/gpumem",
    "nvidia.com/gpu",
    "amd.com/gpu",
    "cpu",
    "memory",
    "x.io/y",
    "NVIDIA.com/gpu",
    "",
]
QUANTITIES = [
    *("3000", "3000Mi", "5k", "3Gi", "1.5Gi", "0", "0.5", ".5", "1.", "1e3", "2E-2", "512Ki"),
    *("8192", "8193", "12Gi", "1Ti", "1Ei", "1e40", "99999999999999999999", "100m", "1n"),
    *("-1", "+7", "-0", "3 Gi", "3gi", "lots", "", " 42 ", "0x10", "1e", "Gi", "١٢"),
]
resource_names = mostly(st.sampled_from(RESOURCE_NAMES), st.text(max_size=12))
quantity_text = st.builds(
    lambda sign, number, suffix: f"{sign}{number}{suffix}",
    mostly(st.just(""), st.sampled_from(["+", "-"]), one_in=10),
    st.one_of(
        st.integers(0, 100_000).map(str),
        st.decimals(0, 10_000, places=3, allow_nan=False).map(str),
    ),
    st.sampled_from(["", "Ki", "Mi", "Gi", "Ti", "Ei", "k", "M", "G", "m", "n", "u", "e3", "x"]),
)
quantities = mostly(st.sampled_from(QUANTITIES), quantity_text | garbage, one_in=4)
resource_maps = mostly(st.dictionaries(resource_names, quantities, max_size=3))
resources = mostly(st.fixed_dictionaries({"requests": resource_maps, "limits": resource_maps}))
containers = mostly(
    st.fixed_dictionaries(
        {
            "name": mostly(st.sampled_from(["app", "model", "sidecar"]), st.text(max_size=6)),
            "resources": resources,
        },
        optional={
            "restartPolicy": st.sampled_from(["Always", "Never"]),
            "image": st.just("registry.example/app:1"),
            "x-unknown": garbage,
        },
    )
)
container_lists = mostly(st.lists(containers, min_size=1, max_size=3), st.just([]) | garbage)
class_names = mostly(st.sampled_from([*CLASSES, ""]))
scheduler_names = mostly(st.sampled_from(["default-scheduler", "", "vramguard-scheduler", "mine"]))
specs = mostly(
    st.fixed_dictionaries(
        {"containers": container_lists},
        optional={
            "initContainers": container_lists,
            "priorityClassName": class_names,
            "priority": mostly(st.integers(-(2**31), 2**31)),
            "preemptionPolicy": mostly(st.sampled_from(["PreemptLowerPriority", "Never"])),
            "schedulerName": scheduler_names,
            "overhead": mostly(st.just({}), resource_maps),
            "unknownSpecField": garbage,
        },
    )
)
namespaces = mostly(
    st.sampled_from(
        ["immich", "default", "strict", "generous", "classless", "labelled", "kube-system", ""]
    ),
    st.text(max_size=10),
)
pods: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
    {
        "apiVersion": st.just("v1"),
        "kind": st.just("Pod"),
        "metadata": mostly(
            st.fixed_dictionaries({"namespace": namespaces}, optional={"name": st.text(max_size=8)})
        ),
        "spec": specs,
    },
    optional={"status": st.just({})},
)
# The envelope is broken rarely: a broken one is answered 4xx before any pod rule runs.
ENVELOPE = 50
admission_requests = st.fixed_dictionaries(
    {
        "uid": mostly(st.uuids().map(str) | st.text(min_size=1, max_size=6), one_in=ENVELOPE),
        "kind": mostly(
            st.fixed_dictionaries(
                {
                    "group": mostly(st.just(""), st.just("apps")),
                    "version": st.just("v1"),
                    "kind": mostly(st.just("Pod"), st.sampled_from(["Deployment", ""])),
                }
            ),
            one_in=ENVELOPE,
        ),
        "resource": st.just({"group": "", "version": "v1", "resource": "pods"}),
        "subResource": mostly(st.just(""), st.sampled_from(["status", "binding"])),
        "name": mostly(st.just(""), st.text(max_size=6)),
        "namespace": namespaces,
        "operation": mostly(
            st.just("CREATE"),
            mostly(st.sampled_from(["UPDATE", "DELETE", "CONNECT", "X"]), one_in=5),
            one_in=8,
        ),
        "userInfo": st.just({"username": "fuzz"}),
        "object": mostly(pods, one_in=ENVELOPE),
        "oldObject": mostly(st.none(), st.just({"kind": "Pod"})),
        "dryRun": mostly(st.booleans(), one_in=ENVELOPE),
        "options": st.none(),
    }
)
# Now and then a field the API server always sends goes missing.
missing_fields = mostly(
    st.just(()),
    st.lists(st.sampled_from(["uid", "kind", "operation", "object"]), min_size=1, max_size=2),
    one_in=ENVELOPE,
)
api_versions = mostly(
    st.just("admission.k8s.io/v1"), st.just("admission.k8s.io/v1beta1"), one_in=ENVELOPE
)
review_kinds = mostly(st.just("AdmissionReview"), st.just("Pod"), one_in=ENVELOPE)
without_request = mostly(st.just(False), st.just(True), one_in=50)


@st.composite
def reviews(draw: st.DrawFn) -> dict[str, Any]:
    request = draw(admission_requests)
    for field in draw(missing_fields):
        request.pop(field, None)
    document: dict[str, Any] = {
        "apiVersion": draw(api_versions),
        "kind": draw(review_kinds),
        "request": request,
    }
    if draw(without_request):
        del document["request"]
    return document


# --- the property ------------------------------------------------------------------------------


async def post(app: ASGIApp, body: bytes) -> tuple[int, bytes]:
    """POST /mutate as uvicorn would hand it to the app; the status and the body."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "https",
        "path": "/mutate",
        "raw_path": b"/mutate",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8443),
    }
    chunks = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[Message] = []

    async def receive() -> Message:
        return chunks.pop() if chunks else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def _no_constants(name: str) -> Any:
    raise AssertionError(f"response is not strict JSON: {name}")


def _body(document: dict[str, Any]) -> bytes:
    # allow_nan: a NaN quantity is garbage a client can send; the webhook must cope with it.
    return json.dumps(document, allow_nan=True).encode()


@pytest.mark.slow
def test_fuzz_mutate(tmp_path: Path) -> None:
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(POLICY)
    cluster = SwitchableCluster()
    policy_file = PolicyFile(policy_path)
    app = create_app(
        Settings(policy=policy_path, tls_cert=tmp_path / "c", tls_key=tmp_path / "k"),
        Dependencies(policy_file=policy_file, cluster=cluster, metrics=WebhookMetrics()),
    )
    seen = {"examples": 0, "patched": 0, "denied": 0, "allowed": 0, "4xx": 0}
    started = time.monotonic()

    with asyncio.Runner() as loop:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(document=reviews(), cluster_index=st.integers(0, len(CLUSTERS) - 1))
        def check(document: dict[str, Any], cluster_index: int) -> None:
            cluster.view = CLUSTERS[cluster_index]
            seen["examples"] += 1
            status, reply = loop.run(post(app, _body(document)))
            assert status < 500, reply
            answer = json.loads(reply, parse_constant=_no_constants)
            if status != 200:
                assert 400 <= status < 500
                assert answer["kind"] == "Status"
                assert answer["message"]
                seen["4xx"] += 1
                return
            response = answer["response"]
            assert response["uid"] == document["request"]["uid"]
            if not response["allowed"]:
                assert response["status"]["code"] == 403, response  # 500 inside: a bug
                assert "patch" not in response
                seen["denied"] += 1
                return
            if "patch" not in response:
                seen["allowed"] += 1
                return
            seen["patched"] += 1
            assert response["patchType"] == "JSONPatch"
            operations = json.loads(base64.b64decode(response["patch"]))
            pod = document["request"]["object"]
            result = jsonpatch.apply_patch(pod, operations)
            again = dict(document["request"], object=result)
            decision = decide(
                parse_review(_body({**document, "request": again})),
                policy_file.current,
                cluster.view,
            )
            assert decision.allowed, decision
            assert decision.patch == (), f"not idempotent: {decision.patch}"

        check()

    elapsed = time.monotonic() - started
    print(f"\nfuzz: {seen} in {elapsed:.1f}s")
    assert seen["examples"] >= EXAMPLES
    # The generator must reach every outcome, or the fuzz proves little.
    assert all(seen[key] > 0 for key in ("patched", "denied", "allowed", "4xx")), seen
    assert not math.isnan(elapsed)
