"""Many runs: every mode under the tuner and at a grid of fixed intervals, over seeds; and their statistics.

A grid point is the same job with ``recovery.checkpoint.intervalSeconds`` fixed (the product then uses it
as is, unclamped), so the grid shows what the tuner's choice is worth against every other interval, on
the same failures (each seed's failure times do not depend on the interval, ``failures.py``).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from concurrent import futures

from trainingjob_operator.api.spec import TrainingJobSpec
from trainingjob_operator.simulate.config import Costs, FailureSpec, SimConfig, build_config
from trainingjob_operator.simulate.engine import RunResult, Simulation, simulate
from trainingjob_operator.simulate.quality import AUC_PER_PLS, expected_auc_change


@dataclasses.dataclass(frozen=True)
class Scenario:
    """What ``trainingjob simulate`` was asked: the scaled job, the modes, costs, failures, seeds, grid."""

    base: TrainingJobSpec
    modes: tuple[str, ...]
    costs: Costs
    failures: FailureSpec
    days: float
    seeds: int = 3
    samples_per_second: float | None = None
    prior_hours: float | None = None
    grid: int = 9  # fixed intervals per mode; 0: no sweep
    grid_span: float = 4.0  # the grid runs from the tuner's interval / span to x span
    replan_tolerance: float = 0.01
    first_seed: int = 0

    def config(self, mode: str, seed: int, fixed_interval_s: float | None = None, timeline: bool = True) -> SimConfig:
        return build_config(self.base, mode, costs=self.costs, failures=self.failures, days=self.days, seed=seed,
                            samples_per_second=self.samples_per_second, prior_hours=self.prior_hours,
                            fixed_interval_s=fixed_interval_s, replan_tolerance=self.replan_tolerance,
                            timeline=timeline)

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.seeds))


def planned_interval(config: SimConfig) -> tuple[float, str]:
    """The interval and effective mode the tuner picks before anything has failed (its prior)."""
    sim = Simulation(config)
    sim._replan(0.0, force=True)
    return sim.interval, sim.mode


def grid_intervals(center: float, points: int, span: float) -> list[float]:
    """``points`` intervals spaced evenly in log from ``center / span`` to ``center * span``."""
    if points <= 0:
        return []
    if points == 1:
        return [center]
    lo, hi = math.log(center / span), math.log(center * span)
    return [math.exp(lo + (hi - lo) * i / (points - 1)) for i in range(points)]


def tasks(scenario: Scenario, centers: dict[str, float] | None = None) -> list[SimConfig]:
    """Every run: per mode, the tuner's run and each grid interval, for every seed. Timelines are kept for
    the tuner's runs only (the plots draw the first seed's)."""
    out = []
    for mode in scenario.modes:
        for seed in scenario.seed_list:
            out.append(scenario.config(mode, seed))
        center = (centers or {}).get(mode) or planned_interval(scenario.config(mode, scenario.first_seed))[0]
        for interval in grid_intervals(center, scenario.grid, scenario.grid_span):
            for seed in scenario.seed_list:
                out.append(scenario.config(mode, seed, interval, timeline=False))
    return out


def run_all(configs: Sequence[SimConfig], jobs: int = 1,
            on_done: Callable[[RunResult], None] | None = None) -> list[RunResult]:
    """Run every config (``jobs`` processes); results in the configs' order."""
    if jobs <= 1:
        results = []
        for config in configs:
            result = simulate(config)
            results.append(result)
            if on_done is not None:
                on_done(result)
        return results
    with futures.ProcessPoolExecutor(max_workers=jobs) as pool:
        pending = {pool.submit(simulate, config): i for i, config in enumerate(configs)}
        done: dict[int, RunResult] = {}
        for future in futures.as_completed(pending):
            result = future.result()
            done[pending[future]] = result
            if on_done is not None:
                on_done(result)
    return [done[i] for i in range(len(configs))]


# -- statistics ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Stat:
    mean: float
    ci95: float  # half-width of a normal 95 % interval of the mean (0 with one run)
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        values = [v for v in values if math.isfinite(v)]
        if not values:
            return cls(math.nan, math.nan, 0)
        mean = statistics.fmean(values)
        ci = 1.96 * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
        return cls(mean, ci, len(values))


@dataclasses.dataclass(frozen=True)
class ModeSummary:
    """The tuner's runs of one mode, over seeds."""

    mode: str
    runs: int
    statuses: dict[str, int]
    interval_s: Stat  # time-weighted mean interval of each run
    overhead: Stat
    checkpoint_overhead: Stat
    expected_overhead: float | None
    pls: Stat
    expected_pls: float | None
    auc_change: float
    failures: Stat
    replacements: Stat
    shard_saves: Stat
    save_events: Stat
    full_recoveries: Stat
    breakdown: dict[str, float]  # mean seconds of save, lost, res, load, degraded, as fractions of useful time
    full_share: Stat
    cpu_s: Stat


@dataclasses.dataclass(frozen=True)
class GridPoint:
    mode: str
    interval_s: float
    overhead: Stat
    pls: Stat
    expected_overhead: float | None
    expected_pls: float | None
    statuses: dict[str, int]


def summarize_mode(mode: str, runs: Sequence[RunResult], auc_slope: float = AUC_PER_PLS) -> ModeSummary:
    useful = runs[0].useful_s if runs else 1.0
    pls = Stat.of([r.pls for r in runs])
    return ModeSummary(
        mode=mode, runs=len(runs), statuses=_count(r.status for r in runs),
        interval_s=Stat.of([r.interval_mean_s for r in runs]), overhead=Stat.of([r.overhead for r in runs]),
        checkpoint_overhead=Stat.of([r.checkpoint_overhead for r in runs]),
        expected_overhead=runs[0].expected_overhead if runs else None, pls=pls,
        expected_pls=runs[0].expected_pls if runs else None, auc_change=expected_auc_change(pls.mean, auc_slope),
        failures=Stat.of([r.failures for r in runs]), replacements=Stat.of([r.replacements for r in runs]),
        shard_saves=Stat.of([sum(r.shard_saves.values()) for r in runs]),
        save_events=Stat.of([r.save_events for r in runs]),
        full_recoveries=Stat.of([r.full_recoveries for r in runs]),
        breakdown={name: statistics.fmean(getattr(r, f"{name}_s") for r in runs) / useful
                   for name in ("save", "lost", "res", "load", "degraded")} if runs else {},
        full_share=Stat.of([r.full_share for r in runs]), cpu_s=Stat.of([r.cpu_s for r in runs]))


def summarize_grid(results: Sequence[RunResult]) -> list[GridPoint]:
    by_point: dict[tuple[str, float], list[RunResult]] = {}
    for r in results:
        if r.fixed_interval_s is not None:
            by_point.setdefault((r.label, r.fixed_interval_s), []).append(r)
    return [GridPoint(mode, interval, Stat.of([r.overhead for r in runs]), Stat.of([r.pls for r in runs]),
                      runs[0].expected_overhead, runs[0].expected_pls, _count(r.status for r in runs))
            for (mode, interval), runs in sorted(by_point.items())]


def grid_optimum(points: Sequence[GridPoint], pls_target: float | None = None) -> GridPoint | None:
    """The grid point of least mean overhead (with ``pls_target``: among those whose mean PLS meets it)."""
    ok = [p for p in points if p.overhead.n > 0 and (pls_target is None or p.pls.mean <= pls_target)]
    return min(ok, key=lambda p: p.overhead.mean) if ok else None


def paired_gap(tuner: Sequence[RunResult], point: Sequence[RunResult]) -> Stat:
    """(tuner overhead - point overhead) / point overhead, seed by seed (same failures), as a Stat."""
    by_seed = {r.seed: r for r in point}
    gaps = [(r.overhead - by_seed[r.seed].overhead) / by_seed[r.seed].overhead for r in tuner
            if r.seed in by_seed and by_seed[r.seed].overhead > 0]
    return Stat.of(gaps)


def _count(values: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out
