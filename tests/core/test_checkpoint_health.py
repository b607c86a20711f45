"""Checkpoint saves that fail (storage full, unwritable): a condition while training goes on, the job failed after
``recovery.checkpoint.maxConsecutiveFailures`` failures in a row. Decided in the reconcile core for both shells."""

from __future__ import annotations

from trainingjob_operator.api.spec import TrainingJobSpec
from trainingjob_operator.api.status import Phase
from trainingjob_operator.reconcile import (
    DeleteReplica,
    JobMemory,
    ObservedReplica,
    ReplicaPhase,
    checkpoint_condition,
    desired_replicas,
    reconcile,
)

NOW = 10_000.0
ENOSPC = "[Errno 28] No space left on device"


def running_job() -> tuple[TrainingJobSpec, dict, JobMemory]:
    spec = TrainingJobSpec.model_validate({"recovery": {"checkpoint": {"maxConsecutiveFailures": 3}}})
    observed = {rid: ObservedReplica(rid, ReplicaPhase.RUNNING, instance=rid.name, heartbeat_at=NOW - 1,
                                     started_at=NOW - 100) for rid in desired_replicas(spec)}
    memory = JobMemory(phase=Phase.RUNNING, created_at={rid.name: NOW - 500 for rid in observed},
                       start_time=NOW - 500)
    return spec, observed, memory


def condition(memory: JobMemory, type_: str = "CheckpointFailing") -> tuple[str, str, str] | None:
    c = next((c for c in memory.conditions if c.type == type_), None)
    return None if c is None else (c.status, c.reason, c.message)


def test_failing_saves_are_a_condition_naming_the_saver_and_the_job_keeps_running() -> None:
    spec, observed, memory = running_job()
    decision = reconcile(spec, observed, memory, NOW, checkpoint_failures={"1": (2, ENOSPC)})
    assert decision.phase is Phase.RUNNING and decision.actions == []
    status, reason, message = condition(decision.memory)  # type: ignore[misc]
    assert (status, reason) == ("True", "SaveFailed")
    assert "embedding-server-1: 2 in a row" in message and ENOSPC in message
    cleared = reconcile(spec, observed, decision.memory, NOW + 5, checkpoint_failures={})
    assert condition(cleared.memory)[:2] == ("False", "CheckpointsSaving")  # type: ignore[index]
    unknown = reconcile(spec, observed, decision.memory, NOW + 5, checkpoint_failures=None)  # Redis away
    assert condition(unknown.memory)[:2] == ("True", "SaveFailed")  # type: ignore[index]


def test_max_consecutive_failures_fail_the_job_and_stop_its_replicas() -> None:
    spec, observed, memory = running_job()
    decision = reconcile(spec, observed, memory, NOW,
                         checkpoint_failures={"0": (1, "timeout"), "sync-server-0": (3, ENOSPC)})
    assert decision.phase is Phase.FAILED
    status, reason, message = condition(decision.memory, "Failed")  # type: ignore[misc]
    assert (status, reason) == ("True", "CheckpointFailing")
    assert message.startswith("sync-server-0: 3 checkpoint saves in a row failed") and ENOSPC in message
    assert {a.id for a in decision.actions if isinstance(a, DeleteReplica)} == set(observed)


def test_no_condition_appears_while_every_save_succeeds() -> None:
    conditions, give_up = checkpoint_condition((), {}, 3, NOW)
    assert conditions == () and give_up is None
