"""Every recovery decision beyond "which replicas": the effective mode, the failure record, the
full-recovery rollback point and the tuning inputs. Pure; both shells call these and nothing else
decides them, so a manifest recovers the same way locally and on a cluster."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from trainingjob_operator.api.spec import RecoveryMode, Role, TrainingJobSpec, Workload
from trainingjob_operator.core.costs import Trace, save_costs, write_slowdown, write_windows
from trainingjob_operator.reconcile import CreateReason, CreateReplica, RecordFailure
from trainingjob_operator.tuning import FailureObservation, Measurements, TuningInputs


def resolve_mode(requested: RecoveryMode, planned: str | None) -> RecoveryMode:
    """partial or full: ``auto`` follows the benefit test's choice (partial until it has run)."""
    if requested is not RecoveryMode.AUTO:
        return requested
    return RecoveryMode(planned) if planned in (RecoveryMode.PARTIAL, RecoveryMode.FULL) else RecoveryMode.PARTIAL


def effective_mode(spec: TrainingJobSpec, planned: str | None) -> RecoveryMode:
    """The mode the reconcile core applies. A pytorch workload's interval plan always says full (every rank
    rolls back to the checkpoint), which is not a pod policy: its pods follow the spec (auto: partial, only the
    failed pod replaced and the survivors restarted in place)."""
    return resolve_mode(spec.recovery.mode, None if spec.workload is Workload.PYTORCH else planned)


@dataclass(frozen=True)
class FailureRecord:
    """One entry of the job's failure log (the Redis stream both shells write; PLS reads ``samples``)."""

    role: str
    rank: int
    reason: str
    time: float  # epoch seconds, when the failure was detected
    exit_code: int | None
    instance: str  # pod UID or process id of the failed incarnation
    generation: int
    mode: str  # the recovery mode applied: partial or full
    samples: int  # samples all trainers had trained when it was detected: the PLS reference point
    replica: str  # pod name on Kubernetes, "<role>-<rank>" locally

    def to_stream(self) -> dict[str, Any]:
        fields = asdict(self)
        fields["pod"] = fields.pop("replica")
        return fields


def failure_record(action: RecordFailure, *, samples: int, replica: str) -> FailureRecord:
    f = action.failure
    return FailureRecord(role=f.id.role.value, rank=f.id.rank, reason=str(f.reason), time=f.time,
                         exit_code=f.exit_code, instance=f.instance, generation=action.generation,
                         mode=str(action.mode), samples=samples, replica=replica)


@dataclass(frozen=True)
class RollbackPoint:
    """Where every trainer resumes after a full recovery: the checkpoint's progress, in equal shares."""

    cursor: int  # batches per trainer
    samples: int  # samples per trainer


@dataclass(frozen=True)
class RestoreRound:
    """A full recovery's consistent cut: the round every member restores, and the checkpoint each loads."""

    round: int
    cursor: int  # every trainer paused before this batch of its shard when the round was saved
    ids: Mapping[str, str]  # member (embedding-server-0, sync-server-0) -> checkpoint id

    def to_wire(self) -> dict[str, Any]:
        return {"round": self.round, "cursor": self.cursor, "ids": dict(self.ids)}


def round_members(spec: TrainingJobSpec) -> list[str]:
    """Who saves a part of every checkpoint round: each embedding-server shard and the dense copy."""
    return [f"{Role.EMBEDDING_SERVER.value}-{r}" for r in range(spec.replicas.embedding_server.replicas)] + \
        [f"{Role.SYNC_SERVER.value}-0"]


def consistent_round(saved: Mapping[int, Mapping[str, Mapping[str, Any]]],
                     members: Sequence[str]) -> RestoreRound | None:
    """The newest round every member saved: restoring it everywhere is a consistent cut, because every
    trainer was paused at the same cursor with all its updates applied while the round was snapshotted.
    None when no round is complete (a full recovery then starts over)."""
    for round_id in sorted(saved, reverse=True):
        parts = saved[round_id]
        if all(m in parts for m in members):
            cursors = {int(parts[m]["cursor"]) for m in members}
            if len(cursors) == 1:
                return RestoreRound(round_id, cursors.pop(), {m: str(parts[m]["id"]) for m in members})
    return None


def rollback_point(restore: RestoreRound | None, batch_size: int) -> RollbackPoint:
    """Where every trainer resumes after a full recovery: the restored round's cursor (start over without one)."""
    if restore is None:
        return RollbackPoint(0, 0)
    return RollbackPoint(restore.cursor, restore.cursor * batch_size)


def trainer_rollbacks(actions: Sequence[object], mode: RecoveryMode,
                      point: RollbackPoint | None) -> dict[int, RollbackPoint]:
    """The trainer cursors to set before these creates run: full recovery rolls every replaced trainer
    back to ``point``; partial recovery leaves each replacement its own cursor."""
    if mode is not RecoveryMode.FULL or point is None:
        return {}
    return {a.id.rank: point for a in actions
            if isinstance(a, CreateReplica) and a.reason is CreateReason.REPLACEMENT and a.id.role is Role.TRAINER}


def failure_observations(failure_log: Sequence[Mapping[str, Any]], started: float) -> list[FailureObservation]:
    """The failure log's entries as the tuner counts them (seconds since the job started)."""
    return [FailureObservation(role=str(f["role"]), rank=int(f["rank"]), time_s=max(0.0, float(f["time"]) - started))
            for f in failure_log if {"role", "rank", "time"} <= f.keys()]


def measurements(costs: Mapping[str, Sequence[float]], samples_per_second: float | None,
                 checkpoint_log: Sequence[Mapping[str, Any]] = (),
                 traces: Mapping[int, Trace] | None = None) -> Measurements:
    """The tuner's cost inputs: medians of each measured cost (robust to one slow save), with a save's cost
    the training time it loses (``core.costs``: stall + write x the throughput slowdown while it runs), and
    the share of updates partial saves left out (the checkpoint log's ``uncovered``)."""
    def median(name: str) -> float | None:
        values = costs.get(name) or ()
        return statistics.median(values) if values else None

    saves = save_costs(costs, write_slowdown(traces or {}, write_windows(checkpoint_log)))
    full = saves["full"]
    left_out = [float(e["uncovered"]) for e in checkpoint_log
                if e.get("kind") in ("mfu", "ssu") and isinstance(e.get("uncovered"), int | float)]
    return Measurements(
        o_save_s=full.seconds, o_load_s=median("o_load"), o_res_s=median("o_res"),
        samples_per_second=samples_per_second, o_save_partial_s=saves["partial"].seconds,
        save_duration_s=None if full.stall_s is None else full.stall_s + (full.write_s or 0.0),
        uncovered=statistics.median(left_out) if left_out else None,
        save_stall_s=full.stall_s, save_write_s=full.write_s, write_slowdown=full.slowdown)


def tuning_inputs(spec: TrainingJobSpec, *, costs: Mapping[str, Sequence[float]],
                  failure_log: Sequence[Mapping[str, Any]], started: float, now: float, lost_samples: float,
                  samples: int, samples_per_second: float | None, checkpoint_log: Sequence[Mapping[str, Any]] = (),
                  traces: Mapping[int, Trace] | None = None) -> TuningInputs:
    """Everything the interval tuner needs, from what the failure log and the cost lists hold. The measured
    PLS is a portion of the job's samples (at least its planned ones): lost samples over the samples trained
    so far would make two early failures look like a spent budget and flip ``auto`` to full recovery."""
    failures = failure_observations(failure_log, started)
    planned = max(samples, spec.data.planned_samples)
    return TuningInputs.from_spec(
        spec, measurements=measurements(costs, samples_per_second, checkpoint_log, traces), failures=failures,
        observed_seconds=max(0.0, now - started), measured_pls=lost_samples / planned if planned > 0 else None)
