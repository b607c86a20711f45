"""CPR's comparison at small scale (issue #3): every variant in one run, same seeded failure schedule.

Variants: failure-free, full recovery (everything restarts and rolls back to the last checkpoint),
partial recovery (CPR), partial + MFU, partial + SSU. For each: overhead as % of the failure-free
wall time, final held-out AUC, PLS (portion of lost samples), plus how long survivors stalled.
Writes benchmarks/results/cpr_table.json and one PNG per variant (AUC against samples, failures
and checkpoints marked) plus cpr_curves.png with every variant.

Usage: python benchmarks/cpr_table.py [--samples N] [--schedule SPEC]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_SCHEDULE = "embedding-server/0@14s,trainer/1@22s,embedding-server/1@30s,sync-server/0@36s"

VARIANTS = {
    "failure-free": {"mode": "partial", "strategy": "full", "inject": False},
    "full": {"mode": "full", "strategy": "full", "inject": True},
    "partial": {"mode": "partial", "strategy": "full", "inject": True},
    "partial+MFU": {"mode": "partial", "strategy": "mfu", "inject": True},
    "partial+SSU": {"mode": "partial", "strategy": "ssu", "inject": True},
}


def manifest(name: str, samples: int, mode: str, strategy: str, mtbf_hours: float) -> dict:
    return {
        "apiVersion": "training.cpr.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
        "spec": {
            "model": {"rowsPerTable": 50_000, "bottomMlp": [128, 64], "topMlp": [128, 64]},
            "data": {"trainSamples": samples, "evalSamples": 50_000, "batchSize": 1024},
            "training": {"evalEverySamples": max(samples // 10, 1), "evalCurveSamples": 16_384},
            "recovery": {
                "mode": mode, "mtbfPriorHours": mtbf_hours, "plsTarget": 0.02, "heartbeatTimeoutSeconds": 5,
                "checkpoint": {"strategy": strategy, "initialIntervalSeconds": 5, "minIntervalSeconds": 2,
                               "hotFraction": 0.25, "sampleFraction": 0.25, "fullEvery": 4},
            },
        },
    }


def run_variant(name: str, settings: dict, samples: int, schedule: str, mtbf_hours: float, tmp: Path) -> dict:
    job_name = f"cpr-{name.lower().replace('+', '-')}"
    path = tmp / f"{job_name}.yaml"
    path.write_text(yaml.safe_dump(manifest(job_name, samples, settings["mode"], settings["strategy"], mtbf_hours)))
    summary_path = tmp / f"{job_name}.json"
    cmd = [sys.executable, "-m", "trainingjob_operator.cli", "run", str(path), "--summary", str(summary_path),
           "--workdir", str(tmp / job_name)]
    if settings["inject"]:
        cmd += ["--inject-failures", schedule]
    started = time.monotonic()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    summary = json.loads(summary_path.read_text())
    summary["bench_wall_s"] = time.monotonic() - started
    return summary


def plot(name: str, summary: dict, path: Path, ax=None) -> None:  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(8, 4.5))
    curve = sorted(summary["recovery"].get("curve", []), key=lambda p: p["samples"])
    xs = [p["samples"] for p in curve] + [summary["samples"]]
    ys = [p["auc"] for p in curve] + [summary["auc"]]
    (line,) = ax.plot(xs, ys, marker="o", label=f"{name} (final AUC {summary['auc']:.4f})")
    if own:
        for f in summary["failures"]:
            ax.axvline(f["samples_at_failure"], color="red", linestyle="--", alpha=0.7)
            ax.text(f["samples_at_failure"], min(ys), f" {f['role']}-{f['rank']}", rotation=90, color="red",
                    fontsize=8, va="bottom")
        marks = [c.get("progress") for c in summary["recovery"].get("checkpoints", []) if c.get("progress")]
        ax.plot(marks, [max(ys) + 0.002] * len(marks), "|", color="gray", markersize=12, label="checkpoint saved")
        ax.set_title(f"{name}: AUC vs samples; PLS {summary['pls'] or 0:.4f}, failures in red")
        ax.set_xlabel("samples trained (all trainers)")
        ax.set_ylabel("held-out AUC")
        ax.legend(loc="lower right")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
    else:
        line.set_label(f"{name} (AUC {summary['auc']:.4f}, wall {summary['wall_seconds']:.0f}s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2_000_000)
    parser.add_argument("--schedule", default=DEFAULT_SCHEDULE)
    parser.add_argument("--mtbf-hours", type=float, default=0.0167,
                        help="prior MTBF per replica given to the tuner (match the injected rate)")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    summaries: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, settings in VARIANTS.items():
            print(f"running {name} ...", file=sys.stderr, flush=True)
            summaries[name] = run_variant(name, settings, args.samples, args.schedule, args.mtbf_hours, Path(tmp))
    base = summaries["failure-free"]
    rows = []
    for name, s in summaries.items():
        stalls = [t.get("stalled_on_embedding_servers_s", 0.0) for t in s["trainers"]]
        rows.append({
            "variant": name, "status": s["status"], "wall_s": s["wall_seconds"],
            "overhead_pct": 100.0 * (s["wall_seconds"] - base["wall_seconds"]) / base["wall_seconds"],
            "auc": s["auc"], "auc_delta": (s["auc"] or 0) - (base["auc"] or 0), "pls": s["pls"] or 0.0,
            "failures": len(s["failures"]), "restarted_replicas": sum(1 for v in s["restarts"].values() if v),
            "checkpoint_saves": s["checkpoint"]["saves"], "max_trainer_stall_s": max(stalls, default=0.0),
            "recovered_after_s": [f["recovered_after_s"] for f in s["failures"]],
        })
        plot(name, s, RESULTS / f"cpr_{name.lower().replace('+', '_')}.png")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    for name, s in summaries.items():
        plot(name, s, RESULTS / "unused.png", ax=ax)
    ax.set_title("CPR at small scale: held-out AUC vs samples, same failure schedule")
    ax.set_xlabel("samples trained (all trainers)")
    ax.set_ylabel("held-out AUC")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / "cpr_curves.png", dpi=110)
    plt.close(fig)

    full = next(r for r in rows if r["variant"] == "full")
    partial = next(r for r in rows if r["variant"] == "partial")
    ratio = partial["overhead_pct"] / full["overhead_pct"] if full["overhead_pct"] > 0 else None
    print(f"\n{'variant':<14} {'status':<10} {'wall s':>7} {'overhead %':>10} {'AUC':>7} {'dAUC':>8} {'PLS':>7} "
          f"{'restarted':>9} {'saves':>5} {'stall s':>7}  recovered after (s)")
    for r in rows:
        print(f"{r['variant']:<14} {r['status']:<10} {r['wall_s']:>7.1f} {r['overhead_pct']:>10.2f} {r['auc']:>7.4f} "
              f"{r['auc_delta']:>+8.4f} {r['pls']:>7.4f} {r['restarted_replicas']:>9} {r['checkpoint_saves']:>5} "
              f"{r['max_trainer_stall_s']:>7.2f}  {r['recovered_after_s']}")
    print(f"\npartial overhead / full overhead = {ratio if ratio is None else f'{ratio:.3f}'} (goal <= 0.2)")
    out = RESULTS / "cpr_table.json"
    out.write_text(json.dumps({"samples": args.samples, "schedule": args.schedule, "rows": rows,
                               "partial_over_full_overhead": ratio, "summaries": summaries}, indent=2))
    (RESULTS / "unused.png").unlink(missing_ok=True)
    print(f"wrote {out} and PNGs in {RESULTS}")


if __name__ == "__main__":
    main()
