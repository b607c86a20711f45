"""Writing a failure, shared by the operator and the local supervisor: the generation first, then
the failure record (``core.recovery``) with the samples trained at that moment, and for a full
recovery the consistent cut to restore (the newest checkpoint round every server saved) and where
the trainers resume."""

from __future__ import annotations

from collections.abc import Sequence

from trainingjob_operator.api.spec import RecoveryMode, TrainingJobSpec, Workload
from trainingjob_operator.coordination import Coordination
from trainingjob_operator.core.recovery import (
    FailureRecord,
    RollbackPoint,
    consistent_round,
    failure_record,
    rollback_point,
    round_members,
)
from trainingjob_operator.reconcile import CreateReason, CreateReplica, RecordFailure


def write_failure(coord: Coordination, spec: TrainingJobSpec, action: RecordFailure,
                  replica: str) -> tuple[FailureRecord, RollbackPoint | None]:
    """Log ``action`` in the job's failure stream; return the record and, in full mode, where trainers resume."""
    # Fenced first: a replica declared hung that wakes up must not write over its replacement.
    failed = action.failure
    coord.fence(failed.id.role.value, failed.id.rank, failed.instance)
    coord.set_generation(action.generation)
    if spec.workload is Workload.PYTORCH:
        # Every worker's processes restart from the newest complete checkpoint (their agents follow the
        # generation); what they had trained since is recomputed. Tokens stand in for samples.
        steps = coord.step_progress()
        record = failure_record(action, samples=steps.tokens if steps is not None else 0, replica=replica)
        coord.log_failure(**record.to_stream())
        return record, None
    record = failure_record(action, samples=coord.total_samples(spec.replicas.trainer.replicas), replica=replica)
    coord.log_failure(**record.to_stream())
    if action.mode != RecoveryMode.FULL:
        return record, None
    restore = consistent_round(coord.saved_rounds(), round_members(spec))
    # Published before any replacement starts: each server loads its part of this round, nothing newer.
    coord.set_restore_round(restore.to_wire() if restore is not None else None)
    return record, rollback_point(restore, spec.data.batch_size)


def publish_resumed_generation(coord: Coordination, actions: Sequence[object]) -> None:
    """A job resumed after a suspension runs one generation up (the core's ``_resumed``): published before its
    replicas start, so a pytorch job's agents form a new world instead of rejoining the one they left (whose
    rendezvous, fault reports and resume records belong to the old generation)."""
    resumed = [a.generation for a in actions if isinstance(a, CreateReplica) and a.reason is CreateReason.RESUME]
    if resumed and coord.generation() < max(resumed):
        coord.set_generation(max(resumed))
