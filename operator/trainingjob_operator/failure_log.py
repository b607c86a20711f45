"""Writing a failure, shared by the operator and the local supervisor: the generation first, then
the failure record (``core.recovery``) with the samples trained at that moment, and for a full
recovery the rollback point read from the shards' checkpoint pointers."""

from __future__ import annotations

from trainingjob_operator.api.spec import RecoveryMode, TrainingJobSpec
from trainingjob_operator.coordination import Coordination
from trainingjob_operator.core.recovery import FailureRecord, RollbackPoint, failure_record, rollback_point
from trainingjob_operator.reconcile import RecordFailure


def write_failure(coord: Coordination, spec: TrainingJobSpec, action: RecordFailure,
                  replica: str) -> tuple[FailureRecord, RollbackPoint | None]:
    """Log ``action`` in the job's failure stream; return the record and, in full mode, where trainers resume."""
    coord.set_generation(action.generation)
    record = failure_record(action, samples=coord.total_samples(spec.replicas.trainer.replicas), replica=replica)
    coord.log_failure(**record.to_stream())
    if action.mode != RecoveryMode.FULL:
        return record, None
    pointers = [coord.checkpoint_pointer(s) for s in range(spec.replicas.embedding_server.replicas)]
    point = rollback_point([p.get("progress") if p else None for p in pointers],
                           spec.replicas.trainer.replicas, spec.data.batch_size)
    return record, point
