from typing import Any

import pytest

from gpumem.demand import DemandError, ResourceNames, read_demand

NAMES = ResourceNames(gpu=frozenset({"nvidia.com/gpu"}), gpumem="vramguard.io/gpumem")


def container(name: str, requests: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    if requests is not None:
        resources["requests"] = requests
    if "limits" in extra:
        resources["limits"] = extra.pop("limits")
    return {"name": name, "image": "x", "resources": resources, **extra}


def pod(
    containers: list[dict[str, Any]], init: list[dict[str, Any]] | None = None, **spec: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"containers": containers, **spec}
    if init is not None:
        body["initContainers"] = init
    return {"metadata": {"name": "p", "namespace": "ns"}, "spec": body}


GPU = {"nvidia.com/gpu": 1}


@pytest.mark.parametrize(
    ("the_pod", "is_gpu", "declared"),
    [
        pytest.param(pod([container("a")]), False, None, id="no-resources"),
        pytest.param(pod([container("a", {"cpu": "1"})]), False, None, id="cpu-only"),
        pytest.param(pod([container("a", GPU)]), True, None, id="gpu-request"),
        pytest.param(pod([container("a", limits=GPU)]), True, None, id="gpu-limit"),
        pytest.param(
            pod([container("a", {"vramguard.io/gpumem": "3Gi"})]), True, 3072, id="gpumem-only"
        ),
        pytest.param(
            pod([container("a", limits={"vramguard.io/gpumem": "5k"})]), True, 5000, id="limit-only"
        ),
        pytest.param(
            pod(
                [
                    container("a", {"vramguard.io/gpumem": "1000"}),
                    container("b", {"vramguard.io/gpumem": "500"}),
                ]
            ),
            True,
            1500,
            id="app-containers-add-up",
        ),
        pytest.param(
            pod(
                [container("a", {"vramguard.io/gpumem": "1000"})],
                init=[container("init", {"vramguard.io/gpumem": "4000"})],
            ),
            True,
            4000,
            id="init-container-peak-wins",
        ),
        pytest.param(
            pod(
                [container("a", {"vramguard.io/gpumem": "1000"})],
                init=[
                    container("sidecar", {"vramguard.io/gpumem": "300"}, restartPolicy="Always"),
                    container("init", {"vramguard.io/gpumem": "1200"}),
                ],
            ),
            True,
            1500,
            id="sidecar-adds-to-both",
        ),
        pytest.param(
            pod(
                [container("a", {"vramguard.io/gpumem": "1000"})],
                overhead={"vramguard.io/gpumem": "100"},
            ),
            True,
            1100,
            id="overhead",
        ),
        pytest.param({"metadata": {}}, False, None, id="no-spec"),
        pytest.param({"spec": {"containers": "junk"}}, False, None, id="junk-containers"),
        pytest.param({"spec": {"containers": [7, None]}}, False, None, id="junk-container"),
    ],
)
def test_read_demand(the_pod: dict[str, Any], is_gpu: bool, declared: int | None) -> None:
    demand = read_demand(the_pod, NAMES)
    assert demand.is_gpu is is_gpu
    assert demand.declared_mib == declared


def test_first_gpu_container_prefers_app_containers() -> None:
    demand = read_demand(
        pod([container("cpu"), container("gpu", GPU)], init=[container("warm", GPU)]), NAMES
    )
    first = demand.first_gpu_container
    assert first is not None
    assert (first.list_name, first.index, first.name) == ("containers", 1, "gpu")


def test_first_gpu_container_falls_back_to_init() -> None:
    demand = read_demand(pod([container("cpu")], init=[container("warm", GPU)]), NAMES)
    assert demand.first_gpu_container is not None
    assert demand.first_gpu_container.name == "warm"


def test_unreadable_declaration_names_the_container() -> None:
    with pytest.raises(DemandError, match=r"'a'.*vramguard\.io/gpumem"):
        read_demand(pod([container("a", {"vramguard.io/gpumem": "lots"})]), NAMES)
