"""The simulator's targets (issue 11, "At 1,000 nodes, by simulation"), each with the numbers behind it.

Three targets, each writing ``benchmarks/results/simulate_<target>.json`` (and PNGs):

- ``worked-example``: PAPERS.md §1.6's parameters (o_save = o_load = 300 s, o_res = 600 s, 16 embedding
  servers, job MTBF 14 h and 30 h, PLS target 0.02, only embedding servers fail so T_fail_job = T_fail_emb
  as the example assumes). Full recovery at Young's interval and partial recovery at the PLS-bounded
  interval against tuning.py's closed forms; every mode under the tuner; MFU/SSU with their save costs and
  the partial/full overhead ratio beside CPR's 8.2-8.5% -> 0.53-0.68%; a grid of partial intervals for the
  PLS-constrained optimum.
- ``tuner-grid``: full recovery, job MTBF 2-100 h x save cost 0.1-600 s: the overhead at the tuner's
  interval against the best of a grid of fixed intervals, seed by seed on the same failures.
- ``scale``: 1,000 nodes (examples/dlrm-local.yaml scaled: 499 trainers, 500 embedding servers, 1 sync
  server) x 30 simulated days per mode and seed, timed, at CPR's job MTBF (14 h) and at a stress rate
  (node MTBF 1000 h: job MTBF 1 h); a cProfile of the stress run under full recovery.

Usage: python benchmarks/simulate_scale.py [--target worked-example|tuner-grid|scale|all] [--seeds K]
       [--jobs J] [--quick]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import pstats
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

from trainingjob_operator.api import load_manifest  # noqa: E402
from trainingjob_operator.api.spec import TrainingJobSpec  # noqa: E402
from trainingjob_operator.simulate import Costs, FailureSpec, RunResult, SimConfig, build_config, closed_form  # noqa: E402
from trainingjob_operator.simulate.config import HOUR_S, scale_spec  # noqa: E402
from trainingjob_operator.simulate.engine import Simulation  # noqa: E402
from trainingjob_operator.simulate.report import plot_curves, plot_timeline  # noqa: E402
from trainingjob_operator.simulate.sweep import (  # noqa: E402
    Scenario,
    Stat,
    paired_gap,
    run_all,
    summarize_grid,
    summarize_mode,
)
from trainingjob_operator.tuning import pls_bounded_interval, young_interval  # noqa: E402

console = Console(width=160)

PAPER = Costs(o_save_s=300.0, o_load_s=300.0, o_res_s=600.0, source="PAPERS.md §1.6 worked example")
N_EMB = 16
PLS_TARGET = 0.02
HOT_FRACTION = 0.25
# MFU/SSU (PAPERS.md §1.7): a partial save writes a quarter of the rows and costs about a quarter of a full
# one. The share of updates it leaves out is not measured in any stored run: MFU's is the access share
# outside the hottest quarter of a Zipf(1.1) table of 100k rows (the synthetic data's skew), 6.4%; SSU
# samples instead of ranking, assumed to leave out twice that.
UNCOVERED = {"partial+MFU": 0.064, "partial+SSU": 0.128}
CPR_FULL = (0.082, 0.085)
CPR_PARTIAL = (0.0053, 0.0068)


def _spec(n_emb: int, n_trainers: int, **recovery: Any) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate({
        "replicas": {"trainer": {"replicas": n_trainers}, "embeddingServer": {"replicas": n_emb}},
        "recovery": {"plsTarget": PLS_TARGET, "checkpoint": {"maxIntervalSeconds": 1e7, "minIntervalSeconds": 1.0,
                                                             "hotFraction": HOT_FRACTION,
                                                             "sampleFraction": HOT_FRACTION}, **recovery},
    })


def _run(configs: Sequence[SimConfig], jobs: int, what: str) -> list[RunResult]:
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        bar = progress.add_task(what, total=len(configs))
        return run_all(configs, jobs, on_done=lambda r: progress.update(bar, advance=1,
                                                                          description=f"{what}: {r.label}"))


def _pct(stat: Stat) -> str:
    return f"{stat.mean * 100:.3f} ± {stat.ci95 * 100:.3f}"


def _write(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"simulate_{name}.json"
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    return path


def _machine() -> dict[str, Any]:
    import os
    import platform

    return {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}


# -- worked example ----------------------------------------------------------------------------------------


def worked_example(args: argparse.Namespace) -> dict[str, Any]:
    spec = _spec(N_EMB, N_EMB)
    seeds = list(range(args.seeds))
    out: dict[str, Any] = {"costs": vars(PAPER), "n_emb": N_EMB, "n_trainers": N_EMB, "pls_target": PLS_TARGET,
                           "days": args.days, "seeds": seeds, "failing_roles": ["embedding-server"],
                           "hot_fraction": HOT_FRACTION, "uncovered": UNCOVERED, "mtbf": {}}
    for mtbf_h in (14.0, 30.0):
        t_fail = mtbf_h * HOUR_S
        failures = FailureSpec(mtbf_node_s=t_fail * N_EMB, roles=("embedding-server",))
        young = young_interval(PAPER.o_save_s, t_fail)
        bound = pls_bounded_interval(PLS_TARGET, N_EMB, t_fail)

        def config(mode: str, seed: int, fixed: float | None = None, label: str | None = None,
                   costs: Costs = PAPER, failures: FailureSpec = failures, timeline: bool = False,
                   t_fail: float = t_fail) -> SimConfig:
            return build_config(spec, mode, label=label, costs=costs, failures=failures, days=args.days, seed=seed,
                                prior_hours=t_fail * N_EMB / HOUR_S, fixed_interval_s=fixed, timeline=timeline)

        partial_costs = {m: Costs(PAPER.o_save_s, PAPER.o_load_s, PAPER.o_res_s, HOT_FRACTION * PAPER.o_save_s, u)
                         for m, u in UNCOVERED.items()}
        rows: list[tuple[str, str, float | None, Costs]] = [
            ("full @ Young", "full", young, PAPER), ("partial @ PLS bound", "partial", bound, PAPER),
            ("full", "full", None, PAPER), ("partial", "partial", None, PAPER),
            ("partial+MFU", "partial+MFU", None, partial_costs["partial+MFU"]),
            ("partial+SSU", "partial+SSU", None, partial_costs["partial+SSU"]), ("auto", "auto", None, PAPER)]
        factors = (0.5, 0.7, 0.85, 1.0, 1.15, 1.4, 2.0)
        configs = [config(mode, s, fixed, label, costs, timeline=fixed is None and s == 0)
                   for label, mode, fixed, costs in rows for s in seeds]
        configs += [config("partial", s, bound * f) for f in factors for s in seeds]
        configs += [config("full", s, young * f) for f in factors for s in seeds]
        results = _run(configs, args.jobs, f"worked example {mtbf_h:g} h")
        table = Table(title=f"PAPERS.md §1.6 worked example, job MTBF {mtbf_h:g} h ({len(seeds)} seeds x "
                            f"{args.days:g} days)", title_justify="left")
        for col in ("run", "interval", "overhead % (sim)", "closed form %", "sim/closed - 1", "ckpt-related %",
                    "PLS % (sim)", "PLS % (closed)", "failures", "full share"):
            table.add_column(col, justify="left" if col == "run" else "right")
        entry: dict[str, Any] = {"young_interval_s": young, "pls_bounded_interval_s": bound, "rows": {}}
        for label, mode, fixed, _costs in rows:
            runs = [r for r in results if r.label == label and (r.fixed_interval_s is None) == (fixed is None)]
            interval = statistics.fmean(r.interval_mean_s for r in runs)
            closed = [closed_form(configs[0], r.interval_mean_s, "full" if mode == "full" else "partial",
                                  _schedule_of(r)) for r in runs]
            expected = statistics.fmean(c[0] for c in closed if c[0] is not None)
            expected_pls = statistics.fmean(c[1] or 0.0 for c in closed)
            overhead, pls = Stat.of([r.overhead for r in runs]), Stat.of([r.pls for r in runs])
            ckpt = Stat.of([r.checkpoint_overhead for r in runs])
            full_share = statistics.fmean(r.full_share for r in runs)
            second_order = _second_order(r_mode=mode, interval=interval, t_fail=t_fail, costs=_costs, runs=runs)
            entry["rows"][label] = {
                "mode": mode, "interval_s": interval, "overhead": vars(overhead), "closed_form": expected,
                "sim_over_closed": overhead.mean / expected - 1.0, "second_order_closed_form": second_order,
                "checkpoint_overhead": vars(ckpt), "pls": vars(pls), "closed_form_pls": expected_pls,
                "failures": statistics.fmean(r.failures for r in runs), "full_share": full_share,
                "breakdown": {k: statistics.fmean(getattr(r, f"{k}_s") for r in runs) / runs[0].useful_s
                              for k in ("save", "lost", "res", "load", "degraded")},
                "full_recoveries": statistics.fmean(r.full_recoveries for r in runs)}
            table.add_row(label, f"{interval:.0f} s", _pct(overhead), f"{expected * 100:.3f}",
                          f"{(overhead.mean / expected - 1.0) * 100:+.1f}%", _pct(ckpt), f"{pls.mean * 100:.3f}",
                          f"{expected_pls * 100:.3f}", f"{statistics.fmean(r.failures for r in runs):.0f}",
                          f"{full_share * 100:.0f}%")
        console.print(table)
        full = entry["rows"]["full"]
        ratios = {}
        for m in ("partial", "partial+MFU", "partial+SSU"):
            row = entry["rows"][m]
            ratios[m] = {"total": row["overhead"]["mean"] / full["overhead"]["mean"],
                         "checkpoint_related": row["checkpoint_overhead"]["mean"] / full["checkpoint_overhead"]["mean"]}
            console.print(f"  {m}/full: total {ratios[m]['total']:.3f}, checkpoint-related (save+load+lost) "
                          f"{ratios[m]['checkpoint_related']:.3f}  (CPR: {CPR_PARTIAL[0] / CPR_FULL[1]:.3f}-"
                          f"{CPR_PARTIAL[1] / CPR_FULL[0]:.3f})", highlight=False)
        entry["ratios"] = ratios
        points = summarize_grid([r for r in results if r.fixed_interval_s is not None and r.label == "partial"])
        feasible = [p for p in points if p.pls.mean <= PLS_TARGET]
        best = min(feasible, key=lambda p: p.overhead.mean) if feasible else None
        tuner = entry["rows"]["partial"]
        entry["partial_grid"] = [{"interval_s": p.interval_s, "overhead": vars(p.overhead), "pls": vars(p.pls)}
                                 for p in points]
        if best is not None:
            entry["partial_tuner_vs_constrained_optimum"] = {
                "optimum_interval_s": best.interval_s, "optimum_overhead": best.overhead.mean,
                "optimum_pls": best.pls.mean, "tuner_overhead": tuner["overhead"]["mean"],
                "tuner_pls": tuner["pls"]["mean"], "tuner_over_optimum": tuner["overhead"]["mean"] /
                best.overhead.mean - 1.0}
            console.print(f"  partial: tuner {tuner['overhead']['mean'] * 100:.3f}% (PLS "
                          f"{tuner['pls']['mean'] * 100:.2f}%) vs best grid interval meeting PLS<={PLS_TARGET:g}: "
                          f"{best.overhead.mean * 100:.3f}% at {best.interval_s:.0f} s "
                          f"(PLS {best.pls.mean * 100:.2f}%)", highlight=False)
        full_points = summarize_grid([r for r in results if r.fixed_interval_s is not None and r.label == "full"])
        best_full = min(full_points, key=lambda p: p.overhead.mean)
        full_tuner = [r for r in results if r.label == "full" and r.fixed_interval_s is None]
        best_runs = [r for r in results if r.label == "full" and r.fixed_interval_s == best_full.interval_s]
        entry["full_grid"] = [{"interval_s": p.interval_s, "overhead": vars(p.overhead)} for p in full_points]
        entry["full_tuner_vs_optimum"] = {
            "optimum_interval_s": best_full.interval_s, "optimum_overhead": best_full.overhead.mean,
            "tuner_overhead": entry["rows"]["full"]["overhead"]["mean"],
            "tuner_over_optimum": entry["rows"]["full"]["overhead"]["mean"] / best_full.overhead.mean - 1.0,
            "paired_gap": vars(paired_gap(full_tuner, best_runs))}
        console.print(f"  full: tuner {entry['rows']['full']['overhead']['mean'] * 100:.3f}% vs best grid interval "
                      f"{best_full.overhead.mean * 100:.3f}% at {best_full.interval_s:.0f} s (Young {young:.0f} s)",
                      highlight=False)
        out["mtbf"][f"{mtbf_h:g}h"] = entry
        if mtbf_h == 14.0:
            scenario = Scenario(base=spec, modes=("full", "partial", "partial+MFU", "partial+SSU", "auto"),
                                costs=PAPER, failures=failures, days=args.days, seeds=len(seeds),
                                prior_hours=t_fail * N_EMB / HOUR_S)
            summaries = [summarize_mode(label, [r for r in results if r.label == label and r.fixed_interval_s is None])
                         for label in ("full", "partial", "partial+MFU", "partial+SSU", "auto")]
            plot_grid = summarize_grid([r for r in results if r.fixed_interval_s is not None])
            plot_curves(RESULTS / "simulate_worked_example_curves.png", scenario, summaries, plot_grid,
                        "worked example (PAPERS.md §1.6), job MTBF 14 h: full and partial intervals swept")
            plot_timeline(RESULTS / "simulate_worked_example_timeline.png",
                          [r for r in results if r.timeline and r.fixed_interval_s is None and r.seed == 0],
                          "worked example, job MTBF 14 h, seed 0")
    return out


def _schedule_of(run: RunResult) -> Any:
    from trainingjob_operator.tuning import SaveSchedule

    return SaveSchedule(run.schedule_o_save_s, run.schedule_loss_factor, ())


def _second_order(*, r_mode: str, interval: float, t_fail: float, costs: Costs, runs: Sequence[RunResult]) -> float:
    """The closed form with the two effects the first-order one leaves out, for the simulated model: a save's
    stall is inside the interval (compute per interval ``T - o_save``), and failures arrive in wall time,
    which is longer than failure-free time by the overhead itself: ``O = a / (1 - b)`` where ``a`` is the
    save term and ``b`` the failure term per wall second."""
    if r_mode == "full":
        a = costs.o_save_s / (interval - costs.o_save_s)
        b = (interval / 2 + costs.o_load_s + costs.o_res_s) / t_fail
    else:
        mean_save = runs[0].schedule_o_save_s or costs.o_save_s
        a = mean_save / (interval - mean_save)
        b = (costs.o_load_s + costs.o_res_s) / t_fail
    return (a + b) / (1 - b)


# -- tuner against the grid's optimum ----------------------------------------------------------------------


GRID_FACTORS = (1 / 3, 0.5, 2 / 3, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0)


def tuner_grid(args: argparse.Namespace) -> dict[str, Any]:
    spec = _spec(4, 4)
    n_nodes = 9
    mtbfs = (2.0, 10.0, 30.0, 100.0) if not args.quick else (2.0, 30.0)
    saves = (0.1, 10.0, 100.0, 600.0) if not args.quick else (10.0, 600.0)
    rows = []
    table = Table(title=f"full recovery: tuner vs the best of {len(GRID_FACTORS)} fixed intervals "
                        f"(seeds share failures)", title_justify="left")
    for col in ("MTBF h", "o_save s", "days", "seeds", "failures/seed", "Young s", "tuner s", "best grid s",
                "tuner ovh %", "best ovh %", "tuner/best - 1", "paired 95% CI", "save+lost: tuner/best - 1"):
        table.add_column(col, justify="right")
    for mtbf_h in mtbfs:
        for o_save in saves:
            t_fail = mtbf_h * HOUR_S
            costs = Costs(o_save, o_save, 60.0)
            young = young_interval(o_save, t_fail)
            failures = FailureSpec(mtbf_node_s=t_fail * n_nodes)
            days = min(args.failures * mtbf_h / 24.0, args.max_rounds * young * GRID_FACTORS[0] / 86_400.0)
            # Where the rounds cap shortened the run, more seeds make up the failures (the curve's noise).
            expected = days * 24.0 / mtbf_h
            seeds = list(range(min(args.max_seeds, max(args.seeds, math.ceil(args.seeds * args.failures / expected)))))

            def config(seed: int, fixed: float | None, costs: Costs = costs, failures: FailureSpec = failures,
                       days: float = days, t_fail: float = t_fail) -> SimConfig:
                return build_config(spec, "full", costs=costs, failures=failures, days=days, seed=seed,
                                    prior_hours=t_fail * n_nodes / HOUR_S, fixed_interval_s=fixed, timeline=False)

            configs = [config(s, None) for s in seeds] + [config(s, young * f) for f in GRID_FACTORS for s in seeds]
            results = _run(configs, args.jobs, f"MTBF {mtbf_h:g} h, o_save {o_save:g} s")
            tuner = [r for r in results if r.fixed_interval_s is None]
            by_interval: dict[float, list[RunResult]] = {}
            for r in results:
                if r.fixed_interval_s is not None:
                    by_interval.setdefault(r.fixed_interval_s, []).append(r)
            means = {x: statistics.fmean(r.overhead for r in runs) for x, runs in by_interval.items()}
            best_x = min(means, key=lambda x: means[x])
            best = by_interval[best_x]
            tuner_mean = statistics.fmean(r.overhead for r in tuner)
            paired = Stat.of([(t.overhead - b.overhead) / b.overhead for t, b in
                              zip(sorted(tuner, key=lambda r: r.seed), sorted(best, key=lambda r: r.seed),
                                  strict=True)])

            def save_lost(runs: Sequence[RunResult]) -> float:
                return statistics.fmean((r.save_s + r.lost_s) / r.useful_s for r in runs)

            sl_gap = save_lost(tuner) / save_lost(best) - 1.0
            noise = statistics.fmean(Stat.of([r.overhead for r in runs]).ci95 / means[x] for x, runs in
                                     by_interval.items())
            row = {"mtbf_h": mtbf_h, "o_save_s": o_save, "o_load_s": o_save, "o_res_s": 60.0, "days": days,
                   "seeds": len(seeds),
                   "failures_per_seed": statistics.fmean(r.failures for r in tuner), "young_s": young,
                   "tuner_interval_s": statistics.fmean(r.interval_mean_s for r in tuner),
                   "best_grid_interval_s": best_x, "tuner_overhead": tuner_mean, "best_overhead": means[best_x],
                   "tuner_over_best": tuner_mean / means[best_x] - 1.0, "paired_gap": vars(paired),
                   "save_lost_tuner_over_best": sl_gap, "grid_relative_ci95": noise,
                   "grid": {f"{x:.6g}": means[x] for x in sorted(means)},
                   "cpu_s": sum(r.cpu_s for r in results)}
            rows.append(row)
            table.add_row(f"{mtbf_h:g}", f"{o_save:g}", f"{days:.0f}", f"{len(seeds)}",
                          f"{row['failures_per_seed']:.0f}",
                          f"{young:.0f}", f"{row['tuner_interval_s']:.0f}", f"{best_x:.0f}",
                          f"{tuner_mean * 100:.3f}", f"{means[best_x] * 100:.3f}",
                          f"{row['tuner_over_best'] * 100:+.2f}%",
                          f"{paired.mean * 100:+.2f} ± {paired.ci95 * 100:.2f}%", f"{sl_gap * 100:+.2f}%")
    console.print(table)
    worst = max(rows, key=lambda r: r["tuner_over_best"])
    console.print(f"worst tuner/best - 1: {worst['tuner_over_best'] * 100:+.2f}% (MTBF {worst['mtbf_h']:g} h, "
                  f"o_save {worst['o_save_s']:g} s)", highlight=False)
    return {"spec": {"trainers": 4, "embedding_servers": 4, "sync_servers": 1, "failing": "all roles"},
            "grid_factors_of_young": GRID_FACTORS, "min_seeds": args.seeds, "failures_per_seed_target": args.failures,
            "max_rounds": args.max_rounds, "rows": rows,
            "worst_tuner_over_best": worst["tuner_over_best"]}


# -- scale -------------------------------------------------------------------------------------------------


def scale(args: argparse.Namespace) -> dict[str, Any]:
    job = load_manifest(ROOT / "examples" / "dlrm-local.yaml")
    base = scale_spec(job.spec, 1000)
    base = base.model_copy(update={"recovery": base.recovery.model_copy(update={
        "checkpoint": base.recovery.checkpoint.model_copy(update={"max_interval_seconds": 1e7})})})
    nodes = base.replicas.trainer.replicas + base.replicas.embedding_server.replicas + 1
    cases = [("cpr-14h", 14.0 * HOUR_S * nodes, ("full", "partial", "partial+MFU", "partial+SSU", "auto")),
             ("stress-node-1000h", 1000.0 * HOUR_S, ("full", "partial") if not args.quick else ("partial",))]
    out: dict[str, Any] = {"nodes": nodes, "trainers": base.replicas.trainer.replicas,
                           "embedding_servers": base.replicas.embedding_server.replicas, "days": 30, "seed": 0,
                           "costs": vars(PAPER), "machine": _machine(), "cases": {}}
    table = Table(title=f"{nodes} nodes x 30 days, one seed per mode", title_justify="left")
    for col in ("case", "mode", "wall s", "cpu s", "events", "failures", "reconcile calls", "reconcile s",
                "ms/call", "observe s", "plan calls", "plan s", "rest s", "overhead %", "<=120 cpu s"):
        table.add_column(col, justify="right")
    timeline_runs = []
    for name, node_s, modes in cases:
        failures = FailureSpec(mtbf_node_s=node_s)
        case: dict[str, Any] = {"node_mtbf_h": node_s / HOUR_S, "job_mtbf_h": node_s / HOUR_S / nodes, "modes": {}}
        for mode in modes:
            config = build_config(base, mode, costs=PAPER, failures=failures, days=30, seed=0,
                                  prior_hours=node_s / HOUR_S, timeline=True)
            profile = name.startswith("stress") and mode == "full" and not args.quick
            started = time.perf_counter()
            result = Simulation(config).run()
            wall = time.perf_counter() - started
            # CPU seconds: the machine may be shared, and wall time then counts other processes too.
            rest = result.cpu_s - result.reconcile_s - result.observe_s - result.plan_s
            row = {"wall_s": wall, "cpu_s": result.cpu_s, "events": result.events, "failures": result.failures,
                   "replacements": result.replacements, "reconcile_calls": result.reconcile_calls,
                   "reconcile_s": result.reconcile_s, "observe_s": result.observe_s, "plan_calls": result.plan_calls,
                   "plan_s": result.plan_s, "overhead": result.overhead, "pls": result.pls,
                   "interval_mean_s": result.interval_mean_s, "status": result.status, "profiled": profile}
            if profile:  # a second run of the same config, under cProfile (which slows it about 1.7x)
                profiler = cProfile.Profile()
                profiler.runcall(Simulation(config).run)
                text = io.StringIO()
                pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
                row["profile_top_tottime"] = text.getvalue().splitlines()[:40]
            case["modes"][mode] = row
            table.add_row(name, mode, f"{wall:.1f}", f"{result.cpu_s:.1f}",
                          f"{result.events:,}",
                          f"{result.failures:,}", f"{result.reconcile_calls:,}", f"{result.reconcile_s:.1f}",
                          f"{1000 * result.reconcile_s / max(1, result.reconcile_calls):.1f}",
                          f"{result.observe_s:.1f}", f"{result.plan_calls:,}", f"{result.plan_s:.1f}", f"{rest:.1f}",
                          f"{result.overhead * 100:.2f}", "yes" if result.cpu_s <= 120 else "NO")
            if name == "cpr-14h":
                timeline_runs.append(result)
        out["cases"][name] = case
    console.print(table)
    plot_timeline(RESULTS / "simulate_scale_timeline.png", timeline_runs,
                  f"{nodes} nodes, job MTBF 14 h, 30 days (seed 0)")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=("worked-example", "tuner-grid", "scale", "all"), default="all")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--days", type=float, default=365.0, help="worked example: failure-free days per run")
    parser.add_argument("--failures", type=int, default=250, help="tuner grid: failures per seed (target)")
    parser.add_argument("--max-rounds", type=int, default=40_000, help="tuner grid: caps the days of a point")
    parser.add_argument("--max-seeds", type=int, default=24, help="tuner grid: seeds at most, where days are capped")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="fewer points and runs (a smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.days, args.failures = min(args.seeds, 2), min(args.days, 60.0), min(args.failures, 60)
    targets = ("worked-example", "tuner-grid", "scale") if args.target == "all" else (args.target,)
    for target in targets:
        started = time.perf_counter()
        data = {"worked-example": worked_example, "tuner-grid": tuner_grid, "scale": scale}[target](args)
        data.update(benchmark="simulate_scale", target=target, machine=_machine(),
                    when=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    seconds=time.perf_counter() - started, command=" ".join(sys.argv))
        path = _write(target.replace("-", "_"), data)
        console.print(f"wrote {path} ({data['seconds']:.0f} s)", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
