"""Background processes with a log file each, and the small waiting/port helpers
the control plane needs."""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


class ProcessError(RuntimeError):
    """A managed process failed to start, died, or never became ready."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it when binding port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@functools.cache
def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGKILL if the test runner dies without
    cleaning up (Linux ``PR_SET_PDEATHSIG``). SIGKILL, not SIGTERM: every process gets it
    at once, and a kube-apiserver whose etcd is already gone hangs in graceful shutdown.
    ``prctl`` is looked up here, in the parent, so the child only makes the call."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    return preexec


class ManagedProcess:
    """One child process whose stdout and stderr go to ``log_path``."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.args = list(args)
        self.log_path = log_path
        self._env = env
        self._cwd = cwd
        self._popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the process; again after it has exited (the log file is appended to)."""
        if self._popen is not None and self._popen.poll() is None:
            raise ProcessError(f"{self.name} already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"+ {' '.join(self.args)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self._env} if self._env else None,
                cwd=self._cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent(),  # noqa: PLW1509 - only calls prctl
            )

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    @property
    def returncode(self) -> int | None:
        return self._popen.poll() if self._popen else None

    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def check_alive(self) -> None:
        """Raise ProcessError (with the end of the log) if the process has exited."""
        if self._popen is None:
            raise ProcessError(f"{self.name} was never started")
        code = self._popen.poll()
        if code is not None:
            raise ProcessError(
                f"{self.name} exited with status {code}; log {self.log_path}:\n{self.log_tail()}"
            )

    def stop(self, grace_seconds: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_seconds``; a no-op once it has exited."""
        popen = self._popen
        if popen is None or popen.poll() is not None:
            return
        popen.terminate()
        try:
            popen.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as err:
            return f"(cannot read log: {err})"
        return "\n".join(text.splitlines()[-lines:])

    def __repr__(self) -> str:
        return f"ManagedProcess({self.name!r}, pid={self.pid}, log={str(self.log_path)!r})"


def wait_until(
    what: str,
    condition: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.25,
    watch: Sequence[ManagedProcess] = (),
) -> None:
    """Poll ``condition`` until it is true; fail fast if a watched process exits."""
    deadline = time.monotonic() + timeout
    while True:
        for process in watch:
            process.check_alive()
        if condition():
            return
        if time.monotonic() >= deadline:
            logs = "".join(f"\n--- {p.name} ({p.log_path}):\n{p.log_tail()}" for p in watch)
            raise ProcessError(f"timed out after {timeout:.0f}s waiting for {what}{logs}")
        time.sleep(interval)


def url_ok(url: str, context: ssl.SSLContext | None = None, timeout: float = 2.0) -> bool:
    """True when GET ``url`` answers 200. Never goes through an HTTP proxy from the
    environment: everything the harness probes listens on 127.0.0.1."""
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False
