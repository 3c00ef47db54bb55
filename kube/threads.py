"""The background-thread start/stop of the long-running parts (watches, telemetry poller,
Pending explainer, advertiser): daemon threads sharing one stop flag, joined only briefly on
stop. A thread may sit in a network read until its request times out; it is a daemon and
ends with the process, so stopping never waits long for it."""

from __future__ import annotations

import threading
from collections.abc import Callable


class Threads:
    """Daemon threads started by name; `stopping` is the flag their loops wait on."""

    def __init__(self, *, join_seconds: float = 1.0) -> None:
        self.stopping = threading.Event()
        self._join_seconds = join_seconds
        self._threads: list[threading.Thread] = []

    def start(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Set `stopping`, then give each thread up to `timeout` s (default join_seconds)."""
        self.stopping.set()
        for thread in self._threads:
            thread.join(self._join_seconds if timeout is None else timeout)
        self._threads = [thread for thread in self._threads if thread.is_alive()]
