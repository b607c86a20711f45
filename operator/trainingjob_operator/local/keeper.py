"""The keeper of a local run: ``python -m trainingjob_operator.local.keeper STATE_FILE RUN_ID``.

The supervisor starts it in a session of its own. Replicas do not die with their supervisor (so
``trainingjob run --resume`` can adopt them), and the keeper is what makes sure they do not outlive
it for long either: once the run has had no live supervisor for the state's ``orphan_grace_s``, it
stops every process of the run (SIGTERM, then SIGKILL) and exits. A resumed supervisor rewrites the
state file with its own pid, and the keeper watches that one from then on. A run ended on purpose
(finished, or stopped with Ctrl-C) marks the state ended, and the keeper exits.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

from trainingjob_operator.local.runstate import (
    RUN_ID_ENV,
    KeeperAction,
    ProcessRef,
    StateError,
    keeper_action,
    read_state,
)

log = logging.getLogger("trainingjob.keeper")


def process_of(ref: ProcessRef | None) -> psutil.Process | None:
    """The live process ``ref`` names, or None (gone, a zombie, or its pid reused by another)."""
    if ref is None:
        return None
    with contextlib.suppress(psutil.Error):
        process = psutil.Process(ref.pid)
        if abs(process.create_time() - ref.started_at) < 0.05 and process.status() != psutil.STATUS_ZOMBIE:
            return process
    return None


def ref_of(pid: int) -> ProcessRef:
    return ProcessRef(pid, psutil.Process(pid).create_time())


def processes_of_run(run_id: str) -> list[psutil.Process]:
    """Every live process whose environment marks it as part of this run (replicas, their children,
    standbys; the embedded Redis is found by its ProcessRef in the state file)."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.environ().get(RUN_ID_ENV) == run_id and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


def stop_processes(processes: Iterable[psutil.Process], grace_s: float) -> None:
    """SIGTERM, then SIGKILL whatever is left after ``grace_s`` (a stopped process ignores SIGTERM)."""
    processes = list(processes)
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=5)


def keep(state_path: Path, run_id: str, poll_s: float = 0.5, grace_s: float = 5.0) -> int:
    orphaned_since: float | None = None
    me = psutil.Process().pid
    while True:
        try:
            state = read_state(state_path)
        except StateError as e:  # the workdir went away: nothing left to keep
            log.warning("keeper exits: %s", e)
            return 0
        action, orphaned_since = keeper_action(state, run_id, process_of(state.supervisor) is not None, orphaned_since,
                                               time.time())
        if action is KeeperAction.EXIT:
            return 0
        if action is KeeperAction.REAP:
            ours = state.run_id == run_id
            listed = [p for ref in [*state.processes.values(), state.redis] if (p := process_of(ref)) is not None]
            found = {p.pid: p for p in [*(listed if ours else []), *processes_of_run(run_id)] if p.pid != me}
            log.warning("%s: stopping the run's %d processes",
                        f"no supervisor for {state.orphan_grace_s:.0f} s" if ours else "the job was started afresh",
                        len(found))
            stop_processes(found.values(), grace_s)
            return 0
        time.sleep(poll_s)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s keeper: %(message)s")
    return keep(Path(sys.argv[1]), sys.argv[2])


if __name__ == "__main__":
    sys.exit(main())
