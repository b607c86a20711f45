"""A long job on the faithful kubelet at real probe timing: no pod may be killed by its own probes.

The startup probe of a server pod allows ``recovery.startupTimeoutSeconds`` (600 s: 120 checks 5 s
apart). A server that never reported ready would be killed after 10 minutes, so this job trains for
``--minutes`` (default 12) with every probe at its real period, kills an embedding server and a trainer
on the way (the replacement's own probes run too) and reports: minutes run, the oldest pod's age, pods
killed by probes, replacements, and whether the replaced shard restored its checkpoint. The training
rate is measured first with a short failure-free job, so the long one is sized to last the minutes asked.

Writes benchmarks/results/soak.json. Needs root (network namespaces), as the project's tests do.

Usage: python benchmarks/soak.py [--minutes M]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from backends import Kill, KubernetesBackend
from cpr_table import manifest, measure

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=12.0, help="training time of the long job")
    args = parser.parse_args()
    seconds = args.minutes * 60.0
    with tempfile.TemporaryDirectory() as tmp, KubernetesBackend(Path(tmp) / "kubernetes", time_scale=1.0) as cluster:
        print("measuring the training rate (failure-free, 1M samples) ...", file=sys.stderr, flush=True)
        warmup = cluster.run(manifest("soak-rate", 1_000_000, "partial", "full", 1.0), [])
        rate = sum(float(r.get("samples_per_second", 0.0)) for r in warmup.keys["results"])
        samples = int(rate * seconds * 1.1)  # 10% over: the long job must not finish early
        kills = [Kill("embedding-server-1", seconds * 0.45), Kill("trainer-0", seconds * 0.7)]
        print(f"soak: {samples} samples (~{args.minutes:.0f} min at {rate:.0f}/s), kills at "
              f"{[(k.replica, round(k.after_s)) for k in kills]}", file=sys.stderr, flush=True)
        started = time.monotonic()
        outcome = cluster.run(manifest("soak", samples, "partial", "full", 1.0), kills, timeout_s=seconds * 3 + 600)
        minutes = (time.monotonic() - started) / 60.0
        row = measure("kubernetes", "soak", outcome)
    result: dict[str, Any] = {
        "minutes": round(minutes, 2), "status": outcome.status, "samples": row["samples"], "auc": row["auc"],
        "pls": row["pls"], "restarts": outcome.restarts, "replacement_s": row["replacement_s"],
        "probe_kills": outcome.probe_kills, "time_scale": 1.0, "rate_samples_per_s": round(rate, 1),
        "shards_restored_from_checkpoint": f"{row['shards_restored_from_checkpoint']}/{row['shards_replaced']}",
    }
    print(f"\n{'minutes':>7} {'status':<10} {'probe kills':>11} {'restarts':<45} {'replacement s':<16} restored")
    print(f"{result['minutes']:>7.1f} {result['status']:<10} {len(result['probe_kills']):>11} "
          f"{json.dumps(result['restarts']):<45} {json.dumps(result['replacement_s']):<16} "
          f"{result['shards_restored_from_checkpoint']}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {RESULTS / 'soak.json'}")


if __name__ == "__main__":
    main()
