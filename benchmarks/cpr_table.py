"""CPR's comparison at small scale, through both backends in one invocation, same failure schedule.

Variants: failure-free, full recovery (everything restarts and rolls back to the last checkpoint),
partial recovery (CPR), partial + MFU, partial + SSU. Each runs the same manifest and the same kills
through the local backend (replicas as processes) and the Kubernetes backend (the operator, the API
emulator and the faithful process kubelet: pods in their own network namespaces, their volumes, uid
10001, probes at real timing); see ``benchmarks/backends.py``. Per backend and variant: overhead as %
of that backend's failure-free wall time, final held-out AUC, PLS, checkpoints, how many replaced
embedding servers restored a checkpoint, each replacement's time (kill -> replacement serving) and the
survivors' stall per lost shard. Every variant runs ``--repeats`` times per backend, interleaved, and
overheads are reported as a mean with a 95% confidence interval (a noisy shared machine). The soak at
real probe timing is ``benchmarks/soak.py``.

Seeds (``--seeds K``): run k uses data and model seed k, and with ``--pattern poisson`` its own failure
schedule (every variant of a seed gets the same one): failures of a random replica as a Poisson process
of the job MTBF given, which CPR's production pattern scales to (``--job-mtbf``: CPR saw a failure every
14-30 h with a 10-minute replacement; the defaults keep that ratio of replacement time to MTBF near 1%
for a local replacement of ~0.6 s). ``--tail-signal`` picks the synthetic teacher (0.5: the harder one on
which losing a shard's tail costs AUC; 0: the original). ``--data criteo`` writes the samples to a
Criteo-format TSV file first and trains from it (``data.source: criteo``; local backend only).

Writes benchmarks/results/cpr_table.json and cpr_curves.png (AUC against samples, one panel per backend).

Usage: python benchmarks/cpr_table.py [--backend both|local|kubernetes] [--samples N] [--schedule SPEC]
                                       [--seeds K] [--pattern fixed|poisson] [--job-mtbf 60]
                                       [--tail-signal 0.5] [--data synthetic|criteo] [--out NAME]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from backends import Kill, KubernetesBackend, LocalBackend, Outcome, parse_schedule

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_SCHEDULE = "embedding-server/0@8s,trainer/1@16s,embedding-server/1@24s,sync-server/0@30s"
PARTIAL_OVER_FULL_GOAL = 0.0625  # 16x

VARIANTS = {
    "failure-free": {"mode": "partial", "strategy": "full", "inject": False},
    "full": {"mode": "full", "strategy": "full", "inject": True},
    "partial": {"mode": "partial", "strategy": "full", "inject": True},
    "partial+MFU": {"mode": "partial", "strategy": "mfu", "inject": True},
    "partial+SSU": {"mode": "partial", "strategy": "ssu", "inject": True},
}


def manifest(name: str, samples: int, mode: str, strategy: str, mtbf_hours: float, seed: int = 0,
             tail_signal: float = 0.0, criteo: Path | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"trainSamples": samples, "evalSamples": 50_000, "batchSize": 1024, "seed": seed,
                            "synthetic": {"tailSignal": tail_signal}}
    if criteo is not None:
        data.update(source="criteo", path=str(criteo))
    return {
        "apiVersion": "training.cpr.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
        "spec": {
            "model": {"rowsPerTable": 50_000, "bottomMlp": [128, 64], "topMlp": [128, 64]},
            "data": data,
            "training": {"evalEverySamples": max(samples // 10, 1), "evalCurveSamples": 16_384},
            "recovery": {
                "mode": mode, "mtbfPriorHours": mtbf_hours, "plsTarget": 0.02, "heartbeatTimeoutSeconds": 5,
                "checkpoint": {"strategy": strategy, "initialIntervalSeconds": 5, "minIntervalSeconds": 2,
                               "hotFraction": 0.25, "sampleFraction": 0.25, "fullEvery": 4},
            },
        },
    }


def measure(backend: str, variant: str, outcome: Outcome) -> dict[str, Any]:
    """One row, from the job's Redis keys and the injector's timings (the same reads for both backends)."""
    keys = outcome.keys
    results, failures = keys["results"], keys["failures"]
    samples = sum(int(r.get("samples", 0)) for r in results)
    killed = [k for k in outcome.kills if "replacement_s" in k]
    shard_kills = [k for k in killed if k["replica"].startswith("embedding-server")]
    restored = []
    for f in failures:
        if f.get("role") != "embedding-server":
            continue
        recoveries = keys["recoveries"].get(f"{f['role']}-{f['rank']}", {})
        after = [r for instance, r in recoveries.items() if instance != f.get("instance")]
        restored.append(bool(after) and all((r.get("restored_progress") or 0) > 0 for r in after))
    stalls = [float(r.get("stalled_on_embedding_servers_s", 0.0)) for r in results]
    aucs = [float(r["auc"]) for r in results if "auc" in r]
    shard_replacements = [k["replacement_s"] for k in shard_kills if k["replacement_s"] is not None]
    return {
        "backend": backend, "variant": variant, "status": outcome.status, "wall_s": outcome.wall_s,
        "samples": samples, "auc": statistics.fmean(aucs) if aucs else None,
        "pls": round(keys["lost_samples"] / samples, 6) if samples else None,
        "failures": len(failures), "restarts": sum(outcome.restarts.values()),
        "checkpoint_saves": len(keys["checkpoints"]),
        "shards_replaced": len(restored), "shards_restored_from_checkpoint": sum(restored),
        "replacement_s": [k["replacement_s"] for k in killed], "kills": outcome.kills,
        "max_trainer_stall_s": max(stalls, default=0.0),
        "stall_per_lost_shard_s": max(stalls, default=0.0) / len(shard_kills) if shard_kills else None,
        "shard_replacement_mean_s": statistics.fmean(shard_replacements) if shard_replacements else None,
        "probe_kills": outcome.probe_kills,
        "curve": sorted(keys["curve"], key=lambda p: p["samples"]),
        "checkpoint_progress": [c.get("progress") for c in keys["checkpoints"] if c.get("progress")],
        "failure_samples": [(f"{f['role']}-{f['rank']}", f.get("samples", 0)) for f in failures],
    }


def with_overheads(rows: list[dict[str, Any]]) -> None:
    """Each run's overhead against the failure-free run of the same backend and repeat (side by side)."""
    for backend, repeat in {(r["backend"], r["repeat"]) for r in rows}:
        mine = [r for r in rows if r["backend"] == backend and r["repeat"] == repeat]
        base = next(r for r in mine if r["variant"] == "failure-free")
        for r in mine:
            r["overhead_pct"] = 100.0 * (r["wall_s"] - base["wall_s"]) / base["wall_s"]
            r["auc_delta"] = (r["auc"] or 0.0) - (base["auc"] or 0.0)


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval (Student's t; 0 for one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    t95 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306, 10: 2.262}
    return mean, t95.get(len(values), 1.96) * statistics.stdev(values) / len(values) ** 0.5


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per backend and variant: overhead mean ± CI over the repeats; per backend: the partial/full ratio."""
    out: dict[str, Any] = {}
    for backend in sorted({r["backend"] for r in rows}):
        variants: dict[str, Any] = {}
        for variant in VARIANTS:
            mine = [r for r in rows if r["backend"] == backend and r["variant"] == variant]
            if not mine:
                continue
            mean, ci = mean_ci([r["overhead_pct"] for r in mine])
            auc_delta, auc_ci = mean_ci([r["auc_delta"] for r in mine])
            restored = sum(r["shards_restored_from_checkpoint"] for r in mine)
            replaced = sum(r["shards_replaced"] for r in mine)
            variants[variant] = {"overhead_pct_mean": mean, "overhead_pct_ci95": ci, "runs": len(mine),
                                 "auc_delta_mean": auc_delta, "auc_delta_ci95": auc_ci,
                                 "pls_mean": statistics.fmean(r["pls"] or 0.0 for r in mine),
                                 "auc_mean": statistics.fmean(r["auc"] or 0.0 for r in mine),
                                 "shards_restored": f"{restored}/{replaced}",
                                 "stall_ok": [stall_ok(r) for r in mine]}
        full, partial = variants.get("full"), variants.get("partial")
        ratio = (max(partial["overhead_pct_mean"], 0.0) / full["overhead_pct_mean"]
                 if full and partial and full["overhead_pct_mean"] > 0 else None)
        out[backend] = {"variants": variants, "partial_over_full_overhead": ratio}
    return out


def print_summary(summary: dict[str, Any]) -> None:
    print(f"\n{'backend':<11} {'variant':<13} {'runs':>4} {'overhead % (mean ± 95% CI)':>28} {'AUC':>7} "
          f"{'dAUC (mean ± 95% CI)':>22} {'PLS':>7} {'restored':>8}")
    for backend, b in summary.items():
        for variant, v in b["variants"].items():
            print(f"{backend:<11} {variant:<13} {v['runs']:>4} "
                  f"{v['overhead_pct_mean']:>16.2f} ± {v['overhead_pct_ci95']:<9.2f} {v['auc_mean']:>7.4f} "
                  f"{v['auc_delta_mean']:>+11.4f} ± {v['auc_delta_ci95']:<8.4f} {v['pls_mean']:>7.4f} "
                  f"{v['shards_restored']:>8}")
    for backend, b in summary.items():
        ratio = b["partial_over_full_overhead"]
        shown = "n/a" if ratio is None else f"{ratio:.4f}"
        print(f"{backend}: partial overhead / full overhead (means) = {shown} (goal <= {PARTIAL_OVER_FULL_GOAL})")


def stall_ok(row: dict[str, Any]) -> bool | None:
    """Survivors' stall per lost shard within the replacement time + 1 s (partial recovery: in a full
    recovery nobody survives, everyone restarts)."""
    if not row["variant"].startswith("partial"):
        return None
    if row["stall_per_lost_shard_s"] is None or row["shard_replacement_mean_s"] is None:
        return None
    return bool(row["stall_per_lost_shard_s"] <= row["shard_replacement_mean_s"] + 1.0)


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'backend':<11} {'#':>1} {'variant':<13} {'status':<10} {'wall s':>7} {'ovh %':>7} {'AUC':>7} "
          f"{'dAUC':>8} {'PLS':>7} {'saves':>5} {'restored':>8} {'stall/shard':>11} {'repl mean':>9}  replacement s")
    for r in rows:
        restored = f"{r['shards_restored_from_checkpoint']}/{r['shards_replaced']}"
        stall = "-" if r["stall_per_lost_shard_s"] is None else f"{r['stall_per_lost_shard_s']:.2f}"
        repl = "-" if r["shard_replacement_mean_s"] is None else f"{r['shard_replacement_mean_s']:.2f}"
        print(f"{r['backend']:<11} {r['repeat'] + 1:>1} {r['variant']:<13} {r['status']:<10} {r['wall_s']:>7.1f} "
              f"{r['overhead_pct']:>7.2f} {r['auc'] or 0:>7.4f} {r['auc_delta']:>+8.4f} {r['pls'] or 0:>7.4f} "
              f"{r['checkpoint_saves']:>5} {restored:>8} {stall:>11} {repl:>9}  {r['replacement_s']}")


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = sorted({r["backend"] for r in rows})
    fig, axes = plt.subplots(1, len(backends), figsize=(8 * len(backends), 5), squeeze=False, sharey=True)
    for ax, backend in zip(axes[0], backends, strict=True):
        for r in (r for r in rows if r["backend"] == backend):
            xs = [p["samples"] for p in r["curve"]] + [r["samples"]]
            ys = [p["auc"] for p in r["curve"]] + [r["auc"]]
            ax.plot(xs, ys, marker="o", label=f"{r['variant']} (AUC {r['auc'] or 0:.4f}, wall {r['wall_s']:.0f}s)")
        partial = next((r for r in rows if r["backend"] == backend and r["variant"] == "partial"), None)
        for name, at in (partial or {}).get("failure_samples", []):
            ax.axvline(at, color="red", linestyle="--", alpha=0.5)
            ax.text(at, ax.get_ylim()[0], f" {name}", rotation=90, color="red", fontsize=7, va="bottom")
        ax.set_title(f"{backend}: held-out AUC vs samples (partial run's failures in red)")
        ax.set_xlabel("samples trained (all trainers)")
        ax.set_ylabel("held-out AUC")
        ax.legend(loc="lower right", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def poisson_schedule(seed: int, job_mtbf_s: float, horizon_s: float, replicas: list[str]) -> list[Kill]:
    """Failures of a uniformly chosen replica, exponential gaps of mean ``job_mtbf_s``, within ``horizon_s``
    (seconds after every trainer has trained); one schedule per seed, the same for every variant."""
    rng = random.Random(seed)
    kills, t = [], rng.expovariate(1.0 / job_mtbf_s)
    while t < horizon_s:
        kills.append(Kill(rng.choice(replicas), round(t, 2)))
        t += rng.expovariate(1.0 / job_mtbf_s)
    return kills


def write_criteo(path: Path, samples: int, seed: int, tail_signal: float) -> Path:
    """The synthetic samples (train stream, then eval stream for the held-out tail) as one Criteo TSV file."""
    from dlrm_trainer.data.criteo import write_synthetic_tsv
    from dlrm_trainer.data.synthetic import SyntheticCriteo
    from trainingjob_operator.api.spec import TrainingJobSpec

    spec = TrainingJobSpec.model_validate(manifest("x", samples, "partial", "full", 1.0, seed, tail_signal)["spec"])
    generator = SyntheticCriteo(spec.model.rows(), seed=seed, embedding_dim=spec.model.embedding_dim,
                                tail_signal=tail_signal)
    train, held_out = path.with_suffix(".train"), path.with_suffix(".eval")
    write_synthetic_tsv(train, generator, samples)
    write_synthetic_tsv(held_out, generator, spec.data.eval_samples, stream="eval")
    path.write_bytes(train.read_bytes() + held_out.read_bytes())  # the reader holds the tail lines out
    train.unlink()
    held_out.unlink()
    return path


REPLICAS = ["embedding-server-0", "embedding-server-1", "trainer-0", "trainer-1", "sync-server-0"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["both", "local", "kubernetes"], default="both")
    parser.add_argument("--samples", type=int, default=2_000_000)
    parser.add_argument("--schedule", default=DEFAULT_SCHEDULE,
                        help="--pattern fixed: kills, seconds after every trainer has trained: role/rank@Ns,...")
    parser.add_argument("--pattern", choices=["fixed", "poisson"], default="fixed")
    parser.add_argument("--job-mtbf", type=float, default=60.0, help="--pattern poisson: job MTBF, seconds")
    parser.add_argument("--horizon", type=float, default=None,
                        help="--pattern poisson: kills stop this many seconds in (default: 80%% of a failure-free "
                        "run of the first seed)")
    parser.add_argument("--mtbf-hours", type=float, default=0.0167,
                        help="prior MTBF per replica given to the tuner (match the injected rate)")
    parser.add_argument("--seeds", "--repeats", dest="seeds", type=int, default=2,
                        help="runs of every variant per backend, seed k for run k; overheads are reported as mean "
                        "and 95%% CI")
    parser.add_argument("--tail-signal", type=float, default=0.0, help="the synthetic teacher's tailSignal")
    parser.add_argument("--data", choices=["synthetic", "criteo"], default="synthetic")
    parser.add_argument("--out", default="cpr_table", help="result file stem in benchmarks/results")
    args = parser.parse_args()
    if args.data == "criteo" and args.backend != "local":
        parser.error("--data criteo runs on the local backend (pods would need the file on a volume)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    backends = ["local", "kubernetes"] if args.backend == "both" else [args.backend]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend_name in backends:
            backend_cls = LocalBackend if backend_name == "local" else KubernetesBackend
            with backend_cls(Path(tmp) / backend_name) as backend:
                horizon = args.horizon
                for seed in range(args.seeds):  # interleaved, so drift on a shared machine hits every variant
                    criteo = (write_criteo(Path(tmp) / f"criteo-{seed}.tsv", args.samples, seed, args.tail_signal)
                              if args.data == "criteo" else None)
                    for variant, settings in VARIANTS.items():
                        print(f"{backend_name} seed {seed}: running {variant} ...", file=sys.stderr, flush=True)
                        name = f"cpr-{variant.lower().replace('+', '-')}"
                        body = manifest(name, args.samples, settings["mode"], settings["strategy"], args.mtbf_hours,
                                        seed, args.tail_signal, criteo)
                        if args.pattern == "fixed":
                            kills = parse_schedule(args.schedule)
                        else:
                            kills = poisson_schedule(seed, args.job_mtbf, horizon or 0.0, REPLICAS)
                        outcome = backend.run(body, kills if settings["inject"] else [])
                        row = measure(backend_name, variant, outcome) | {"repeat": seed, "seed": seed,
                                                                           "schedule": [vars(k) for k in kills]}
                        rows.append(row)
                        if variant == "failure-free" and horizon is None:
                            horizon = 0.8 * outcome.wall_s
    with_overheads(rows)
    print_table(rows)
    summary = summarize(rows)
    print_summary(summary)
    stalls = [stall_ok(r) for r in rows if stall_ok(r) is not None]
    print(f"survivors' stall per lost shard <= replacement + 1 s: {sum(stalls)}/{len(stalls)} partial runs")
    plot([r for r in rows if r["repeat"] == 0], RESULTS / f"{args.out.replace('table', 'curves')}.png")
    out = RESULTS / f"{args.out}.json"
    out.write_text(json.dumps({"args": vars(args), "samples": args.samples, "schedule": args.schedule,
                               "seeds": args.seeds, "summary": summary, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
