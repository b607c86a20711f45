"""CPR bookkeeping for the local supervisor's summary: injections, per-failure timings and the
interval history. It decides nothing (``core.recovery`` does); it holds what was observed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trainingjob_operator.local.injection import Injection
from trainingjob_operator.tuning import IntervalDecision


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


@dataclass
class RecoveryTracker:
    injections: list[Injection] = field(default_factory=list)
    injected: list[tuple[float, Injection]] = field(default_factory=list)  # (time since start, what)
    failures: list[FailureRecord] = field(default_factory=list)
    intervals: list[IntervalChange] = field(default_factory=list)
    last_decision: IntervalDecision | None = None

    def injection_for(self, name: str, detected_s: float) -> float | None:
        """The latest injection into this replica before its failure was detected."""
        times = [t for t, inj in self.injected if f"{inj.role}-{inj.rank}" == name and t <= detected_s]
        return max(times) if times else None

    def pending(self) -> list[FailureRecord]:
        return [f for f in self.failures if f.recovered_after_s is None]

    def note_interval(self, elapsed_s: float, decision: IntervalDecision) -> None:
        self.last_decision = decision
        last = self.intervals[-1] if self.intervals else None
        # A change of 1% or more (the exposure alone moves the plan a little at every re-plan: not news).
        if last is None or abs(last.interval_s - decision.interval_s) >= 0.01 * last.interval_s \
                or last.mode != decision.mode_chosen:
            self.intervals.append(IntervalChange(round(elapsed_s, 3), decision.interval_s, decision.mode_chosen,
                                                 decision.reason))

    def to_summary(self) -> dict[str, Any]:
        decision = self.last_decision
        m = decision.measurements if decision is not None else None
        return {
            "injected": [{"time_s": round(t, 3), "role": i.role, "rank": i.rank, "signal": i.signal}
                         for t, i in self.injected],
            "interval_history": [vars(c) for c in self.intervals],
            "interval": None if decision is None else {
                "seconds": round(decision.interval_s, 3), "mode": decision.mode_chosen, "reason": decision.reason,
                "expected_pls": round(decision.expected_pls, 6),
                "expected_overhead_fraction": round(decision.expected_overhead_fraction, 6),
                "floor_s": round(decision.floor_s, 3)},
            # What a full save costs training (the tuner's o_save) and what it is made of (core.costs).
            "save_cost": None if m is None else {
                "stall_s": m.save_stall_s, "write_s": m.save_write_s, "write_slowdown": m.write_slowdown,
                "o_save_s": m.o_save_s, "partial_o_save_s": m.o_save_partial_s, "uncovered": m.uncovered},
        }
