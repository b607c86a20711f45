"""Pure decisions of the pytorch workload's agent and helpers: no processes, Redis, torch or clocks.

The agent in each worker pod (``trainingjob_torch.agent``) and the helpers a script calls
(``trainingjob_torch``) are thin shells around these functions.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

CHECKPOINT_DIR = re.compile(r"^step-(\d{9})$")
DCP_METADATA = ".metadata"  # torch.distributed.checkpoint writes it last, once every rank wrote its part


def checkpoint_name(step: int) -> str:
    return f"step-{step:09d}"


def staging_name(step: int, generation: int) -> str:
    """Where a save is written before it is complete: never mistaken for a checkpoint by ``newest_complete``."""
    return f".{checkpoint_name(step)}.g{generation}.tmp"


def newest_complete(entries: Mapping[str, Iterable[str]]) -> tuple[str, int] | None:
    """(directory, step) of the newest complete checkpoint, from each directory's file names. A directory is
    complete when it has its final name (renamed after every rank saved) and the DCP metadata file."""
    best: tuple[str, int] | None = None
    for name, files in entries.items():
        match = CHECKPOINT_DIR.match(name)
        if match is None or DCP_METADATA not in set(files):
            continue
        step = int(match.group(1))
        if best is None or step > best[1]:
            best = (name, step)
    return best


def to_prune(names: Iterable[str], keep: int) -> list[str]:
    """The complete checkpoints beyond the newest ``keep`` and every staging directory of an older save."""
    steps = sorted((int(m.group(1)), n) for n in names if (m := CHECKPOINT_DIR.match(n)))
    old = [n for _, n in steps[:-keep]] if keep > 0 else [n for _, n in steps]
    newest = steps[-1][0] if steps else -1
    stale = [n for n in names if n.startswith(".step-") and n.endswith(".tmp") and int(n[6:15]) <= newest]
    return sorted(old + stale)


def world_complete(world: Mapping[int, Mapping[str, Any]], workers: int, registered: Mapping[int, str]) -> bool:
    """Every worker's agent joined this generation, each the incarnation now registered for its rank (a fenced
    or replaced one that joined before it died does not count)."""
    return all(rank in world and world[rank].get("instance") == registered.get(rank) for rank in range(workers))


def process_env(*, worker_rank: int, workers: int, local_rank: int, procs_per_worker: int, master_addr: str,
                master_port: int, generation: int, restarts: int) -> dict[str, str]:
    """What torchrun gives each process (torch.distributed's env:// init reads these)."""
    return {
        "RANK": str(worker_rank * procs_per_worker + local_rank),
        "WORLD_SIZE": str(workers * procs_per_worker),
        "LOCAL_RANK": str(local_rank),
        "LOCAL_WORLD_SIZE": str(procs_per_worker),
        "GROUP_RANK": str(worker_rank),
        "ROLE_RANK": str(worker_rank * procs_per_worker + local_rank),
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
        "TORCHELASTIC_RESTART_COUNT": str(restarts),
        "TJ_WORLD_GENERATION": str(generation),
    }


def resolve_command(command: list[str], executable: str) -> list[str]:
    """A leading ``python``/``python3`` is the agent's own interpreter (the image's, or a local run's venv), as
    torchrun runs a script with ``sys.executable``."""
    if command and command[0] in ("python", "python3"):
        return [executable, *command[1:]]
    return list(command)


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class Next(enum.StrEnum):
    KEEP_RUNNING = "KeepRunning"
    RESTART_IN_PLACE = "RestartInPlace"  # a peer failed (the generation moved): new processes, same pod
    WAIT_FOR_PEERS = "WaitForPeers"  # a local process failed: give the coordinator time to say it was a peer
    FAIL_POD = "FailPod"  # a local process failed on its own: the pod fails and is replaced
    DONE = "Done"  # every local process finished: the pod succeeds


@dataclass(frozen=True)
class LocalState:
    """What the agent sees: its processes' exit codes (None: running) and the coordination store."""

    exit_codes: tuple[int | None, ...]
    generation_moved: bool
    failed_since: float | None  # when a local process first failed in this generation
    now: float
    grace_s: float
    fault_is_ours: bool  # this agent was the first of the generation to see a local failure


def next_step(state: LocalState) -> Next:
    """The agent's decision each poll. A moved generation always wins: the processes restart in place. A
    failure seen first here (``fault_is_ours``) fails the pod once ``grace_s`` passed without the generation
    moving; a failure another worker saw first is collateral (its processes lost a peer), so this pod waits
    for the new generation however long the failed pod takes to be replaced."""
    if state.generation_moved:
        return Next.RESTART_IN_PLACE
    codes = state.exit_codes
    if all(code == 0 for code in codes):
        return Next.DONE
    if any(code not in (None, 0) for code in codes):
        if state.fault_is_ours and state.failed_since is not None and state.now - state.failed_since >= state.grace_s:
            return Next.FAIL_POD
        return Next.WAIT_FOR_PEERS
    return Next.KEEP_RUNNING


def first_failure(codes: Iterable[int | None]) -> int | None:
    return next((code for code in codes if code not in (None, 0)), None)


def save_due(*, now: float, last_save: float, interval_s: float, step: int, last_saved_step: int) -> bool:
    """Rank 0's decision to save (every rank follows it): the tuned interval passed since the last save and
    there is a step not saved yet."""
    return step > last_saved_step and now - last_save >= interval_s
