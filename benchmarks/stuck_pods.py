"""How fast a stuck pod speaks: from a pod's waiting state (ImagePullBackOff, Unschedulable) or a refused create
(403) to the job's ``Stuck`` condition naming it, on the emulated API server with the real kopf operator at its
production reconcile tick (2 s), a real redis-server, and other jobs running beside it.

Each sample: a fresh job, its pods left Pending (no kubelet), then one pod is patched into a waiting state the way
a kubelet or scheduler reports it (or its create is refused); the clock runs from that patch to the first status
the operator writes with ``Stuck=True`` for that pod (polled every 10 ms). The issue's goal: at most 10 s.

Prints a table and writes ``benchmarks/results/stuck_pods.json``.
Example: ``.venv/bin/python benchmarks/stuck_pods.py --samples 10``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import kmock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the test-only API-server emulator lives in tests/

from tests.support.cluster import NAMESPACE, Cluster, Operator, manifest, operator_config
from tests.support.emulator import ApiServerEmulator
from trainingjob_operator.local.redis_server import EmbeddedRedis

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
WAITING = {
    "ImagePullBackOff": {"phase": "Pending", "containerStatuses": [{
        "name": "dlrm", "ready": False, "restartCount": 0,
        "state": {"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "x:typo"'}}}]},
    "Unschedulable": {"phase": "Pending", "conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]},
}


def stuck_since(cluster: Cluster, job: str) -> bool:
    condition = cluster.condition(job, "Stuck")
    return condition is not None and condition["status"] == "True"


async def wait_for(check: Any, timeout: float = 60.0) -> float:
    """Seconds until ``check()`` holds (polled every 10 ms)."""
    started = time.perf_counter()
    while not check():
        if time.perf_counter() - started > timeout:
            raise TimeoutError
        await asyncio.sleep(0.01)
    return time.perf_counter() - started


async def one_sample(cluster: Cluster, name: str, reason: str) -> float:
    if reason == "Forbidden":
        victim = f"{name}-trainer-1"
        cluster.api.pod_admission = lambda pod: (403, "exceeded quota: gpu") \
            if pod["metadata"]["name"] == victim else None
        started = time.perf_counter()
        await cluster.create_job(manifest(name))
        await wait_for(lambda: stuck_since(cluster, name))
        cluster.api.pod_admission = None
        return time.perf_counter() - started  # includes the job's admission and its first creates
    await cluster.create_job(manifest(name))
    await wait_for(lambda: len(cluster.pods(name)) == 5)
    started = time.perf_counter()
    await cluster.api.patch_pod_status(NAMESPACE, f"{name}-trainer-1", WAITING[reason])
    await wait_for(lambda: stuck_since(cluster, name))
    return time.perf_counter() - started


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"n": len(values), "median_s": round(statistics.median(values), 3), "max_s": round(ordered[-1], 3),
            "mean_s": round(statistics.fmean(values), 3)}


async def run(samples: int, background_jobs: int, tick: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as workdir, EmbeddedRedis(Path(workdir)) as redis_url:
        async with ApiServerEmulator() as api, kmock.Server(api):
            cluster = Cluster(api=api, redis_url=redis_url)
            operator = Operator(config=dataclasses.replace(operator_config(api, redis_url), tick_s=tick))
            await operator.start()
            try:
                for i in range(background_jobs):  # running jobs beside the measured ones
                    await cluster.create_job(manifest(f"busy-{i}"))
                await wait_for(lambda: all(cluster.running(f"busy-{i}", 5) for i in range(background_jobs)))
                api.pod_startup_s = None  # from here on pods stay Pending: the measured jobs' pods never start
                results: dict[str, list[float]] = {}
                for reason in ("ImagePullBackOff", "Unschedulable", "Forbidden"):
                    results[reason] = [await one_sample(cluster, f"{reason.lower()}-{k}", reason)
                                       for k in range(samples)]
            finally:
                await operator.stop()
                await api.stop_kubelet()
    return {reason: summary(values) | {"raw_s": [round(v, 4) for v in values]} for reason, values in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=10, help="jobs measured per reason")
    parser.add_argument("--background-jobs", type=int, default=10, help="running jobs beside them")
    parser.add_argument("--tick", type=float, default=2.0, help="the operator's reconcile tick (production: 2 s)")
    args = parser.parse_args()
    results = asyncio.run(run(args.samples, args.background_jobs, args.tick))
    print(f"Pod waiting state -> Stuck condition ({args.samples} jobs per reason, {args.background_jobs} running "
          f"beside them, tick {args.tick:g} s; goal <= 10 s)")
    print(f"{'reason':<18} {'median s':>9} {'max s':>7}")
    for reason, r in results.items():
        print(f"{reason:<18} {r['median_s']:>9.3f} {r['max_s']:>7.3f}")
    print("(Forbidden: from the job's create, its first pod creates included)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"benchmark": "stuck_pods", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"python": platform.python_version(), "platform": platform.platform()},
           "args": vars(args), "results": results}
    (RESULTS / "stuck_pods.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {RESULTS / 'stuck_pods.json'}")


if __name__ == "__main__":
    main()
