"""The interval tuner's shell, shared by the operator and the local supervisor: read the measured
costs and the failure log from Redis, plan (pure: ``core.recovery`` and ``tuning``), publish the
interval and the effective recovery mode for the replicas."""

from __future__ import annotations

import statistics

from trainingjob_operator import tuning
from trainingjob_operator.api.spec import TrainingJobSpec, Workload
from trainingjob_operator.coordination import Coordination
from trainingjob_operator.core import accounting
from trainingjob_operator.core.recovery import failure_observations, resolve_mode, tuning_inputs

COSTS = ("stall_full", "write_full", "stall_partial", "write_partial", "o_load", "o_res")


def lost_samples(coord: Coordination, spec: TrainingJobSpec) -> float:
    """Sample-equivalents lost so far (PLS's numerator), from the replacements' recovery records."""
    shards = spec.replicas.embedding_server.replicas
    return accounting.lost_samples(accounting.job_spans(coord.shard_recoveries(shards)), shards)


def plan_interval(coord: Coordination, spec: TrainingJobSpec, started: float, now: float,
                  samples_per_second: float | None = None) -> tuning.IntervalDecision:
    if spec.workload is Workload.PYTORCH:
        return plan_pytorch_interval(coord, spec, started, now)
    trainers = spec.replicas.trainer.replicas
    inputs = tuning_inputs(spec, costs={name: coord.costs(name) for name in COSTS}, failure_log=coord.failures(),
                           started=started, now=now, lost_samples=lost_samples(coord, spec),
                           samples=coord.total_samples(trainers), samples_per_second=samples_per_second,
                           checkpoint_log=coord.checkpoints(), traces=coord.throughput_traces(trainers))
    decision = tuning.plan(inputs)
    if coord.interval() != decision.interval_s:
        coord.set_interval(decision.interval_s)
    mode = resolve_mode(spec.recovery.mode, decision.mode_chosen).value
    if coord.recovery_mode() != mode:
        coord.set_recovery_mode(mode)
    return decision


def plan_pytorch_interval(coord: Coordination, spec: TrainingJobSpec, started: float,
                          now: float) -> tuning.IntervalDecision:
    """A pytorch workload's interval (``tuning.plan_pytorch``) from the saves its rank 0 measured and the failure
    log; the recovery mode is not published (its workers never re-shard: a replaced pod's peers restart in place)."""
    def median(name: str) -> float | None:
        values = coord.costs(name)
        return statistics.median(values) if values else None

    checkpoint = spec.recovery.checkpoint
    decision = tuning.plan_pytorch(
        workers=spec.replicas.worker.replicas, mtbf_prior_hours_per_worker=spec.recovery.mtbf_prior_hours,
        failures=failure_observations(coord.failures(), started), observed_seconds=max(0.0, now - started),
        o_save_s=median("pt_save"), o_load_s=median("pt_load"), min_interval_s=checkpoint.min_interval_seconds,
        max_interval_s=checkpoint.max_interval_seconds, initial_interval_s=checkpoint.initial_interval_seconds,
        fixed_interval_s=checkpoint.interval_seconds)
    if coord.interval() != decision.interval_s:
        coord.set_interval(decision.interval_s)
    return decision
