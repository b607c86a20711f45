"""The TrainingJob's status as the operator writes it, and the core's memory inside it. Pure.

``status.coordinator`` holds the reconcile core's ``JobMemory`` (``memory_codec``; the conditions
live in ``status.conditions``), so a restarted operator resumes where the last one stopped
instead of recreating pods. Status is written as a JSON merge patch (RFC 7386: the only patch
type custom resources accept), computed by ``merge_patch`` against what was written last.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainingjob_operator.api.loading import ManifestError
from trainingjob_operator.api.status import (
    Condition,
    FailureRecord,
    Phase,
    ProgressStatus,
    RecoveryStatus,
    RoleStandbyStatus,
    SaveCostStatus,
    TrainingJobStatus,
)
from trainingjob_operator.coordination import waiting_for
from trainingjob_operator.memory_codec import COORDINATOR_KEY, memory_to_dict
from trainingjob_operator.reconcile import Decision, iso
from trainingjob_operator.tuning import Measurements

# Top-level status keys this operator owns; anything else under status is left alone.
OWNED_KEYS = frozenset({"phase", "conditions", "replicas", "progress", "recovery", "standbys", "startTime",
                        "completionTime", "observedGeneration", COORDINATOR_KEY})


# --- status ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecoveryFacts:
    """What the shell knows beyond the core's memory (Redis, tuning), for status.recovery."""

    mode: str | None = None
    interval_s: float | None = None
    pls: float | None = None
    last_checkpoint: str | None = None
    interval_reason: str | None = None
    save_cost: SaveCostStatus | None = None


def save_cost_status(m: Measurements) -> SaveCostStatus | None:
    """The tuner's o_save and what it is made of (``core.costs``), rounded for display."""
    if m.save_stall_s is None:
        return None

    def r(value: float | None) -> float | None:
        return None if value is None else round(value, 4)

    return SaveCostStatus(stall_seconds=r(m.save_stall_s), write_seconds=r(m.save_write_s),
                          write_slowdown=r(m.write_slowdown), seconds=r(m.o_save_s))


def render_status(
    decision: Decision,
    *,
    progress: ProgressStatus,
    recovery: RecoveryFacts,
    observed_generation: int | None,
    standbys: Mapping[str, tuple[int, int, int]] | None = None,
) -> dict[str, Any]:
    """The whole status the operator owns, in wire form (camelCase, no nulls). ``standbys``: per role, (desired,
    ready, stuck) warm standby pods (``core.standby.standby_counts``)."""
    m = decision.memory
    last = m.last_failure
    status = TrainingJobStatus(
        phase=m.phase,
        conditions=list(m.conditions),
        replicas=decision.replicas,
        progress=progress,
        recovery=RecoveryStatus(
            mode=recovery.mode,
            generation=m.generation,
            failures=m.failures,
            last_failure=None if last is None else FailureRecord(
                role=last.id.role.value, rank=last.id.rank, reason=last.reason, time=iso(last.time)),
            interval_seconds=recovery.interval_s,
            interval_reason=recovery.interval_reason,
            save_cost=recovery.save_cost,
            pls=recovery.pls,
            last_checkpoint=recovery.last_checkpoint,
        ),
        standbys={role: RoleStandbyStatus(desired=d, ready=r, stuck=k) for role, (d, r, k) in standbys.items()}
        if standbys else None,
        start_time=iso(m.start_time) if m.start_time is not None else None,
        completion_time=iso(m.completion_time) if m.completion_time is not None else None,
        observed_generation=observed_generation,
    )
    wire = status.to_wire()
    wire[COORDINATOR_KEY] = memory_to_dict(m)
    return wire


def invalid_spec_status(error: ManifestError, now: float) -> dict[str, Any]:
    """Failed, with a condition naming the offending field (the error's one-line text)."""
    condition = Condition(type="Failed", status="True", reason="InvalidSpec", message=str(error),
                          last_transition_time=iso(now))
    return {"phase": Phase.FAILED.value, "conditions": [condition.to_wire()]}


def summarize_progress(
    progress: Mapping[int, Any], results: Mapping[int, Mapping[str, Any]], target_samples: int,
    curve_auc: float | None = None,
) -> ProgressStatus:
    """Trainer progress (Coordination.Progress per rank) and results -> status.progress. The AUC is the final
    evaluation's once trainers wrote one, else the learning curve's last point (``curve_auc``): a job that
    fails keeps the last AUC it measured."""
    rates = [p.samples_per_second for p in progress.values() if p.samples_per_second]
    losses = [p.loss for p in progress.values() if p.loss is not None]
    aucs = [float(r["auc"]) for r in results.values() if isinstance(r.get("auc"), int | float)]
    return ProgressStatus(
        samples=sum(int(p.samples) for p in progress.values()),
        target_samples=target_samples,
        samples_per_second=round(sum(rates), 3) if rates else None,
        loss=round(sum(losses) / len(losses), 6) if losses else None,
        auc=round(sum(aucs) / len(aucs), 6) if aucs else (round(curve_auc, 6) if curve_auc is not None else None),
        waiting_for=waiting_for(progress.values()) or None,
    )


def summarize_steps(steps: Any, result: Mapping[str, Any] | None) -> ProgressStatus:
    """A pytorch workload's progress (Coordination.StepProgress of its rank 0) and result -> status.progress:
    samples count tokens."""
    if steps is None:
        return ProgressStatus(result=dict(result) if result else None)
    return ProgressStatus(
        samples=int(steps.tokens), target_samples=0,
        samples_per_second=round(steps.tokens_per_second, 3) if steps.tokens_per_second else None,
        loss=round(steps.loss, 6) if steps.loss is not None else None, step=int(steps.step),
        total_steps=steps.total_steps, result=dict(result) if result else None)


# --- merge patches -----------------------------------------------------------------------------


def merge_patch(
    old: Mapping[str, Any], new: Mapping[str, Any], *, owned: frozenset[str] | None = None
) -> dict[str, Any]:
    """The RFC 7386 merge patch that turns ``old`` into ``new``; empty when they are equal.

    Keys of ``old`` missing from ``new`` are removed (``None``) only when ``owned`` is None or
    names them, so keys written by someone else survive.
    """
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        if owned is None or key in owned:
            patch[key] = None
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            sub = merge_patch(before, value)
            if sub:
                patch[key] = sub
        elif key not in old or before != value:
            patch[key] = value
    return patch


def phase_event(before: Phase | None, after: Phase, decision: Decision) -> tuple[str, str, str] | None:
    """(type, reason, message) of the Event for a phase transition, or None for no event."""
    if before is after:
        return None
    conditions = {c.type: c for c in decision.memory.conditions}
    if after is Phase.RUNNING:
        desired = sum(r.desired for r in decision.replicas.values())
        if before is Phase.RECOVERING:
            return ("Normal", "Recovered",
                    f"all {desired} replicas running again (generation {decision.memory.generation})")
        return ("Normal", "Running", f"all {desired} replicas running")
    if after is Phase.SUSPENDED:
        suspended = conditions.get("Suspended")
        return ("Normal", "Suspended", suspended.message if suspended else "suspended")
    if before is Phase.SUSPENDED:
        return ("Normal", "Resumed", "replicas recreated; each continues where it stopped")
    if after is Phase.SUCCEEDED:
        return ("Normal", "Succeeded", conditions["Succeeded"].message if "Succeeded" in conditions else "done")
    if after is Phase.FAILED:
        failed = conditions.get("Failed")
        return ("Warning", failed.reason if failed else "Failed", failed.message if failed else "job failed")
    return None
