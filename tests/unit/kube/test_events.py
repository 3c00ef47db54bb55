"""kube.events: core/v1 Events explaining Pending pods, created and refreshed."""

from __future__ import annotations

import pytest
import urllib3

from extender.pending import EVENT_COMPONENT, EVENT_REASON, EventRequest
from kube.errors import EventExists, EventMissing, EventWriteError
from kube.events import KubernetesEvents
from tests.unit.kube.fakes import EVENT_TIME, FakeEventAPI, api_error


def event_request(count: int = 1) -> EventRequest:
    return EventRequest(
        action="create" if count == 1 else "refresh",
        name="incoming.0123456789abcdef",
        namespace="team-a",
        pod_name="incoming",
        pod_uid="uid-1",
        message="vramguard: no node fits 1500 MiB of vramguard.io/gpumem: node-a: declared "
        "13300 + 1500 > capacity 14000 MiB",
        count=count,
        key="k",
    )


def events_client(core: FakeEventAPI) -> KubernetesEvents:
    return KubernetesEvents(
        core,
        reason=EVENT_REASON,
        component=EVENT_COMPONENT,
        instance="vramguard-scheduler-7d9f-x2" + "z" * 200,
        timeout_seconds=4,
    )


def test_events_create_a_core_v1_warning_about_the_pod() -> None:
    core = FakeEventAPI()
    events_client(core).create(event_request(), EVENT_TIME)
    [(name, (namespace, body), _)] = core.calls
    assert (name, namespace) == ("create", "team-a")
    assert body["metadata"] == {"name": "incoming.0123456789abcdef", "namespace": "team-a"}
    # What `kubectl describe pod` lists: the involved object by kind, name, namespace and uid.
    assert body["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "namespace": "team-a",
        "name": "incoming",
        "uid": "uid-1",
    }
    assert (body["type"], body["reason"]) == ("Warning", "GPUMemoryUnavailable")
    assert body["message"].startswith("vramguard: no node fits 1500 MiB")
    assert body["source"] == {"component": "vramguard-extender"}
    assert body["reportingComponent"] == "vramguard-extender"
    assert len(body["reportingInstance"]) == 128
    assert body["firstTimestamp"] == body["lastTimestamp"] == "2023-11-14T22:13:20Z"
    assert body["count"] == 1


def test_events_refresh_merge_patches_count_message_and_last_timestamp() -> None:
    core = FakeEventAPI()
    events_client(core).refresh(event_request(count=3), EVENT_TIME + 60)
    [(name, (event, namespace, patch), kwargs)] = core.calls
    assert (name, event, namespace) == ("patch", "incoming.0123456789abcdef", "team-a")
    assert patch == {
        "count": 3,
        "lastTimestamp": "2023-11-14T22:14:20Z",
        "message": event_request().message,
    }
    assert kwargs["_content_type"] == "application/merge-patch+json"


def test_events_errors() -> None:
    exists = FakeEventAPI(api_error(409, "Conflict", 'events "incoming.0123" already exists'))
    with pytest.raises(EventExists):
        events_client(exists).create(event_request(), EVENT_TIME)
    missing = FakeEventAPI(api_error(404, "Not Found", "not found"))
    with pytest.raises(EventMissing):
        events_client(missing).refresh(event_request(2), EVENT_TIME)
    forbidden = FakeEventAPI(
        api_error(403, "Forbidden", 'events is forbidden: User "x" cannot create resource')
    )
    with pytest.raises(EventWriteError, match="creating an event: 403 events is forbidden") as info:
        events_client(forbidden).create(event_request(), EVENT_TIME)
    assert "incoming" not in info.value.problem  # one problem for every pod: logged once
    connection = urllib3.exceptions.NewConnectionError(
        urllib3.connection.HTTPConnection("localhost"),
        "Failed to establish a new connection: [Errno 111] Connection refused",
    )
    down = FakeEventAPI(
        urllib3.exceptions.MaxRetryError(
            urllib3.HTTPConnectionPool("localhost"), "/api/v1/events", connection
        )
    )
    with pytest.raises(EventWriteError) as unreachable:
        events_client(down).refresh(event_request(2), EVENT_TIME)
    assert unreachable.value.problem == (
        "patching an event: Failed to establish a new connection: [Errno 111] Connection refused"
    )
