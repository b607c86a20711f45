"""CPR bookkeeping for the local supervisor: injections, per-failure timings, interval re-planning,
and the full-recovery rollback point. Decisions are pure functions; the ``RecoveryTracker`` only
holds what was observed so the summary can report it."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from trainingjob_operator.api.spec import TrainingJobSpec
from trainingjob_operator.local.injection import Injection
from trainingjob_operator.tuning import FailureObservation, IntervalDecision, Measurements, TuningInputs, plan


@dataclass
class FailureRecord:
    role: str
    rank: int
    reason: str
    time_s: float  # since the job started
    exit_code: int | None
    generation: int
    mode: str
    failed_instance: str
    injected_at_s: float | None = None
    detected_after_s: float | None = None
    recovered_after_s: float | None = None  # replacement registered and heartbeating
    lost_samples: int | None = None
    restored: str | None = None  # what the replacement loaded (checkpoint id, fallbacks)
    samples_at_failure: int = 0
    rolled_back_samples: int = 0  # full recovery: samples trained again after the rollback

    @property
    def name(self) -> str:
        return f"{self.role}-{self.rank}"


@dataclass
class IntervalChange:
    time_s: float
    interval_s: float
    mode: str
    reason: str


def rollback_cursor(checkpoint_progress: list[int | None], trainers: int, batch_size: int) -> tuple[int, int]:
    """Full recovery: every trainer restarts from the oldest shard checkpoint's progress marker
    (total samples then). Trainers advance at about the same speed, so each rolls back to an equal
    share. Returns (cursor in batches per trainer, samples per trainer). No checkpoint: start over."""
    if not checkpoint_progress or any(p is None for p in checkpoint_progress):
        return 0, 0
    total = min(p for p in checkpoint_progress if p is not None)
    cursor = total // (trainers * batch_size)
    return cursor, cursor * batch_size


def measurements(o_save: list[float], o_load: list[float], o_res: list[float], sps: float | None) -> Measurements:
    def med(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    return Measurements(o_save_s=med(o_save), o_load_s=med(o_load), o_res_s=med(o_res), samples_per_second=sps)


def replan(spec: TrainingJobSpec, measured: Measurements, failures: list[FailureRecord], elapsed_s: float,
           lost_samples: int, samples: int) -> IntervalDecision:
    """CPR's re-plan (ARCHITECTURE.md §5): after every failure and save, from what was measured."""
    observations = [FailureObservation(f.role, f.rank, f.time_s) for f in failures]
    pls = lost_samples / samples if samples > 0 else None
    return plan(TuningInputs.from_spec(spec, measurements=measured, failures=observations,
                                       observed_seconds=elapsed_s, measured_pls=pls))


@dataclass
class RecoveryTracker:
    injections: list[Injection] = field(default_factory=list)
    injected: list[tuple[float, Injection]] = field(default_factory=list)  # (time since start, what)
    failures: list[FailureRecord] = field(default_factory=list)
    intervals: list[IntervalChange] = field(default_factory=list)

    def injection_for(self, name: str, detected_s: float) -> float | None:
        """The latest injection into this replica before its failure was detected."""
        times = [t for t, inj in self.injected if f"{inj.role}-{inj.rank}" == name and t <= detected_s]
        return max(times) if times else None

    def pending(self) -> list[FailureRecord]:
        return [f for f in self.failures if f.recovered_after_s is None]

    def note_interval(self, elapsed_s: float, decision: IntervalDecision) -> None:
        last = self.intervals[-1] if self.intervals else None
        if last is None or abs(last.interval_s - decision.interval_s) > 1e-6 or last.mode != decision.mode_chosen:
            self.intervals.append(IntervalChange(round(elapsed_s, 3), decision.interval_s, decision.mode_chosen,
                                                 decision.reason))

    def to_summary(self) -> dict[str, Any]:
        return {
            "injected": [{"time_s": round(t, 3), "role": i.role, "rank": i.rank, "signal": i.signal}
                         for t, i in self.injected],
            "interval_history": [vars(c) for c in self.intervals],
        }
