"""Reading /proc/<pid>/cgroup for the GPU processes NVML lists. NVML gives host PIDs, so the
proc root is the host's: the agent's own /proc with hostPID, or a mounted copy (--proc-root).
The text is parsed by gpumem.cgroup; only the file access is here."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gpumem.cgroup import ContainerRef, container_of


@dataclass(frozen=True)
class ProcProblem:
    """A PID whose cgroup could not be read: `exited` (gone between NVML's list and the read:
    a normal race, its memory being freed) or another error (permissions, a broken mount)."""

    pid: int
    exited: bool
    error: str

    def __str__(self) -> str:
        return f"pid {self.pid}: {self.error}"


def read_containers(
    proc_root: Path, pids: Iterable[int]
) -> tuple[dict[int, ContainerRef | None], list[ProcProblem]]:
    """Each PID's pod and container (None: in no pod). An exited PID is left out; one whose
    file cannot be read for another reason counts as in no known pod (its memory still is)."""
    found: dict[int, ContainerRef | None] = {}
    problems: list[ProcProblem] = []
    for pid in sorted(set(pids)):
        path = proc_root / str(pid) / "cgroup"
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except (FileNotFoundError, ProcessLookupError):
            problems.append(ProcProblem(pid, True, "exited before its cgroup was read"))
            continue
        except OSError as err:
            problems.append(ProcProblem(pid, False, f"{path}: {err.strerror or err}"))
            found[pid] = None
            continue
        found[pid] = container_of(text)
    return found, problems


__all__ = ["ProcProblem", "read_containers"]
