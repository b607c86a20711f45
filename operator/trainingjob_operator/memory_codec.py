"""The reconcile core's memory as JSON: what a shell persists so that its successor resumes the job
where it stopped instead of starting it again. Pure.

The operator keeps it in ``status.coordinator`` (the conditions in ``status.conditions``); the local
supervisor keeps the same document in its run-state file, for ``trainingjob run --resume``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trainingjob_operator.api.status import Condition, Phase
from trainingjob_operator.reconcile import FailureEvent, JobMemory, ReplicaId

COORDINATOR_KEY = "coordinator"


def _failure_to_dict(f: FailureEvent) -> dict[str, Any]:
    out: dict[str, Any] = {"replica": f.id.name, "reason": f.reason, "time": f.time, "instance": f.instance}
    if f.exit_code is not None:
        out["exitCode"] = f.exit_code
    return out


def _failure_from_dict(d: Mapping[str, Any]) -> FailureEvent:
    return FailureEvent(ReplicaId.parse(d["replica"]), str(d["reason"]), float(d["time"]),
                        d.get("exitCode"), str(d.get("instance", "")))


def memory_to_dict(m: JobMemory) -> dict[str, Any]:
    out: dict[str, Any] = {
        "phase": m.phase.value,
        "generation": m.generation,
        "createdAt": {k: round(v, 3) for k, v in sorted(m.created_at.items())},
        "replacing": sorted(m.replacing),
        "seen": sorted(m.seen),
        "succeeded": sorted(m.succeeded),
        "restartTimes": {k: [round(t, 3) for t in v] for k, v in sorted(m.restart_times.items())},
        "restarts": dict(sorted(m.restarts.items())),
        "failures": m.failures,
    }
    if m.not_before:
        out["notBefore"] = {k: round(v, 3) for k, v in sorted(m.not_before.items())}
    if m.resuming:
        out["resuming"] = sorted(m.resuming)
    if m.resumed_at is not None:
        out["resumedAt"] = m.resumed_at
    if m.last_failure is not None:
        out["lastFailure"] = _failure_to_dict(m.last_failure)
    if m.start_time is not None:
        out["startTime"] = m.start_time
    if m.completion_time is not None:
        out["completionTime"] = m.completion_time
    return out


def memory_from_status(status: Mapping[str, Any] | None) -> JobMemory | None:
    """The memory a previous operator persisted, or None for a job it never ran (or garbage)."""
    if not status or not isinstance(status.get(COORDINATOR_KEY), Mapping):
        return None
    d = status[COORDINATOR_KEY]
    try:
        conditions = tuple(Condition.model_validate(c) for c in status.get("conditions") or ())
        return JobMemory(
            phase=Phase(d["phase"]),
            generation=int(d.get("generation", 0)),
            created_at={str(k): float(v) for k, v in (d.get("createdAt") or {}).items()},
            replacing=frozenset(d.get("replacing") or ()),
            seen=frozenset(d.get("seen") or ()),
            succeeded=frozenset(d.get("succeeded") or ()),
            restart_times={str(k): tuple(float(t) for t in v) for k, v in (d.get("restartTimes") or {}).items()},
            restarts={str(k): int(v) for k, v in (d.get("restarts") or {}).items()},
            failures=int(d.get("failures", 0)),
            not_before={str(k): float(v) for k, v in (d.get("notBefore") or {}).items()},
            resuming=frozenset(d.get("resuming") or ()),
            resumed_at=float(d["resumedAt"]) if d.get("resumedAt") is not None else None,
            last_failure=_failure_from_dict(d["lastFailure"]) if d.get("lastFailure") else None,
            conditions=conditions,
            start_time=float(d["startTime"]) if d.get("startTime") is not None else None,
            completion_time=float(d["completionTime"]) if d.get("completionTime") is not None else None,
        )
    except (KeyError, TypeError, ValueError):
        return None  # unreadable (a different schema): start over rather than crash-loop
