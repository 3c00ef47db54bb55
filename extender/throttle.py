"""When an explanation of a Pending pod is worth a new Event, and what the Event is named.

The explainer (extender.pending) asks `EventThrottle` before it writes: one Event per pod and
explanation, a changed one at most once per interval, the same one refreshed now and then so a
long-Pending pod keeps it. `event_name` derives the Event's name from the pod and the
explanation, the same in every replica. Pure: the caller passes the time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

EventAction = Literal["create", "refresh"]


@dataclass(slots=True)
class _Said:
    key: str | None
    at: float
    count: int


class EventThrottle:
    """One Event per pod and explanation, re-said when the explanation changes but at most
    once per min_interval per pod; the same explanation is refreshed (count and last
    timestamp) every refresh_interval so a long-Pending pod keeps its Event past the API's
    event TTL. Not thread-safe: one worker owns it."""

    def __init__(self, min_interval: float = 30.0, refresh_interval: float | None = 600.0) -> None:
        self.min_interval = min_interval
        self.refresh_interval = refresh_interval
        self._said: dict[str, _Said] = {}

    def due(self, uid: str, now: float) -> bool:
        """Whether evaluating the pod now can lead to an Event (skip the fit work if not)."""
        said = self._said.get(uid)
        return said is None or now - said.at >= self.min_interval

    def decide(self, uid: str, key: str, now: float) -> EventAction | None:
        said = self._said.get(uid)
        if said is None:
            return "create"
        if said.key == key:
            refresh = self.refresh_interval
            return "refresh" if refresh is not None and now - said.at >= refresh else None
        return "create" if now - said.at >= self.min_interval else None

    def next_count(self, uid: str, action: EventAction) -> int:
        """The count the Event will carry: 1 for a new one, one more for a refresh."""
        previous = self._said.get(uid)
        return previous.count + 1 if action == "refresh" and previous is not None else 1

    def said(self, uid: str, key: str, now: float, action: EventAction) -> None:
        """Record an Event handed to the recorder."""
        self._said[uid] = _Said(key, now, self.next_count(uid, action))

    def failed(self, uid: str, key: str) -> None:
        """The Event was not written: say it again, but not before min_interval."""
        said = self._said.get(uid)
        if said is not None and said.key == key:
            said.key = None

    def retain(self, uids: Iterable[str]) -> None:
        """Forget every pod but these (the bound and the deleted)."""
        keep = set(uids)
        for uid in [u for u in self._said if u not in keep]:
            del self._said[uid]

    def __len__(self) -> int:
        return len(self._said)


def event_name(pod_name: str, uid: str, key: str) -> str:
    """A name derived from the pod and the explanation: every extender replica (and a
    restarted one) names the same explanation the same, so the API refuses the second
    create (409) instead of storing the Event twice."""
    digest = hashlib.sha256(f"{uid}\n{key}".encode()).hexdigest()[:16]
    stem = pod_name[: 253 - len(digest) - 1].rstrip(".-") or "pod"
    return f"{stem}.{digest}"
