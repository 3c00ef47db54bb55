"""kube.conditions: the nudge, one condition in a Pending pod's status."""

from __future__ import annotations

import pytest

from extender.pending import FITS_CONDITION, FITS_REASON, NudgeRequest
from kube.conditions import KubernetesNudger
from kube.errors import NudgeError
from tests.unit.kube.fakes import EVENT_TIME, FakeEventAPI, api_error


def nudger(core: FakeEventAPI) -> KubernetesNudger:
    return KubernetesNudger(core, condition=FITS_CONDITION, reason=FITS_REASON, timeout_seconds=4)


def test_a_nudge_sets_one_condition_by_strategic_merge_with_the_uid_as_precondition() -> None:
    core = FakeEventAPI()
    request = NudgeRequest("team-a", "incoming", "uid-1", "vramguard: fits now on node-a")
    nudger(core).nudge(request, EVENT_TIME)
    [(name, (pod, namespace, patch), kwargs)] = core.calls
    assert (name, pod, namespace) == ("pod-status", "incoming", "team-a")
    assert patch == {
        "metadata": {"uid": "uid-1"},
        "status": {
            "conditions": [
                {
                    "type": "vramguard.io/GPUMemoryFits",
                    "status": "True",
                    "reason": "FitsNow",
                    "message": "vramguard: fits now on node-a",
                    "lastTransitionTime": "2023-11-14T22:13:20Z",
                }
            ]
        },
    }
    # Merged by condition type: kube-scheduler's PodScheduled condition stays as it is.
    assert kwargs["_content_type"] == "application/strategic-merge-patch+json"


def test_a_refused_nudge_is_one_line() -> None:
    core = FakeEventAPI(api_error(403, "Forbidden", 'pods "incoming" is forbidden'))
    request = NudgeRequest("team-a", "incoming", "uid-1", "vramguard: fits now on node-a")
    with pytest.raises(NudgeError) as raised:
        nudger(core).nudge(request, EVENT_TIME)
    assert str(raised.value) == (
        'setting vramguard.io/GPUMemoryFits on a pod: 403 pods "incoming" is forbidden'
    )
