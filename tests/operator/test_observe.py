"""From pods and Redis members to what the reconcile core sees."""

from __future__ import annotations

from typing import Any

import pytest

from trainingjob_operator.api.spec import Role
from trainingjob_operator.k8s.observe import HeartbeatSnapshot, mark_deleting, observe_pod, with_heartbeats
from trainingjob_operator.reconcile import ObservedReplica, ReplicaId, ReplicaPhase

TRAINER_1 = ReplicaId(Role.TRAINER, 1)


def pod(phase: str | None = "Running", *, uid: str = "uid-1", status: dict[str, Any] | None = None,
        deleting: bool = False, labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "job-trainer-1", "uid": uid, "labels": labels if labels is not None else {
        "training.cpr.dev/job": "job", "training.cpr.dev/role": "trainer", "training.cpr.dev/rank": "1"}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    body_status = {"phase": phase} if phase else {}
    body_status.update(status or {})
    return {"metadata": meta, "status": body_status}


def terminated(code: int, reason: str = "Error") -> dict[str, Any]:
    return {"containerStatuses": [{"name": "dlrm", "state": {"terminated": {"exitCode": code, "reason": reason}}}]}


@pytest.mark.parametrize(("body", "phase", "exit_code", "reason"), [
    pytest.param(pod("Pending"), ReplicaPhase.PENDING, None, None, id="pending"),
    pytest.param(pod(None), ReplicaPhase.PENDING, None, None, id="no-status-yet"),
    pytest.param(pod("Running"), ReplicaPhase.RUNNING, None, None, id="running"),
    pytest.param(pod("Unknown"), ReplicaPhase.RUNNING, None, None, id="node-unreachable-heartbeat-decides"),
    pytest.param(pod("Succeeded", status=terminated(0, "Completed")), ReplicaPhase.SUCCEEDED, 0, None,
                 id="succeeded"),
    pytest.param(pod("Failed", status=terminated(1)), ReplicaPhase.FAILED, 1, None, id="exit-1"),
    pytest.param(pod("Failed", status=terminated(78)), ReplicaPhase.FAILED, 78, None, id="exit-78"),
    pytest.param(pod("Failed", status=terminated(137, "OOMKilled")), ReplicaPhase.FAILED, 137, "OOMKilled",
                 id="oom-killed"),
    pytest.param(pod("Failed", status={"reason": "Evicted", "message": "low on memory"}), ReplicaPhase.FAILED,
                 None, "Evicted", id="evicted"),
])
def test_pod_phase_exit_code_and_reason(body: dict[str, Any], phase: ReplicaPhase, exit_code: int | None,
                                        reason: str | None) -> None:
    observed = observe_pod(body)
    assert observed is not None
    assert (observed.id, observed.phase, observed.exit_code, observed.reason) == (TRAINER_1, phase, exit_code, reason)
    assert observed.instance == "uid-1"


def test_deletion_timestamp_means_deleting_and_start_time_is_parsed() -> None:
    running = {"containerStatuses": [{"name": "dlrm", "state": {"running": {"startedAt": "2026-01-01T00:00:10Z"}}}],
               "startTime": "2026-01-01T00:00:00Z"}
    observed = observe_pod(pod("Running", status=running, deleting=True))
    assert observed is not None and observed.deleting
    assert observed.started_at == 1767225610.0  # the container's start, not the pod's


@pytest.mark.parametrize("labels", [
    pytest.param({}, id="no-labels"),
    pytest.param({"training.cpr.dev/role": "trainer", "training.cpr.dev/rank": "x"}, id="bad-rank"),
])
def test_pods_that_name_no_replica_are_ignored(labels: dict[str, str]) -> None:
    assert observe_pod(pod(labels=labels)) is None


def observed(instance: str = "uid-1") -> dict[ReplicaId, ObservedReplica]:
    return {TRAINER_1: ObservedReplica(TRAINER_1, ReplicaPhase.RUNNING, instance, started_at=100.0)}


def test_heartbeats_count_only_for_the_member_with_the_pods_uid() -> None:
    snapshot = HeartbeatSnapshot(read_at=200.0, members={TRAINER_1: ("uid-1", 195.0)})
    assert with_heartbeats(observed("uid-1"), snapshot, now=200.0)[TRAINER_1].heartbeat_at == 195.0
    # A replacement pod must not inherit its predecessor's heartbeat...
    replacement = with_heartbeats(observed("uid-2"), snapshot, now=200.0)[TRAINER_1]
    assert replacement.heartbeat_at is None
    assert replacement.started_at == 100.0  # ...so the core judges it by its start-up grace instead.


def test_a_stale_snapshot_shifts_heartbeats_by_its_age() -> None:
    snapshot = HeartbeatSnapshot(read_at=200.0, members={TRAINER_1: ("uid-1", 195.0)})
    # Read 3 s ago: the replica was fine 5 s before that read; we have not looked since.
    assert with_heartbeats(observed(), snapshot, now=203.0)[TRAINER_1].heartbeat_at == 198.0


def test_without_a_snapshot_nothing_can_be_declared_hung() -> None:
    replica = with_heartbeats(observed(), None, now=1e9)[TRAINER_1]
    assert (replica.heartbeat_at, replica.started_at) == (None, None)


def test_pods_we_asked_to_delete_count_as_deleting_until_replaced() -> None:
    assert mark_deleting(observed("uid-1"), {TRAINER_1: "uid-1"})[TRAINER_1].deleting
    assert not mark_deleting(observed("uid-2"), {TRAINER_1: "uid-1"})[TRAINER_1].deleting
