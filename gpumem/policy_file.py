"""A policy file on disk that is re-read when it changes, keeping the last good policy.

ConfigMap volumes swap a symlink rather than rewrite the file, so a change is detected by the
content's hash, not its mtime.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gpumem.policy import Policy, PolicyError, parse_policy, read_policy_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReloadOutcome:
    """What one look at the file found: a new policy, or an error that kept the old one."""

    ok: bool
    error: str | None = None


class PolicyFile:
    """The current policy from one file. The first load raises PolicyError; later loads never
    do: a broken edit is logged, reported and ignored until the file changes again."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        text = read_policy_text(self.path)
        self._digest: str | None = _digest(text)
        self._policy = parse_policy(text, str(self.path))
        self.last_error: str | None = None

    @property
    def current(self) -> Policy:
        return self._policy

    def reload_if_changed(self) -> ReloadOutcome | None:
        """Re-read the file; None when its content is unchanged since the last look."""
        try:
            text = read_policy_text(self.path)
        except PolicyError as err:
            return self._failed(str(err), digest=None)
        digest = _digest(text)
        if digest == self._digest:
            return None
        try:
            policy = parse_policy(text, str(self.path))
        except PolicyError as err:
            return self._failed(str(err), digest)
        self._digest, self._policy, self.last_error = digest, policy, None
        log.info("policy reloaded from %s", self.path)
        return ReloadOutcome(ok=True)

    async def watch(
        self, interval: float, on_outcome: Callable[[ReloadOutcome], None] = lambda _: None
    ) -> None:
        """Poll the file until cancelled; file reads run off the event loop."""
        while True:
            await asyncio.sleep(interval)
            try:
                outcome = await asyncio.to_thread(self.reload_if_changed)
            except Exception:
                # A watcher that dies would freeze the policy without a word; keep polling.
                log.exception("policy reload check failed")
                continue
            if outcome is not None:
                on_outcome(outcome)

    def _failed(self, error: str, digest: str | None) -> ReloadOutcome | None:
        # Remember what failed so a broken file is reported once, not on every poll; an
        # unreadable file forgets the digest, so even the old content counts as new again.
        self._digest = digest
        if error == self.last_error:
            return None
        log.error("policy reload failed, keeping the last good policy: %s", error)
        self.last_error = error
        return ReloadOutcome(ok=False, error=error)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


__all__ = ["Policy", "PolicyError", "PolicyFile", "ReloadOutcome"]
