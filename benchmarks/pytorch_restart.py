"""Time to resume a pytorch workload after a worker pod dies: survivors restarted in place (this product's
``recovery.mode: partial``) against every pod recreated (``full``: what torchrun-on-Kubernetes, PyTorchJob and
JobSet do), on the faithful kubelet (``tests/support/kubelet.py``): every pod a real process in its own network
namespace, with the pod spec's user, volumes and read-only root filesystem, and the real operator.

Each kill SIGKILLs one worker pod's process once the current generation is training; the clock runs from the
kill to the first step of the next generation (rank 0 records it in Redis). Also counted: pods started per
failure. Prints a table and writes ``benchmarks/results/pytorch_restart.json``.

    .venv/bin/python benchmarks/pytorch_restart.py --kills 6
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the faithful kubelet lives in tests/support

from tests.support.cluster import API_VERSION, KIND, NAMESPACE, faithful_cluster
from tests.support.waiting import eventually

RESULTS = Path(__file__).resolve().parent / "results" / "pytorch_restart.json"
TOY = Path(__file__).resolve().parents[1] / "tests" / "pytorch_workload" / "toy_ddp.py"
CLAIM = "bench-checkpoints"


def job(name: str, mode: str, workers: int) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name, "namespace": NAMESPACE}, "spec": {
        "workload": "pytorch",
        "pytorch": {"command": ["python", str(TOY)]},
        "replicas": {"worker": {"replicas": workers, "env": {"TOY_STEPS": "1000000", "TOY_STEP_S": "0.03"}}},
        "recovery": {"mode": mode, "restartBudget": {"maxRestarts": 100},
                     "failurePolicy": {"backoff": {"enabled": False}},
                     "checkpoint": {"intervalSeconds": 2, "volume": {"kind": "sharedClaim", "claimName": CLAIM}}},
    }}


async def measure(mode: str, kills: int, workers: int, seed: int, time_scale: float) -> dict[str, Any]:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="pt-restart-") as tmp:
        async with faithful_cluster(Path(tmp), time_scale=time_scale) as running:
            cluster, kubelet = running.cluster, running.kubelet
            claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                     "metadata": {"name": CLAIM, "namespace": NAMESPACE},
                     "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}}
            async with cluster.api.post(f"/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims", json=claim) as r:
                assert r.status < 300, await r.text()
            name = f"bench-{mode}"
            await cluster.create_job(job(name, mode, workers))
            coord = cluster.coordination(name)
            samples: list[dict[str, Any]] = []
            started_before = 0
            for kill in range(kills):
                generation = len(coord.resumes()) - 1
                await eventually(lambda: (r := coord.resumes()) and (p := coord.step_progress()) is not None
                                 and p.generation == r[-1]["generation"] and time.time() - r[-1]["time"] > 2.0,
                                 timeout=300, what="the current generation training for 2 s")
                generation = coord.resumes()[-1]["generation"]
                victim = f"{name}-worker-{rng.randrange(workers)}"
                started_before = len(kubelet.started)
                killed_at = time.time()
                kubelet.process(victim).send_signal(signal.SIGKILL)
                resumed = await eventually(
                    lambda g=generation: next((r for r in coord.resumes() if r["generation"] > g), None),
                    timeout=300, what="the next generation's first step")
                failure = coord.failures()[-1]
                samples.append({"kill": kill, "victim": victim, "resume_s": resumed["time"] - killed_at,
                                "detect_s": float(failure["time"]) - killed_at,
                                "resumed_from": resumed["resumed_from"],
                                "pods_started": len(kubelet.started) - started_before})
                print(f"  {mode:<8} kill {kill + 1}/{kills}: {victim} -> resumed in {samples[-1]['resume_s']:.2f}s, "
                      f"{samples[-1]['pods_started']} pod(s) started", flush=True)
            await cluster.delete_job(name)
    resume = [s["resume_s"] for s in samples]
    return {"mode": mode, "kills": samples, "resume_p50_s": statistics.median(resume),
            "resume_mean_s": statistics.fmean(resume), "resume_min_s": min(resume), "resume_max_s": max(resume),
            "pods_started_per_failure": statistics.fmean(s["pods_started"] for s in samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=6, help="kills per mode")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--time-scale", type=float, default=1.0, help="kubelet grace periods x this")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = [asyncio.run(measure(mode, args.kills, args.workers, args.seed, args.time_scale))
            for mode in ("partial", "full")]
    print(f"\n{'recovery':<34} {'resume p50':>10} {'mean':>7} {'min':>7} {'max':>7} {'pods/failure':>13}")
    labels = {"partial": "in place (this product)", "full": "recreate every pod (baseline)"}
    for row in rows:
        print(f"{labels[row['mode']]:<34} {row['resume_p50_s']:>9.2f}s {row['resume_mean_s']:>6.2f}s "
              f"{row['resume_min_s']:>6.2f}s {row['resume_max_s']:>6.2f}s {row['pods_started_per_failure']:>13.1f}")
    ratio = rows[1]["resume_p50_s"] / rows[0]["resume_p50_s"]
    print(f"\nin-place restart resumes {ratio:.2f}x faster (p50) with {args.workers} workers")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "pytorch_restart", "command": " ".join(sys.argv), "machine": platform.node(),
        "cpus": __import__("os").cpu_count(), "workers": args.workers, "rows": rows, "full_over_partial_p50": ratio,
    }, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
