"""The local run's state file: what ``trainingjob run --resume`` needs to take over a run whose supervisor died.

On Kubernetes a restarted operator rebuilds its view from the API server (the pods) and from the
TrainingJob's ``status.coordinator`` (the core's memory). Locally this file is both: the core's
memory in the same JSON (``memory_codec``), the replicas' processes (pid and start time, so a reused
pid is never mistaken for a replica), the Redis the replicas talk to, and what the summary needs
(incarnations, failures, injections sent). The supervisor rewrites it atomically whenever it changes.

The keeper (``local.keeper``) reads it too: it outlives a killed supervisor, and once the run has
gone ``orphan_grace_s`` without one it stops every process of the run, so nothing is left behind.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATE_FILE = "run-state.json"
RUN_ID_ENV = "TJ_LOCAL_RUN"  # every process of a local run carries it, so the keeper finds them all
STATE_VERSION = 1


class StateError(ValueError):
    """The state file is missing, unreadable, or belongs to another manifest; one line for the user."""


@dataclass(frozen=True)
class ProcessRef:
    """A process that is ours only while its start time matches: pids are reused."""

    pid: int
    started_at: float  # the kernel's start time, epoch seconds (psutil's create_time)


@dataclass
class RunState:
    run_id: str
    manifest_digest: str
    started: float
    orphan_grace_s: float
    redis_url: str
    supervisor: ProcessRef
    keeper: ProcessRef | None = None
    redis: ProcessRef | None = None  # an embedded Redis this run started and must stop
    ended: str | None = None  # the final status once the supervisor ended the run on purpose
    memory: dict[str, Any] = field(default_factory=dict)  # {"coordinator": ..., "conditions": [...]}
    mode: str = "partial"
    processes: dict[str, ProcessRef] = field(default_factory=dict)
    history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # replica -> incarnations
    failures: list[dict[str, Any]] = field(default_factory=list)
    injected: list[dict[str, Any]] = field(default_factory=list)
    resumes: int = 0  # supervisors that took the run over
    redis_restarts: int = 0  # times the run's embedded Redis died and was started again
    version: int = STATE_VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, default=_plain)

    @classmethod
    def from_json(cls, text: str) -> RunState:
        d = json.loads(text)
        if not isinstance(d, Mapping) or d.get("version") != STATE_VERSION:
            raise StateError(f"state file version {d.get('version') if isinstance(d, Mapping) else None!r}, "
                             f"expected {STATE_VERSION}")
        d = dict(d)
        d["supervisor"] = ProcessRef(**d["supervisor"])
        d["keeper"] = ProcessRef(**d["keeper"]) if d.get("keeper") else None
        d["redis"] = ProcessRef(**d["redis"]) if d.get("redis") else None
        d["processes"] = {name: ProcessRef(**ref) for name, ref in d.get("processes", {}).items()}
        return cls(**d)


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    raise TypeError(f"not JSON: {value!r}")


def manifest_digest(wire: Mapping[str, Any]) -> str:
    """Identifies the job a run was started for: its manifest with every default filled in."""
    return hashlib.sha256(json.dumps(wire, sort_keys=True).encode()).hexdigest()[:16]


def write_state(path: Path, state: RunState) -> None:
    staging = path.with_name(path.name + ".tmp")
    staging.write_text(state.to_json())
    os.replace(staging, path)  # readers see the old file or the new one, never half of one


def read_state(path: Path) -> RunState:
    try:
        return RunState.from_json(path.read_text())
    except FileNotFoundError:
        raise StateError(f"no run to resume: {path} does not exist") from None
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise StateError(f"{path} is unreadable: {e}") from None


# --- decisions -------------------------------------------------------------------------------------


class KeeperAction(enum.Enum):
    WATCH = "watch"  # a supervisor runs the job, or the grace period is not over
    REAP = "reap"  # no supervisor for longer than the grace period: stop every process of the run
    EXIT = "exit"  # the run was ended on purpose: nothing to keep


def keeper_action(state: RunState, run_id: str, supervisor_alive: bool, orphaned_since: float | None,
                  now: float) -> tuple[KeeperAction, float | None]:
    """What the keeper of run ``run_id`` does now, and since when the run has had no supervisor (None: it has
    one). A state file of another run means the job was started afresh over this one: nobody will resume it."""
    if state.run_id != run_id:
        return KeeperAction.REAP, orphaned_since
    if state.ended is not None:
        return KeeperAction.EXIT, orphaned_since
    if supervisor_alive:
        return KeeperAction.WATCH, None
    since = orphaned_since if orphaned_since is not None else now
    return (KeeperAction.REAP if now - since >= state.orphan_grace_s else KeeperAction.WATCH), since


def resume_problem(state: RunState, digest: str, supervisor_alive: bool) -> str | None:
    """Why this run cannot be resumed, or None when it can."""
    if state.ended is not None:
        return f"the run already ended ({state.ended}); start it again without --resume"
    if state.manifest_digest != digest:
        return "the manifest changed since the run started; resume it with the manifest it was started with"
    if supervisor_alive:
        return f"a supervisor (pid {state.supervisor.pid}) is still running this job"
    return None
