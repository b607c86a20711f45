"""Failure -> replacement serving on the Kubernetes path, cold and with warm standby pods (``recovery.standby``).

Both modes run in one invocation on the faithful kubelet: every pod a real process with its own network
namespace and IP, its volumes, the image's user and its probes at real timing (time scale 1); the operator is the
real kopf operator; Redis a real redis-server. Checkpoints are on one shared claim (what a standby server needs).

Each sample SIGKILLs the pod that holds one rank (embedding servers and trainers in turn) and measures, from the
kill:
- ``registered``: the rank's Redis member names a new instance (the replacement registered);
- ``serving``: an embedding server answers a gRPC health check of its service with SERVING from the host (it
  serves only once its shard is restored); a trainer has reported training progress after registering.
Cold: the operator creates a new pod (scheduling, container start, the imports of torch and grpc, Redis
connect, shard restore). Warm: a standby pod takes the rank over. Between kills the job settles (and, warm,
a new standby is offering itself), so every kill finds the steady state.

Prints a table and writes ``benchmarks/results/standby_failover.json``.
Example: ``sudo .venv/bin/python benchmarks/standby_failover.py --kills 6`` (needs root: network namespaces).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the test-only emulator and kubelet live in tests/

from dlrm_trainer import embedding_server
from tests.support.cluster import NAMESPACE, Cluster, FaithfulCluster, faithful_cluster, manifest
from trainingjob_operator.api.spec import GROUP

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
JOB = "failover"
ROLE, RANK, STANDBY = f"{GROUP}/role", f"{GROUP}/rank", f"{GROUP}/standby"
SPEC: dict[str, Any] = {
    "model": {"sparseFeatures": 8, "rowsPerTable": 20_000, "embeddingDim": 16, "bottomMlp": [64], "topMlp": [64]},
    "data": {"trainSamples": 200_000_000, "evalSamples": 8192, "batchSize": 512},
    "training": {"hogwildThreads": 1, "progressEverySeconds": 0.5},
    "recovery": {"checkpoint": {"intervalSeconds": 5, "volume": {"kind": "sharedClaim", "claimName": "ckpt"}},
                 "failurePolicy": {"backoff": {"enabled": False}}, "restartBudget": {"maxRestarts": 100}},
}


async def until(check: Any, timeout: float, what: str, period: float = 0.01) -> float:
    """The time at which ``check()`` first held (polled every ``period``)."""
    deadline = time.time() + timeout
    while True:
        try:
            if check():
                return time.time()
        except (LookupError, OSError, grpc.RpcError):
            pass
        if time.time() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(period)


def holder(cluster: Cluster, role: str, rank: int) -> dict[str, Any] | None:
    pods = [p for p in cluster.pods(JOB).values() if p["metadata"]["labels"].get(ROLE) == role
            and p["metadata"]["labels"].get(RANK) == str(rank) and not p["metadata"].get("deletionTimestamp")
            and (p.get("status") or {}).get("phase") == "Running"]
    return pods[0] if len(pods) == 1 else None


def warm_standbys(cluster: Cluster, roles: list[str]) -> bool:
    offers = cluster.coordination(JOB).standbys()
    for role in roles:
        pods = [p for p in cluster.pods(JOB).values() if p["metadata"]["labels"].get(STANDBY) == "true"
                and p["metadata"]["labels"].get(ROLE) == role and not p["metadata"].get("deletionTimestamp")]
        if not pods or not all(p["metadata"]["uid"] in offers and time.time() - offers[p["metadata"]["uid"]]["seen"] < 3
                               for p in pods):
            return False
    return True


def answers(endpoint: str) -> bool:
    with grpc.insecure_channel(endpoint) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=embedding_server.SERVICE), timeout=0.5)
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def one_kill(fc: FaithfulCluster, role: str, rank: int) -> dict[str, Any]:
    cluster, coord = fc.cluster, fc.cluster.coordination(JOB)
    pod = holder(cluster, role, rank)
    member = coord.member(role, rank)
    assert pod is not None and member is not None and member.instance == pod["metadata"]["uid"]
    old = member.instance
    before = time.time()
    fc.kubelet.process(pod["metadata"]["name"]).send_signal(signal.SIGKILL)
    registered = await until(lambda: (m := coord.member(role, rank)) is not None and m.instance != old
                             and not m.instance.startswith("fenced:"), 180, f"{role}-{rank} registered")
    if role == "embedding-server":  # it registers before its shard is restored, and its endpoint once it serves
        serving = await until(lambda: (m := coord.member(role, rank)) is not None and m.instance != old
                              and bool(m.endpoint) and answers(m.endpoint), 180, f"{role}-{rank} serving",
                              period=0.02)
    else:
        serving = await until(lambda: (p := coord.progress(rank)) is not None and p.updated > registered
                              and p.samples > 0, 180, f"{role}-{rank} training")
    replacement = holder(cluster, role, rank) or {"metadata": {"name": "?"}}
    return {"role": role, "rank": rank, "registered_s": round(registered - before, 3),
            "serving_s": round(serving - before, 3), "pod": replacement["metadata"]["name"],
            "from_standby": "-standby-" in replacement["metadata"]["name"]}


async def run_mode(mode: str, kills: int, workdir: Path) -> list[dict[str, Any]]:
    standby = {"trainer": 1, "embeddingServer": 1} if mode == "warm" else {}
    spec = {**SPEC, "recovery": {**SPEC["recovery"], "standby": standby}}
    async with faithful_cluster(workdir / mode, time_scale=1.0) as fc:
        cluster = fc.cluster
        claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "ckpt",
                 "namespace": NAMESPACE}, "spec": {"accessModes": ["ReadWriteMany"],
                                                   "resources": {"requests": {"storage": "1Gi"}}}}
        async with cluster.api.post(f"/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims", json=claim) as r:
            assert r.status < 300, await r.text()
        await cluster.create_job(manifest(JOB, **spec))
        coord = cluster.coordination(JOB)
        await until(lambda: all((p := coord.progress(r)) is not None and p.samples > 0 for r in (0, 1)), 300,
                    "both trainers training", period=0.5)
        await until(lambda: all(coord.checkpoint_pointer(s) is not None for s in (0, 1)), 120, "a checkpoint per shard",
                    period=0.5)
        samples = []
        for i in range(kills):
            role, rank = ("embedding-server", "trainer")[i % 2], (i // 2) % 2
            if mode == "warm":
                await until(lambda: warm_standbys(cluster, ["embedding-server", "trainer"]), 300, "standbys warm",
                            period=0.2)
            await asyncio.sleep(3.0)  # settle: the previous replacement's shard load and catch-up are over
            sample = await one_kill(fc, role, rank)
            samples.append(sample)
            print(f"  {mode:4s} kill {i + 1}/{kills}: {role}-{rank} registered {sample['registered_s']:6.2f}s "
                  f"serving {sample['serving_s']:6.2f}s ({sample['pod']})", flush=True)
        await cluster.delete_job(JOB)
        await until(lambda: not cluster.pods(JOB), 120, "the job's pods gone", period=0.5)
    return samples


def ci95(values: list[float]) -> float:
    if len(values) < 2:
        return math.nan
    t = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 7: 2.45, 8: 2.36, 9: 2.31, 10: 2.26}.get(len(values), 2.0)
    return t * statistics.stdev(values) / math.sqrt(len(values))


def summarise(samples: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for mode, found in samples.items():
        for role in ("embedding-server", "trainer"):
            mine = [s for s in found if s["role"] == role]
            if not mine:
                continue
            for metric in ("registered_s", "serving_s"):
                values = [s[metric] for s in mine]
                rows.append({"mode": mode, "role": role, "metric": metric.removesuffix("_s"), "n": len(values),
                             "p50": round(statistics.median(values), 3), "mean": round(statistics.fmean(values), 3),
                             "ci95": round(ci95(values), 3), "max": round(max(values), 3),
                             "from_standby": sum(s["from_standby"] for s in mine)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=8, help="kills per mode, alternating embedding server/trainer")
    parser.add_argument("--modes", default="cold,warm")
    parser.add_argument("--output", type=Path, default=RESULTS / "standby_failover.json")
    args = parser.parse_args()
    samples: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="standby-failover-") as tmp:
        for mode in args.modes.split(","):
            print(f"{mode}: a job with {'warm standbys' if mode == 'warm' else 'no standby'}, {args.kills} kills",
                  flush=True)
            samples[mode] = asyncio.run(run_mode(mode, args.kills, Path(tmp)))
    rows = summarise(samples)
    print(f"\n{'mode':5s} {'role':17s} {'from kill to':12s} {'n':>3s} {'p50 s':>7s} {'mean s':>7s} {'±95%':>6s} "
          f"{'max s':>7s} {'standby':>7s}")
    for row in rows:
        print(f"{row['mode']:5s} {row['role']:17s} {row['metric']:12s} {row['n']:3d} {row['p50']:7.2f} "
              f"{row['mean']:7.2f} {row['ci95']:6.2f} {row['max']:7.2f} {row['from_standby']:7d}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "benchmark": "standby_failover", "command": " ".join(sys.argv), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "spec": SPEC, "rows": rows, "samples": samples}, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
