from __future__ import annotations

import re

from extender.throttle import EventThrottle, event_name
from tests.unit.extender.factories import NOW


def test_throttle_one_event_per_explanation_and_at_most_one_per_interval() -> None:
    throttle = EventThrottle(min_interval=30, refresh_interval=600)
    t = NOW
    assert throttle.due("u", t)
    assert throttle.decide("u", "k1", t) == "create"
    assert throttle.next_count("u", "create") == 1
    throttle.said("u", "k1", t, "create")
    assert not throttle.due("u", t + 29)
    assert throttle.decide("u", "k1", t + 5) is None  # the same explanation: said already
    assert throttle.decide("u", "k2", t + 29) is None  # changed, but within 30 s
    assert throttle.due("u", t + 30)
    assert throttle.decide("u", "k1", t + 300) is None  # unchanged: nothing to add
    assert throttle.decide("u", "k2", t + 30) == "create"
    throttle.said("u", "k2", t + 30, "create")
    # The same explanation, long after: refreshed (count and last timestamp), not repeated.
    assert throttle.decide("u", "k2", t + 30 + 600) == "refresh"
    assert throttle.next_count("u", "refresh") == 2
    throttle.said("u", "k2", t + 630, "refresh")
    assert throttle.next_count("u", "refresh") == 3
    # Each pod has its own budget.
    assert throttle.decide("v", "k2", t + 631) == "create"


def test_throttle_without_refresh() -> None:
    throttle = EventThrottle(min_interval=30, refresh_interval=None)
    throttle.said("u", "k", NOW, "create")
    assert throttle.decide("u", "k", NOW + 86400) is None


def test_throttle_failed_write_is_tried_again_after_the_interval() -> None:
    throttle = EventThrottle(min_interval=30)
    throttle.said("u", "k", NOW, "create")
    throttle.failed("u", "other")  # about an older explanation: nothing changes
    assert throttle.decide("u", "k", NOW + 31) is None
    throttle.failed("u", "k")
    assert throttle.decide("u", "k", NOW + 10) is None
    assert throttle.decide("u", "k", NOW + 30) == "create"


def test_throttle_forgets_pods_no_longer_pending() -> None:
    throttle = EventThrottle()
    throttle.said("bound", "k", NOW, "create")
    throttle.said("pending", "k", NOW, "create")
    throttle.retain(["pending"])
    assert len(throttle) == 1
    assert throttle.decide("bound", "k", NOW + 1) == "create"
    assert throttle.decide("pending", "k", NOW + 1) is None


DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def test_event_name_is_stable_per_explanation_and_a_valid_name() -> None:
    name = event_name("incoming", "uid-1", "key")
    assert name == event_name("incoming", "uid-1", "key")
    assert name.startswith("incoming.")
    assert name != event_name("incoming", "uid-1", "other key")
    assert name != event_name("incoming", "uid-2", "key")
    for pod_name in ("incoming", "a" * 253, ("a" * 235) + "-.b" * 6, "web.v1"):
        name = event_name(pod_name, "uid-1", "key")
        assert len(name) <= 253
        assert DNS_SUBDOMAIN.match(name), name
