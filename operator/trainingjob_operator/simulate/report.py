"""What a simulation shows: a rich table per mode, PNG plots (matplotlib, imported only here) and JSON."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from trainingjob_operator.simulate.config import DAY_S, HOUR_S
from trainingjob_operator.simulate.engine import RunResult, closed_form
from trainingjob_operator.simulate.quality import Calibration
from trainingjob_operator.simulate.sweep import GridPoint, ModeSummary, Scenario, Stat, grid_optimum, paired_gap


def _pct(stat: Stat | float | None, digits: int = 2) -> str:
    if stat is None:
        return "-"
    if isinstance(stat, Stat):
        if stat.n == 0 or math.isnan(stat.mean):
            return "-"
        ci = f" ± {stat.ci95 * 100:.{digits}f}" if stat.n > 1 else ""
        return f"{stat.mean * 100:.{digits}f}{ci}"
    return f"{stat * 100:.{digits}f}"


def _interval(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    if seconds >= 2 * HOUR_S:
        return f"{seconds / HOUR_S:.2f} h"
    if seconds >= 120:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.3g} s"


def render_table(summaries: Sequence[ModeSummary], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for name, justify in (("Mode", "left"), ("Interval", "right"), ("Overhead %", "right"),
                          ("Closed form %", "right"), ("Ckpt-related %", "right"), ("PLS %", "right"),
                          ("Exp. ΔAUC", "right"), ("Checkpoints", "right"), ("Replacements", "right"),
                          ("Failures", "right"), ("Runs", "left")):
        table.add_column(name, justify=justify, no_wrap=name != "Runs")  # type: ignore[arg-type]
    for s in summaries:
        full = f" (full {s.full_share.mean * 100:.0f}% of time)" if s.mode == "auto" and s.full_share.mean > 0 else ""
        table.add_row(
            s.mode, _interval(s.interval_s.mean), _pct(s.overhead), _pct(s.expected_overhead),
            _pct(s.checkpoint_overhead), _pct(s.pls, 3), f"{s.auc_change:+.5f}",
            f"{s.shard_saves.mean:,.0f} ({s.save_events.mean:,.0f} ev)", f"{s.replacements.mean:,.0f}",
            f"{s.failures.mean:,.1f}", ", ".join(f"{v} {k}" for k, v in s.statuses.items()) + full)
    return table


def comparisons(summaries: Sequence[ModeSummary], grid: Sequence[GridPoint], results: Sequence[RunResult],
                pls_target: float) -> dict[str, dict[str, Any]]:
    """Per mode: the grid's best interval (partial modes: among those meeting the PLS target) and how far
    the tuner's overhead is from it, seed by seed."""
    out: dict[str, dict[str, Any]] = {}
    for s in summaries:
        points = [p for p in grid if p.mode == s.mode]
        best = grid_optimum(points, None if s.mode == "full" else pls_target)
        if best is None:
            continue
        tuner_runs = [r for r in results if r.label == s.mode and r.fixed_interval_s is None]
        best_runs = [r for r in results if r.label == s.mode and r.fixed_interval_s == best.interval_s]
        gap = paired_gap(tuner_runs, best_runs)
        out[s.mode] = {"optimum_interval_s": best.interval_s, "optimum_overhead": best.overhead.mean,
                       "optimum_overhead_ci95": best.overhead.ci95, "tuner_overhead": s.overhead.mean,
                       "tuner_interval_s": s.interval_s.mean,
                       "tuner_over_optimum": s.overhead.mean / best.overhead.mean - 1.0
                       if best.overhead.mean > 0 else None,
                       "paired_gap_mean": gap.mean, "paired_gap_ci95": gap.ci95}
    return out


def to_json(scenario: Scenario, summaries: Sequence[ModeSummary], grid: Sequence[GridPoint],
            results: Sequence[RunResult], calibration: Calibration, extra: dict[str, Any] | None = None) -> dict:
    spec = scenario.base
    return {
        "scenario": {
            "replicas": {"trainer": spec.replicas.trainer.replicas,
                         "embedding-server": spec.replicas.embedding_server.replicas,
                         "sync-server": spec.replicas.sync_server.replicas},
            "modes": list(scenario.modes), "days": scenario.days, "seeds": scenario.seed_list,
            "costs": dataclasses.asdict(scenario.costs),
            "failures": {**{k: v for k, v in dataclasses.asdict(scenario.failures).items() if k != "log"},
                         "mtbf_node_h": scenario.failures.mtbf_node_s / HOUR_S,
                         "log_entries": None if scenario.failures.log is None else len(scenario.failures.log)},
            "prior_hours": scenario.prior_hours, "grid": scenario.grid, "grid_span": scenario.grid_span,
            "replan_tolerance": scenario.replan_tolerance, "pls_target": spec.recovery.pls_target,
            "max_interval_s": spec.recovery.checkpoint.max_interval_seconds,
        },
        "calibration": dataclasses.asdict(calibration),
        "modes": [dataclasses.asdict(s) for s in summaries],
        "grid": [dataclasses.asdict(p) for p in grid],
        "tuner_vs_grid": comparisons(summaries, grid, results, spec.recovery.pls_target),
        "runs": [r.to_json(timeline=r.fixed_interval_s is None and r.seed == scenario.first_seed) for r in results],
        **(extra or {}),
    }


# -- plots -------------------------------------------------------------------------------------------------


def plot_curves(path: Path, scenario: Scenario, summaries: Sequence[ModeSummary], grid: Sequence[GridPoint],
                title: str) -> Path:
    """Overhead and PLS against the checkpoint interval: the grid's means (with 95 % intervals), the
    closed forms (dashed) and the tuner's choice (star)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_o, ax_p) = plt.subplots(1, 2, figsize=(13, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    target = scenario.base.recovery.pls_target
    for i, s in enumerate(summaries):
        color = colors[i % len(colors)]
        points = [p for p in grid if p.mode == s.mode and p.overhead.n > 0]
        if points:
            xs = [p.interval_s / 60 for p in points]
            ax_o.errorbar(xs, [p.overhead.mean * 100 for p in points], yerr=[p.overhead.ci95 * 100 for p in points],
                          color=color, marker="o", ms=3, capsize=2, label=f"{s.mode} (simulated)")
            if s.mode != "full":
                ax_p.errorbar(xs, [p.pls.mean * 100 for p in points], yerr=[p.pls.ci95 * 100 for p in points],
                              color=color, marker="o", ms=3, capsize=2, label=s.mode)
            if s.mode != "auto":
                lo, hi = min(p.interval_s for p in points), max(p.interval_s for p in points)
                dense = [lo * (hi / lo) ** (j / 60) for j in range(61)]
                config = scenario.config(s.mode, scenario.first_seed)
                closed = [closed_form(config, x, "full" if s.mode == "full" else "partial", None) for x in dense]
                if all(c[0] is not None for c in closed) and s.mode in ("full", "partial"):
                    ax_o.plot([x / 60 for x in dense], [(c[0] or 0.0) * 100 for c in closed], color=color,
                              ls="--", lw=1, alpha=0.7)
        ax_o.plot([s.interval_s.mean / 60], [s.overhead.mean * 100], marker="*", ms=14, color=color,
                  markeredgecolor="black", ls="none", label=f"{s.mode}: tuner")
        if s.mode != "full":
            ax_p.plot([s.interval_s.mean / 60], [s.pls.mean * 100], marker="*", ms=14, color=color,
                      markeredgecolor="black", ls="none")
    ax_p.axhline(target * 100, color="grey", ls=":", label=f"PLS target {target:g}")
    for ax, label in ((ax_o, "overhead (% of failure-free time)"), (ax_p, "PLS (% of samples)")):
        ax.set_xscale("log")
        ax.set_xlabel("checkpoint interval (min)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    ax_o.set_title("overhead vs interval (dashed: tuning.py closed form)", fontsize=9)
    ax_p.set_title("PLS vs interval (partial recovery)", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_timeline(path: Path, results: Sequence[RunResult], title: str) -> Path:
    """One row per mode (first seed, the tuner's run): failures by role, time the job could not train
    (shaded), and the checkpoint interval the tuner chose (step line, right axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in results if r.timeline]
    fig, axes = plt.subplots(max(1, len(runs)), 1, figsize=(13, 2.2 * max(1, len(runs))), sharex=True,
                             squeeze=False)
    markers = {"embedding-server": ("o", "tab:red"), "trainer": ("^", "tab:blue"), "sync-server": ("s", "tab:green")}
    rows = {"trainer": 0, "embedding-server": 1, "sync-server": 2}
    for ax, run in zip(axes[:, 0], runs, strict=False):
        for start, end in run.timeline.get("down", []):
            ax.axvspan(start / DAY_S, end / DAY_S, color="grey", alpha=0.25, lw=0)
        for role, (marker, color) in markers.items():
            pts = [(t / DAY_S, rows[role]) for t, r, _, _ in run.timeline.get("failures", []) if r == role]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color, ls="none", ms=4,
                        label=f"{role} failure")
        ax.set_yticks([0, 1, 2], ["trainer", "emb", "sync"], fontsize=7)
        ax.set_ylim(-0.7, 2.7)
        ax.set_title(f"{run.label} (seed {run.seed}): {run.failures} failures, overhead {run.overhead * 100:.2f}%, "
                     f"PLS {run.pls * 100:.3f}%", fontsize=8, loc="left")
        intervals = run.timeline.get("intervals", [])
        if intervals:
            twin = ax.twinx()
            xs = [t / DAY_S for t, _, _ in intervals] + [run.wall_s / DAY_S]
            ys = [i / 60 for _, i, _ in intervals]
            twin.step(xs, [*ys, ys[-1]], where="post", color="black", lw=1)
            twin.set_ylabel("interval (min)", fontsize=7)
            twin.set_yscale("log")
    axes[-1, 0].set_xlabel("simulated time (days)")
    axes[0, 0].legend(fontsize=7, loc="upper right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
