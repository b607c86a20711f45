"""From what Kubernetes and Redis say to what the reconcile core needs. Pure.

``observe_pod`` maps one pod to an ``ObservedReplica``; ``with_heartbeats`` adds the heartbeats
the replicas wrote to Redis. Two invariants matter for partial recovery:

- a heartbeat counts only when the Redis member's ``instance`` equals the pod's UID: a
  replacement pod must never inherit the heartbeat of the pod it replaces (the member key is
  per role/rank and outlives pods);
- silence is measured only over time we were looking: a snapshot read ``age`` seconds ago shifts
  every heartbeat by ``age``, and no snapshot at all (Redis unreachable) disables hung-replica
  detection instead of declaring every replica hung.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from trainingjob_operator.core.standby import StandbyView
from trainingjob_operator.k8s.resources import ANNOTATION_ASSIGNED_AT, CONTAINER, replica_of, standby_of
from trainingjob_operator.reconcile import STUCK_WAITING_REASONS, ObservedReplica, ReplicaId, ReplicaPhase

# Pod phase -> replica phase. "Unknown" (node unreachable) stays Running: the heartbeat decides.
_PHASES = {
    "Pending": ReplicaPhase.PENDING,
    "Running": ReplicaPhase.RUNNING,
    "Succeeded": ReplicaPhase.SUCCEEDED,
    "Failed": ReplicaPhase.FAILED,
    "Unknown": ReplicaPhase.RUNNING,
}


def parse_time(value: Any) -> float | None:
    """An RFC 3339 timestamp as epoch seconds (None when absent or malformed)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _main_container(status: Mapping[str, Any]) -> Mapping[str, Any]:
    statuses = status.get("containerStatuses") or []
    for cs in statuses:
        if cs.get("name") == CONTAINER:
            return dict(cs)
    return dict(statuses[0]) if statuses else {}


def _waiting(status: Mapping[str, Any], container: Mapping[str, Any]) -> tuple[str | None, str]:
    """Why a pending pod cannot start: the scheduler's verdict, else a container's (init containers first)
    waiting reason, when it is one that does not clear by itself."""
    for condition in status.get("conditions") or ():
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False" \
                and condition.get("reason") == "Unschedulable":
            return "Unschedulable", str(condition.get("message") or "")
    for cs in [*(status.get("initContainerStatuses") or ()), container]:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK_WAITING_REASONS:
            return str(waiting["reason"]), str(waiting.get("message") or "")
    return None, ""


def observe_pod(pod: Mapping[str, Any]) -> ObservedReplica | None:
    """One pod as the core sees it; None when its labels do not name a replica."""
    meta = pod.get("metadata") or {}
    rid = replica_of(meta.get("labels") or {})
    if rid is None:
        return None
    status = pod.get("status") or {}
    phase = _PHASES.get(status.get("phase") or "Pending", ReplicaPhase.PENDING)
    container = _main_container(status)
    state = container.get("state") or {}
    terminated = state.get("terminated") or {}
    exit_code = terminated.get("exitCode")
    reason = None
    if phase is ReplicaPhase.FAILED:
        # Evicted pods have no terminated container; OOMKilled is the container's reason.
        disruption = next((c for c in status.get("conditions") or ()
                           if c.get("type") == "DisruptionTarget" and c.get("status") == "True"), None)
        if status.get("reason"):
            reason = str(status["reason"])
        elif disruption is not None:  # preempted, drained, tainted, evicted: the cluster's doing
            reason = str(disruption.get("reason") or "DisruptionTarget")
        elif terminated.get("reason") in ("OOMKilled", "DeadlineExceeded", "ContainerCannotRun"):
            reason = str(terminated["reason"])
    started = parse_time((state.get("running") or {}).get("startedAt")) or parse_time(status.get("startTime"))
    assigned_at = _float((meta.get("annotations") or {}).get(ANNOTATION_ASSIGNED_AT))
    if assigned_at is not None and started is not None:
        started = max(started, assigned_at)  # a standby's startup budget starts with its assignment
    waiting_reason, waiting_message = _waiting(status, container) if phase is ReplicaPhase.PENDING else (None, "")
    return ObservedReplica(
        id=rid,
        phase=phase,
        instance=str(meta.get("uid") or ""),
        exit_code=int(exit_code) if isinstance(exit_code, int) else None,
        reason=reason,
        started_at=started,
        deleting=bool(meta.get("deletionTimestamp")),
        deleting_until=parse_time(meta.get("deletionTimestamp")),
        waiting_reason=waiting_reason,
        waiting_message=waiting_message[:300],
        handle=str(meta.get("name") or ""),
    )


def _float(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def observe_standby(pod: Mapping[str, Any]) -> StandbyView | None:
    """A warm standby pod still waiting for an assignment; None for any other pod."""
    meta = pod.get("metadata") or {}
    role = standby_of(meta.get("labels") or {})
    if role is None:
        return None
    status = pod.get("status") or {}
    phase = _PHASES.get(status.get("phase") or "Pending", ReplicaPhase.PENDING)
    reason, message = _waiting(status, _main_container(status)) if phase is ReplicaPhase.PENDING else (None, "")
    return StandbyView(name=str(meta.get("name") or ""), role=role, instance=str(meta.get("uid") or ""),
                       phase=phase, created_at=parse_time(meta.get("creationTimestamp")),
                       deleting=bool(meta.get("deletionTimestamp")), waiting_reason=reason, waiting_message=message)


@dataclasses.dataclass(frozen=True)
class HeartbeatSnapshot:
    """Members read from Redis at ``read_at``: replica -> (instance, heartbeat time)."""

    read_at: float
    members: Mapping[ReplicaId, tuple[str, float]]


def with_heartbeats(
    observed: Mapping[ReplicaId, ObservedReplica], snapshot: HeartbeatSnapshot | None, now: float
) -> dict[ReplicaId, ObservedReplica]:
    """The observed replicas with their heartbeats; see the module docstring for the rules."""
    if snapshot is None:
        # Redis unknown: no evidence of silence, so no hung-replica verdicts (heartbeat or startup).
        return {rid: dataclasses.replace(obs, heartbeat_at=None, started_at=None) for rid, obs in observed.items()}
    age = max(0.0, now - snapshot.read_at)
    out = {}
    for rid, obs in observed.items():
        member = snapshot.members.get(rid)
        heartbeat = None
        if member is not None and obs.instance and member[0] == obs.instance:
            heartbeat = min(now, member[1] + age)
        out[rid] = dataclasses.replace(obs, heartbeat_at=heartbeat)
    return out


FORCE_DELETE_MARGIN_S = 60.0  # past its grace period plus this, a terminating pod is stuck (its node is gone)


def stuck_terminating(observed: Mapping[ReplicaId, ObservedReplica], now: float,
                      margin_s: float = FORCE_DELETE_MARGIN_S) -> list[ObservedReplica]:
    """Pods still there ``margin_s`` after their graceful termination should have ended. The API server sets
    ``deletionTimestamp`` to the delete time plus the grace period; a pod past it by a margin is on a node
    that no longer answers, and blocks its replica's replacement (same name) until it is force-deleted."""
    return [obs for obs in observed.values()
            if obs.deleting and obs.deleting_until is not None and now > obs.deleting_until + margin_s]


def mark_deleting(
    observed: Mapping[ReplicaId, ObservedReplica], requested: Mapping[ReplicaId, str]
) -> dict[ReplicaId, ObservedReplica]:
    """Pods we already asked to delete count as deleting until they are gone, even before the
    API server stamps ``deletionTimestamp`` (the watch event may lag our own request)."""
    return {
        rid: dataclasses.replace(obs, deleting=True) if requested.get(rid) == obs.instance else obs
        for rid, obs in observed.items()
    }
