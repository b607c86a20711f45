"""The interval tuner under a failure storm (issue #9's chaos run), against the same job without failures.

The demo job (``examples/dlrm-local.yaml``: 2 trainers, 2 embedding servers, 1 sync server) trains 6M
samples with default settings except the restart budget, once without failures and once with every
replica SIGKILLed as a Poisson process of MTBF 10 s (``--inject-failures random:any:mtbf=10s:seed=5``),
through ``trainingjob run`` (replicas are processes; warm standbys on). It reports what the issue asks:

- checkpoints were saved, and how many embedding-server restarts came back from initial weights
  (goal: at most 1 in 10);
- the measured PLS against the closed form for the intervals the tuner chose: each embedding-server
  failure is expected to lose half the interval in force when it failed, of its shard's updates, at the
  job's throughput (``tuning.expected_pls``: ``g * T / 2`` per failure, ``g`` the strategy's loss factor),
  summed and divided by the samples trained (goal: within 20%);
- the final held-out AUC against the failure-free run's (goal: within 0.02).

Usage: python benchmarks/tuner_chaos.py [--samples N] [--mtbf 10s] [--seed 5]
Writes benchmarks/results/tuner_chaos.json.
"""

from __future__ import annotations

import argparse
import bisect
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def manifest(name: str, samples: int) -> dict[str, Any]:
    body = yaml.safe_load((ROOT / "examples" / "dlrm-local.yaml").read_text())
    body["metadata"]["name"] = name
    body["spec"]["data"]["trainSamples"] = samples
    # The changes from the defaults: hundreds of kills must neither spend the restart budget nor back off.
    body["spec"]["recovery"]["restartBudget"] = {"maxRestarts": 100_000, "windowSeconds": 600}
    body["spec"]["recovery"]["failurePolicy"] = {"backoff": {"enabled": False}}
    return body


def run(name: str, samples: int, inject: str | None, workdir: Path) -> dict[str, Any]:
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(manifest(name, samples)))
    summary = workdir / f"{name}.summary.json"
    command = [sys.executable, "-m", "trainingjob_operator.cli", "run", str(path), "--summary", str(summary),
               "--workdir", str(workdir / name)]
    if inject:
        command += ["--inject-failures", inject]
    started = time.monotonic()
    subprocess.run(command, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    data: dict[str, Any] = json.loads(summary.read_text())
    data["bench_wall_s"] = round(time.monotonic() - started, 1)
    return data


def interval_at(history: list[dict[str, Any]], t: float, default: float) -> float:
    times = [h["time_s"] for h in history]
    i = bisect.bisect_right(times, t) - 1
    return float(history[i]["interval_s"]) if i >= 0 else default


def expected_pls(summary: dict[str, Any]) -> float | None:
    """The closed form for the intervals in force at each embedding-server failure (tuning.expected_pls per
    failure: half an interval of the shard's updates at the job's throughput; loss factor 1 for full saves)."""
    recovery = summary.get("recovery", {})
    history = recovery.get("interval_history", [])
    rate, samples = summary.get("samples_per_second"), summary.get("samples")
    n_emb = sum(1 for r in summary["replicas"] if r["role"] == "embedding-server")
    if not rate or not samples:
        return None
    initial = history[0]["interval_s"] if history else 60.0
    lost = sum(rate * interval_at(history, f["time_s"], initial) / 2.0 / n_emb
               for f in summary["failures"] if f["role"] == "embedding-server")
    return lost / samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=6_000_000)
    parser.add_argument("--mtbf", default="10s")
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        print("failure-free run ...", file=sys.stderr, flush=True)
        calm = run("tuner-calm", args.samples, None, workdir)
        print("chaos run ...", file=sys.stderr, flush=True)
        chaos = run("tuner-chaos", args.samples, f"random:any:mtbf={args.mtbf}:seed={args.seed}", workdir)
    emb = [f for f in chaos["failures"] if f["role"] == "embedding-server"]
    from_scratch = [f for f in emb if "initial weights" in (f.get("restored") or "")]
    expected = expected_pls(chaos)
    measured = chaos.get("pls")
    intervals = [h["interval_s"] for h in chaos["recovery"].get("interval_history", [])]
    row = {
        "status": chaos["status"], "calm_status": calm["status"], "wall_s": chaos["wall_seconds"],
        "kills": len(chaos["recovery"].get("injected", [])), "failures": len(chaos["failures"]),
        "embedding_server_restarts": len(emb), "from_initial_weights": len(from_scratch),
        "checkpoint_saves": chaos["checkpoint"]["saves"], "save_cost": chaos["checkpoint"].get("cost"),
        "pls": measured, "pls_expected": expected,
        "pls_ratio": (measured / expected) if measured is not None and expected else None,
        "auc": chaos.get("auc"), "auc_calm": calm.get("auc"),
        "auc_delta": (chaos["auc"] - calm["auc"]) if chaos.get("auc") and calm.get("auc") else None,
        "intervals_s": {"min": min(intervals, default=None), "max": max(intervals, default=None),
                        "last": intervals[-1] if intervals else None},
        "last_interval": chaos["recovery"].get("interval"),
        "samples": chaos["samples"], "samples_calm": calm["samples"],
    }
    print(f"\n{'':<36}{'chaos':>12}{'failure-free':>14}")
    print(f"{'status':<36}{row['status']:>12}{row['calm_status']:>14}")
    print(f"{'wall seconds':<36}{chaos['wall_seconds']:>12.1f}{calm['wall_seconds']:>14.1f}")
    print(f"{'kills injected / failures':<36}{row['kills']:>6} / {row['failures']:<4}")
    print(f"{'embedding-server restarts':<36}{len(emb):>12}")
    print(f"{'  ... from initial weights':<36}{len(from_scratch):>12}   (goal <= 1 in 10)")
    print(f"{'checkpoint saves':<36}{row['checkpoint_saves']:>12}{calm['checkpoint']['saves']:>14}")
    print(f"{'tuned interval s (min / max / last)':<36}{row['intervals_s']['min']!s:>12} / "
          f"{row['intervals_s']['max']} / {row['intervals_s']['last']}")
    print(f"{'PLS measured / closed form':<36}{measured!s:>12} / {expected if expected is None else round(expected, 4)}"
          f"   (goal: within 20%)")
    print(f"{'held-out AUC':<36}{row['auc'] or 0:>12.4f}{row['auc_calm'] or 0:>14.4f}   (goal: within 0.02)")
    if row["last_interval"]:
        print(f"last interval decision: {row['last_interval']['reason']}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "tuner_chaos.json"
    out.write_text(json.dumps({"args": vars(args), "summary": row, "chaos": chaos, "calm": calm}, indent=2,
                              default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
