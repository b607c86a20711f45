"""The interval tuner's shell, shared by the operator and the local supervisor: read the measured
costs and the failure log from Redis, plan (pure: ``core.recovery`` and ``tuning``), publish the
interval and the effective recovery mode for the replicas."""

from __future__ import annotations

from trainingjob_operator import tuning
from trainingjob_operator.api.spec import TrainingJobSpec
from trainingjob_operator.coordination import Coordination
from trainingjob_operator.core.recovery import resolve_mode, tuning_inputs

COSTS = ("o_save", "o_load", "o_res")


def plan_interval(coord: Coordination, spec: TrainingJobSpec, started: float, now: float,
                  samples_per_second: float | None = None) -> tuning.IntervalDecision:
    trainers = spec.replicas.trainer.replicas
    inputs = tuning_inputs(spec, costs={name: coord.costs(name) for name in COSTS}, failure_log=coord.failures(),
                           started=started, now=now, lost_samples=coord.lost_samples(),
                           samples=coord.total_samples(trainers), samples_per_second=samples_per_second)
    decision = tuning.plan(inputs)
    if coord.interval() != decision.interval_s:
        coord.set_interval(decision.interval_s)
    mode = resolve_mode(spec.recovery.mode, decision.mode_chosen).value
    if coord.recovery_mode() != mode:
        coord.set_recovery_mode(mode)
    return decision
