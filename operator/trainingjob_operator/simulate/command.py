"""``trainingjob simulate``: options in, table, plots and JSON out. Bad input raises SimulateInputError."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from trainingjob_operator.api.spec import Role, TrainingJob, Workload
from trainingjob_operator.simulate.config import (
    HOUR_S,
    FailureSpec,
    SimulateInputError,
    dense_equivalent,
    node_mtbf_s,
    parse_modes,
    parse_roles,
    scale_spec,
)
from trainingjob_operator.simulate.inputs import failure_log as read_failure_log
from trainingjob_operator.simulate.inputs import resolve_costs
from trainingjob_operator.simulate.quality import DEFAULT_CALIBRATION, Calibration
from trainingjob_operator.simulate.report import plot_curves, plot_timeline, render_table, to_json
from trainingjob_operator.simulate.sweep import (
    Scenario,
    planned_interval,
    run_all,
    summarize_grid,
    summarize_mode,
    tasks,
)


@dataclasses.dataclass(frozen=True)
class Options:
    nodes: int | None = None
    mtbf: float | None = None
    mtbf_per_node: float | None = None
    days: float = 30.0
    seeds: int = 3
    seed: int = 0
    failure_log: Path | None = None
    summary: Path | None = None
    o_save: float | None = None
    o_save_partial: float | None = None
    o_load: float | None = None
    o_res: float | None = None
    uncovered: float | None = None
    weibull_shape: float | None = None
    fail_roles: str | None = None
    modes: str | None = None
    grid: int = 7
    grid_span: float = 4.0
    jobs: int = 1
    prior_hours: float | None = None
    samples_per_second: float | None = None
    auc_slope: float | None = None
    out: Path | None = None
    plots: bool = True


def _positive_int(option: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise SimulateInputError(option, f"must be at least {minimum}, got {value}")


def _positive(option: str, value: float | None, unit: str = "") -> None:
    if value is not None and not (value > 0.0 and math.isfinite(value)):
        raise SimulateInputError(option, f"must be a positive number{unit}, got {value}")


def build_scenario(job: TrainingJob, opts: Options) -> tuple[Scenario, list[str]]:
    """Everything the runs need, validated; raises :class:`SimulateInputError` naming the bad option."""
    if opts.nodes is not None:
        _positive_int("--nodes", opts.nodes, 1)
    _positive("--days", opts.days, " of days")
    _positive_int("--seeds", opts.seeds, 1)
    _positive_int("--grid", opts.grid, 0)
    _positive_int("--jobs", opts.jobs, 1)
    _positive("--grid-span", opts.grid_span)
    if opts.grid_span <= 1.0:
        raise SimulateInputError("--grid-span", f"must be above 1 (a factor around the tuner's interval), "
                                                f"got {opts.grid_span}")
    _positive("--weibull-shape", opts.weibull_shape)
    _positive("--prior-hours", opts.prior_hours, " of hours")
    _positive("--samples-per-second", opts.samples_per_second)
    if opts.seed < 0:
        raise SimulateInputError("--seed", f"must not be negative, got {opts.seed}")
    if opts.failure_log is not None and (opts.mtbf is not None or opts.mtbf_per_node is not None):
        raise SimulateInputError("--failure-log", "replays a log: it excludes --mtbf and --mtbf-per-node")
    if opts.failure_log is not None and opts.weibull_shape is not None:
        raise SimulateInputError("--failure-log", "replays a log: it excludes --weibull-shape")
    dense = job.spec.workload is Workload.PYTORCH
    spec = dense_equivalent(job.spec, opts.nodes) if dense else scale_spec(job.spec, opts.nodes)
    scaled = job.model_copy(update={"spec": spec})
    roles = parse_roles(opts.fail_roles if opts.fail_roles is not None or not dense else Role.TRAINER.value)
    modes = parse_modes(opts.modes if opts.modes is not None or not dense else "full")
    if dense and modes != ("full",):
        raise SimulateInputError("--modes", "a pytorch workload recovers one way (every rank rolls back to the newest "
                                            "checkpoint): only full")
    costs, notes = resolve_costs(scaled, summary=opts.summary, o_save=opts.o_save, o_save_partial=opts.o_save_partial,
                                 o_load=opts.o_load, o_res=opts.o_res, uncovered=opts.uncovered)
    if opts.failure_log is not None:
        failures = FailureSpec(log=read_failure_log(opts.failure_log), roles=roles)
        prior = opts.prior_hours
        notes.append(f"failures replayed from {opts.failure_log} ({len(failures.log or ())} entries)")
    else:
        node_s = node_mtbf_s(spec, mtbf_hours=opts.mtbf, mtbf_per_node_hours=opts.mtbf_per_node, roles=roles)
        failures = FailureSpec(mtbf_node_s=node_s, roles=roles,
                               distribution="weibull" if opts.weibull_shape is not None else "exponential",
                               weibull_shape=opts.weibull_shape or 1.0)
        # The tuner's prior: what the user says, else the truth (a prior from the cluster's history).
        prior = opts.prior_hours if opts.prior_hours is not None else node_s / HOUR_S
        notes.append(f"node MTBF {node_s / HOUR_S:.6g} h ({failures.distribution}), failing roles "
                     f"{', '.join(roles)}")
    if dense:
        notes.insert(0, f"pytorch workload simulated as its dense equivalent: {spec.replicas.trainer.replicas} "
                        "workers as trainers in full recovery (every failure rolls every rank back), only they fail")
    scenario = Scenario(base=spec, modes=modes, costs=costs, failures=failures, days=opts.days, seeds=opts.seeds,
                        samples_per_second=opts.samples_per_second, prior_hours=prior, grid=opts.grid,
                        grid_span=opts.grid_span, first_seed=opts.seed)
    return scenario, notes


def run_simulation(job: TrainingJob, opts: Options, console: Console, err: Console) -> int:
    scenario, notes = build_scenario(job, opts)
    calibration = (DEFAULT_CALIBRATION if opts.auc_slope is None else
                   Calibration(opts.auc_slope, None, 0, "--auc-slope"))
    centers = {mode: planned_interval(scenario.config(mode, scenario.first_seed))[0] for mode in scenario.modes}
    configs = tasks(scenario, centers)
    spec = scenario.base
    err.print(f"{job.name}: {spec.replicas.trainer.replicas} trainers, {spec.replicas.embedding_server.replicas} "
              f"embedding servers, 1 sync server; {scenario.days:g} days; {len(configs)} runs "
              f"({len(scenario.modes)} modes x (tuner + {scenario.grid} intervals) x {scenario.seeds} seeds)",
              highlight=False, soft_wrap=True)
    for note in notes:
        err.print(f"  {note}", highlight=False, soft_wrap=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=err, transient=True) as progress:
        bar = progress.add_task("simulating", total=len(configs))
        results = run_all(configs, opts.jobs, on_done=lambda r: progress.update(
            bar, advance=1, description=f"simulating {r.label}"))
    summaries = [summarize_mode(mode, [r for r in results if r.label == mode and r.fixed_interval_s is None],
                                calibration.slope) for mode in scenario.modes]
    grid = summarize_grid(results)
    title = (f"{job.name}: {spec.replicas.trainer.replicas + spec.replicas.embedding_server.replicas + 1} nodes, "
             f"{scenario.days:g} days, {scenario.seeds} seeds")
    console.print(render_table(summaries, title))
    out = opts.out or Path("runs") / job.name / "simulate"
    out.mkdir(parents=True, exist_ok=True)
    data = to_json(scenario, summaries, grid, results, calibration, {"job": job.name, "notes": notes})
    (out / "simulate.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    written = [out / "simulate.json"]
    if opts.plots:
        try:
            if grid:
                written.append(plot_curves(out / "simulate_curves.png", scenario, summaries, grid, title))
            written.append(plot_timeline(out / "simulate_timeline.png",
                                         [r for r in results if r.timeline and r.seed == scenario.first_seed], title))
        except ImportError:
            err.print("plots skipped: matplotlib is not installed (pip install matplotlib)", highlight=False)
    for mode, c in data["tuner_vs_grid"].items():
        err.print(f"  {mode}: tuner {c['tuner_overhead'] * 100:.3f}% at {c['tuner_interval_s']:.0f} s, grid optimum "
                  f"{c['optimum_overhead'] * 100:.3f}% at {c['optimum_interval_s']:.0f} s "
                  f"(tuner/optimum - 1 = {c['tuner_over_optimum'] * 100:+.2f}%)", highlight=False, soft_wrap=True)
    err.print("wrote " + ", ".join(str(p) for p in written), highlight=False, soft_wrap=True)
    return 0
