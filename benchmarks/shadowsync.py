"""ShadowSync against foreground synchronisation where the paper's claim lives: on a network with latency.

On loopback a synchronisation costs no network time, so background (ShadowSync) and foreground sync differ
only by the CPU an exchange takes. Here every trainer <-> sync-server call waits an emulated round trip
first (``TJ_EMULATED_SYNC_RTT_MS``, a gRPC client interceptor in the trainer: ``tc netem`` is not available
on these machines), and the same job runs with 1, 2 and 4 trainers, synchronising either in the background
(the shadow thread, S-EASGD) or in the foreground every step (``sync.mode: foreground, everySteps: 1``).
Both go through ``trainingjob run`` (replicas are processes, real gRPC and Redis).

Reported per row: training throughput (trained samples over the trainers' wall time), held-out AUC, the
background/foreground throughput ratio at each scale (goal: >= 1.3 at >= 2 ms RTT, at equal AUC).

Usage: python benchmarks/shadowsync.py [--samples N] [--rtt-ms 2] [--trainers 1,2,4]
Writes benchmarks/results/shadowsync.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def manifest(name: str, samples: int, trainers: int, mode: str, rtt_ms: float) -> dict[str, Any]:
    body = yaml.safe_load((ROOT / "examples" / "dlrm-local.yaml").read_text())
    spec = body["spec"]
    body["metadata"]["name"] = name
    spec["data"]["trainSamples"] = samples
    spec["data"]["evalSamples"] = 50_000
    spec["training"]["hogwildThreads"] = 1  # one worker per trainer: 4 trainers already fill 2 cores
    spec["training"]["sync"] = {**spec["training"].get("sync", {}), "mode": mode, "everySteps": 1}
    spec["replicas"]["trainer"] = {"replicas": trainers, "env": {"TJ_EMULATED_SYNC_RTT_MS": str(rtt_ms)}}
    return body


def run(samples: int, trainers: int, mode: str, rtt_ms: float, workdir: Path) -> dict[str, Any]:
    name = f"sync-{mode}-{trainers}"
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(manifest(name, samples, trainers, mode, rtt_ms)))
    summary = workdir / f"{name}.json"
    subprocess.run([sys.executable, "-m", "trainingjob_operator.cli", "run", str(path), "--summary", str(summary),
                    "--workdir", str(workdir / name)], check=False, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    data = json.loads(summary.read_text())
    return {"trainers": trainers, "mode": mode, "status": data["status"], "samples": data["samples"],
            "samples_per_second": data["samples_per_second"], "auc": data["auc"],
            "teacher_auc": data["teacher_auc"], "exchanges": data["sync"]["exchanges"],
            "sync_gap_steps": data["sync"]["sync_gap_steps"], "wall_s": data["wall_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2_000_000)
    parser.add_argument("--rtt-ms", type=float, default=2.0)
    parser.add_argument("--trainers", default="1,2,4")
    args = parser.parse_args()
    scales = [int(x) for x in args.trainers.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for trainers in scales:
            for mode in ("background", "foreground"):
                print(f"{trainers} trainer(s), {mode} ...", file=sys.stderr, flush=True)
                rows.append(run(args.samples, trainers, mode, args.rtt_ms, Path(tmp)))
    print(f"\nemulated RTT {args.rtt_ms} ms on the trainer <-> sync-server path, {args.samples} samples")
    print(f"{'trainers':>8} {'mode':<11} {'status':<10} {'samples/s':>10} {'AUC':>7} {'exchanges':>9} "
          f"{'gap steps':>9}")
    for r in rows:
        print(f"{r['trainers']:>8} {r['mode']:<11} {r['status']:<10} {r['samples_per_second']:>10.0f} "
              f"{r['auc'] or 0:>7.4f} {r['exchanges']:>9} {r['sync_gap_steps'] or 0:>9.1f}")
    ratios = {}
    for trainers in scales:
        bg = next(r for r in rows if r["trainers"] == trainers and r["mode"] == "background")
        fg = next(r for r in rows if r["trainers"] == trainers and r["mode"] == "foreground")
        ratio = bg["samples_per_second"] / fg["samples_per_second"] if fg["samples_per_second"] else None
        ratios[trainers] = {"throughput_ratio": ratio, "auc_delta": (bg["auc"] or 0) - (fg["auc"] or 0)}
        print(f"{trainers} trainer(s): background / foreground throughput = {ratio:.2f} (goal >= 1.3), "
              f"AUC difference {ratios[trainers]['auc_delta']:+.4f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "shadowsync.json"
    out.write_text(json.dumps({"args": vars(args), "rows": rows, "ratios": ratios}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
