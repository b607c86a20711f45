"""How a replica's exit code reaches a coordinator that is not its parent.

A parent learns its child's exit code from ``wait()``. A local supervisor that re-adopted the
replicas of a supervisor killed before it (``trainingjob run --resume``) is no parent of theirs, so
a replica started by the local backend writes its code to ``$TJ_EXIT_DIR/<pid>`` as it exits. A
replica that left no record was killed by a signal. On Kubernetes the kubelet reports exit codes;
the variable is never set there.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

EXIT_DIR_ENV = "TJ_EXIT_DIR"


def record_exit(code: int) -> None:
    """Write this process's exit code where the local supervisor looks for it (a no-op elsewhere)."""
    directory = os.environ.get(EXIT_DIR_ENV)
    if not directory:
        return
    path = Path(directory) / str(os.getpid())
    with contextlib.suppress(OSError):  # never let the record stop the exit
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(".tmp")
        staging.write_text(str(code))
        os.replace(staging, path)


def recorded_exit(directory: Path, pid: int, started_at: float) -> int | None:
    """The code process ``pid`` (started at ``started_at``, epoch seconds) recorded, or None if it left none.
    A record older than the process belongs to an earlier process with the same pid."""
    path = directory / str(pid)
    try:
        if path.stat().st_mtime < started_at - 1.0:
            return None
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
