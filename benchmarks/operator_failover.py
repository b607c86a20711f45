"""Operator failover benchmark on the emulated API server (no cluster needed).

The operator runs as its own process (``python -m trainingjob_operator.k8s.main``), logged in
through a kubeconfig that points at an in-memory API server (``k8s.emulator``) served by this
process, with a real redis-server. Pods run nothing: the emulator's toy kubelet marks them
Running, and the benchmark fails them by patching their status as a kubelet would.

Measured:

- failover latency: from the PATCH that marks a pod Failed to the replacement's create
  request, both timestamped by the API server (p50, p90, p99, max), with failures injected in
  waves of ``--concurrency`` jobs at once;
- API requests the operator makes per failure (everything but its watch streams), by kind;
- pods restarted per single failure: partial (expect 1) vs full recovery (expect N+M+1);
- operator RSS idle and with ``--scale-jobs`` jobs of ``--scale-pods`` pods each, and the
  operator's API request rate once they all run (steady state should be ~0).

Prints a table and writes ``benchmarks/results/operator_failover.json``.
Example: ``.venv/bin/python benchmarks/operator_failover.py --jobs 20 --failures 100``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kmock
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the test-only API-server emulator lives in tests/

from tests.support.emulator import ApiServerEmulator
from trainingjob_operator.api.spec import API_VERSION, GROUP, KIND, PLURAL, VERSION
from trainingjob_operator.local.redis_server import EmbeddedRedis, free_port

RESULTS = Path(__file__).resolve().parent / "results" / "operator_failover.json"
TJ = kmock.resource(GROUP, VERSION, PLURAL)


# --- the pieces ---------------------------------------------------------------------------------


def job_manifest(name: str, namespace: str, trainers: int, servers: int, mode: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": {"trainer": {"replicas": trainers}, "embeddingServer": {"replicas": servers}},
            "recovery": {
                "mode": mode,
                # Nothing heartbeats here: keep hung-replica detection out of the measurement.
                "heartbeatTimeoutSeconds": 36000,
                "restartBudget": {"maxRestarts": 1000, "windowSeconds": 600},
                # Replacement latency is what is measured: no backoff for a replica failed again and again.
                "failurePolicy": {"backoff": {"enabled": False}},
            },
        },
    }


def write_kubeconfig(server: str, directory: Path) -> Path:
    path = directory / "kubeconfig.json"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": server}}],
        "users": [{"name": "bench", "user": {}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "bench"}}],
    }))
    return path


@dataclass
class OperatorProcess:
    """The operator as a separate process, so its RSS and CPU are its own."""

    server: str
    redis_url: str
    workdir: Path
    tick_s: float
    metrics_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "KUBECONFIG": str(write_kubeconfig(self.server, self.workdir)),
               "TJ_DEFAULT_REDIS_URL": self.redis_url}
        log = (self.workdir / "operator.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "trainingjob_operator.k8s.main", "--standalone", "--tick", str(self.tick_s),
             "--metrics-port", str(self.metrics_port), "--log-level", "WARNING"],
            env=env, stdout=log, stderr=subprocess.STDOUT)

    def rss_mb(self) -> float:
        assert self.process is not None
        return float(psutil.Process(self.process.pid).memory_info().rss) / 2**20

    def cpu_s(self) -> float:
        assert self.process is not None
        times = psutil.Process(self.process.pid).cpu_times()
        return float(times.user + times.system)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Cluster:
    def __init__(self, api: ApiServerEmulator) -> None:
        self.api = api

    async def create_job(self, body: dict[str, Any]) -> None:
        ns = body["metadata"]["namespace"]
        async with self.api.post(f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}", json=body) as response:
            assert response.status < 300, await response.text()

    def phase(self, namespace: str, name: str) -> str | None:
        key = (TJ, namespace, name)
        if key not in self.api.objects or self.api.objects[key].deleted:
            return None
        return (self.api.objects[key].raw.get("status") or {}).get("phase")

    def pods(self, namespace: str) -> dict[str, dict[str, Any]]:
        return {p["metadata"]["name"]: p for p in self.api.live("pods", namespace)}

    def uids(self, namespace: str, job: str) -> dict[str, str]:
        return {n: p["metadata"]["uid"] for n, p in self.pods(namespace).items()
                if p["metadata"]["labels"][f"{GROUP}/job"] == job}

    def all_running(self, namespace: str, jobs: list[str], pods_per_job: int) -> bool:
        pods = self.pods(namespace)
        return (len(pods) == len(jobs) * pods_per_job
                and all(p.get("status", {}).get("phase") == "Running" for p in pods.values())
                and all(self.phase(namespace, j) == "Running" for j in jobs))

    def operator_requests(self, since: float, until: float | None = None) -> list[Any]:
        return [e for e in self.api.journal if e.user_agent.startswith("kopf") and e.action != "WATCH"
                and e.at >= since and (until is None or e.at <= until)]

    def create_request_after(self, namespace: str, name: str, since: float) -> float | None:
        for entry in reversed(self.api.journal):
            if entry.at < since:
                return None
            if (entry.method == "POST" and entry.plural == "pods" and entry.name == name
                    and entry.namespace == namespace and entry.user_agent.startswith("kopf")):
                return entry.at
        return None

    def patch_time(self, namespace: str, name: str, since: float) -> float:
        """When the first status PATCH of that pod since ``since`` arrived (the injected failure)."""
        first = None
        for entry in reversed(self.api.journal):
            if entry.at < since:
                break
            if entry.method == "PATCH" and entry.plural == "pods" and entry.name == name \
                    and entry.namespace == namespace and entry.subresource == "status":
                first = entry.at
        if first is None:
            raise LookupError(name)
        return first


async def wait_until(check: Any, timeout: float, what: str, poll: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(poll)


async def wait_for_operator(api: ApiServerEmulator, operator: OperatorProcess, timeout: float = 30.0) -> None:
    def watching() -> bool:
        assert operator.process is not None
        if operator.process.poll() is not None:
            raise RuntimeError(f"operator exited with {operator.process.returncode}; see {operator.workdir}")
        return any(e.action == "WATCH" and e.plural == PLURAL for e in api.journal)

    await wait_until(watching, timeout, "the operator to watch TrainingJobs", poll=0.05)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def histogram_mean(metrics: str, name: str) -> float | None:
    values = {}
    for line in metrics.splitlines():
        for suffix in ("_sum", "_count"):
            if line.startswith(f"{name}{suffix} "):
                values[suffix] = float(line.split()[-1])
    if values.get("_count"):
        return values["_sum"] / values["_count"]
    return None


# --- the phases -----------------------------------------------------------------------------------


async def inject_wave(cluster: Cluster, ns: str, wave: list[str], rng: random.Random,
                      latencies: list[float]) -> list[tuple[str, str, dict[str, str]]]:
    """Fail one random pod in each job of the wave at once; time each replacement's create."""
    victims = []
    for job in wave:
        before = cluster.uids(ns, job)
        victims.append((job, rng.choice(sorted(before)), before))
    marked = time.monotonic()
    await asyncio.gather(*(cluster.api.finish_pod(ns, pod, 1) for _, pod, _ in victims))
    for _, pod, _ in victims:
        await wait_until(lambda p=pod: cluster.create_request_after(ns, p, marked) is not None, 30,
                         f"replacement of {pod}")
        created = cluster.create_request_after(ns, pod, marked)
        assert created is not None
        latencies.append(created - cluster.patch_time(ns, pod, marked))
    return victims


def latency_summary(values: list[float]) -> dict[str, float]:
    return {
        "count": len(values),
        "p50": round(1000 * statistics.median(values), 2),
        "p90": round(1000 * percentile(values, 90), 2),
        "p99": round(1000 * percentile(values, 99), 2),
        "max": round(1000 * max(values), 2),
        "mean": round(1000 * statistics.fmean(values), 2),
    }


async def failover_phase(args: argparse.Namespace, redis_url: str, workdir: Path) -> dict[str, Any]:
    ns, rng = "bench", random.Random(args.seed)
    pods_per_job = args.trainers + args.embedding_servers + 1
    async with ApiServerEmulator() as api, kmock.Server(api):
        cluster = Cluster(api)
        operator = OperatorProcess(str(api.url).rstrip("/"), redis_url, workdir, args.tick)
        operator.start()
        try:
            await wait_for_operator(api, operator)
            rss_idle = operator.rss_mb()
            partial = [f"p{i:03d}" for i in range(args.jobs)]
            full = [f"f{i:03d}" for i in range(args.full_jobs)]
            for name in partial:
                await cluster.create_job(job_manifest(name, ns, args.trainers, args.embedding_servers, "partial"))
            for name in full:
                await cluster.create_job(job_manifest(name, ns, args.trainers, args.embedding_servers, "full"))
            started = time.monotonic()
            await wait_until(lambda: cluster.all_running(ns, partial + full, pods_per_job), 120, "all jobs running",
                             poll=0.05)
            startup_s = time.monotonic() - started

            latencies: dict[int, list[float]] = {}
            restarted_partial: list[int] = []
            failures_at = time.monotonic()
            cpu_before = operator.cpu_s()
            for concurrency, count in ((1, args.isolated_failures), (args.concurrency, args.failures)):
                remaining = count
                while remaining > 0:
                    wave = rng.sample(partial, min(concurrency, remaining, len(partial)))
                    victims = await inject_wave(cluster, ns, wave, rng, latencies.setdefault(concurrency, []))
                    await wait_until(lambda: cluster.all_running(ns, partial + full, pods_per_job), 60, "recovery",
                                     poll=0.05)
                    for job, _, before in victims:  # after recovery: any extra restart would show
                        after = cluster.uids(ns, job)
                        restarted_partial.append(sum(1 for name in before if after.get(name) != before[name]))
                    remaining -= len(wave)
            failures_until = time.monotonic()
            cpu_failures = operator.cpu_s() - cpu_before
            requests = cluster.operator_requests(failures_at, failures_until)

            restarted_full = []
            for job in full:
                before = cluster.uids(ns, job)
                await api.finish_pod(ns, rng.choice(sorted(before)), 1)
                await wait_until(lambda j=job, b=before: all(cluster.uids(ns, j).get(n) not in (None, b[n])
                                                             for n in b), 60, f"full restart of {job}", poll=0.05)
                await wait_until(lambda: cluster.all_running(ns, partial + full, pods_per_job), 60, "recovery",
                                 poll=0.05)
                after = cluster.uids(ns, job)
                restarted_full.append(sum(1 for name in before if after.get(name) != before[name]))
            metrics = operator.metrics()
        finally:
            operator.stop()
            await api.stop_kubelet()

    by_kind: dict[str, int] = {}
    for entry in requests:
        kind = f"{entry.method} {entry.plural}{'/' + entry.subresource if entry.subresource else ''}"
        by_kind[kind] = by_kind.get(kind, 0) + 1
    failures = sum(len(v) for v in latencies.values())
    return {
        "jobs": {"partial": args.jobs, "full": args.full_jobs, "pods_per_job": pods_per_job},
        "startup_s": round(startup_s, 3),
        "failures": failures,
        "failure_to_create_ms": {"all": latency_summary([x for v in latencies.values() for x in v]),
                                 **{f"concurrency_{c}": latency_summary(v) for c, v in sorted(latencies.items())}},
        "operator_detect_to_create_ms_mean": round(1000 * (histogram_mean(
            metrics, "trainingjob_failure_to_replacement_seconds") or 0.0), 2),
        "reconcile_step_ms_mean": round(1000 * (histogram_mean(metrics, "trainingjob_reconcile_seconds") or 0.0), 3),
        "api_requests_per_failure": round(len(requests) / failures, 2),
        "api_requests_per_failure_by_kind": {k: round(v / failures, 2) for k, v in sorted(by_kind.items())},
        "operator_cpu_ms_per_failure": round(1000 * cpu_failures / failures, 2),
        "pods_restarted_per_failure": {
            "partial": {"mean": statistics.fmean(restarted_partial), "max": max(restarted_partial)},
            "full": {"mean": statistics.fmean(restarted_full) if restarted_full else None,
                     "max": max(restarted_full) if restarted_full else None},
            "expected": {"partial": 1, "full": pods_per_job},
        },
        "operator_rss_idle_mb": round(rss_idle, 1),
    }


async def scale_phase(args: argparse.Namespace, redis_url: str, workdir: Path) -> dict[str, Any]:
    ns = "scale"
    trainers, servers = args.scale_pods - 1 - max(1, args.scale_pods // 3), max(1, args.scale_pods // 3)
    async with ApiServerEmulator() as api, kmock.Server(api):
        cluster = Cluster(api)
        operator = OperatorProcess(str(api.url).rstrip("/"), redis_url, workdir, args.tick)
        operator.start()
        try:
            await wait_for_operator(api, operator)
            await asyncio.sleep(1.0)
            rss_idle = operator.rss_mb()
            jobs = [f"s{i:03d}" for i in range(args.scale_jobs)]
            started = time.monotonic()
            for name in jobs:
                await cluster.create_job(job_manifest(name, ns, trainers, servers, "partial"))
            await wait_until(lambda: cluster.all_running(ns, jobs, args.scale_pods), 240, "all scale jobs running",
                             poll=0.2)
            startup_s = time.monotonic() - started
            await asyncio.sleep(3 * args.tick)  # a few ticks of every coordinator
            steady_from, cpu_from = time.monotonic(), operator.cpu_s()
            await asyncio.sleep(args.steady_s)
            steady = cluster.operator_requests(steady_from)
            cpu_steady = operator.cpu_s() - cpu_from
            rss = operator.rss_mb()
        finally:
            operator.stop()
            await api.stop_kubelet()
    return {
        "jobs": args.scale_jobs, "pods_per_job": args.scale_pods, "pods": args.scale_jobs * args.scale_pods,
        "startup_s": round(startup_s, 2),
        "operator_rss_idle_mb": round(rss_idle, 1),
        "operator_rss_mb": round(rss, 1),
        "operator_rss_per_job_kb": round(1024 * (rss - rss_idle) / args.scale_jobs, 1),
        "steady_state_api_requests_per_s": round(len(steady) / args.steady_s, 2),
        "steady_state_operator_cpu_percent": round(100 * cpu_steady / args.steady_s, 1),
    }


# --- reporting ------------------------------------------------------------------------------------


def print_table(result: dict[str, Any]) -> None:
    f, s = result["failover"], result["scale"]
    latency_rows = [
        (f"failure -> replacement create, {key.replace('_', ' ')}",
         f"p50 {lat['p50']} ms, p90 {lat['p90']} ms, p99 {lat['p99']} ms, max {lat['max']} ms (n={lat['count']})")
        for key, lat in f["failure_to_create_ms"].items()
    ]
    kinds = ", ".join(f"{k}: {v}" for k, v in f["api_requests_per_failure_by_kind"].items())
    rows = [
        ("failures injected", f"{f['failures']} over {f['jobs']['partial']} partial jobs "
                              f"({f['jobs']['pods_per_job']} pods each)"),
        *latency_rows,
        ("operator: detection -> create request (mean)", f"{f['operator_detect_to_create_ms_mean']} ms"),
        ("reconcile step (mean)", f"{f['reconcile_step_ms_mean']} ms"),
        ("API requests per failure", f"{f['api_requests_per_failure']} ({kinds})"),
        ("operator CPU per failure", f"{f['operator_cpu_ms_per_failure']} ms"),
        ("pods restarted per failure: partial", f"{f['pods_restarted_per_failure']['partial']['mean']:.2f} "
                                                f"(max {f['pods_restarted_per_failure']['partial']['max']})"),
        ("pods restarted per failure: full", f"{f['pods_restarted_per_failure']['full']['mean']} "
                                             f"(expected {f['jobs']['pods_per_job']})"),
        ("operator RSS idle", f"{s['operator_rss_idle_mb']} MB"),
        (f"operator RSS, {s['jobs']} jobs x {s['pods_per_job']} pods",
         f"{s['operator_rss_mb']} MB (+{s['operator_rss_per_job_kb']} KB per job); all running in "
         f"{s['startup_s']} s"),
        ("steady state with all jobs running", f"{s['steady_state_api_requests_per_s']} API requests/s, "
                                               f"{s['steady_state_operator_cpu_percent']}% of a core"),
    ]
    width = max(len(k) for k, _ in rows)
    print()
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")
    print(f"\nwritten to {RESULTS}")


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tj-bench-") as tmp:
        workdir = Path(tmp)
        with EmbeddedRedis(workdir / "redis") as redis_url:
            failover = await failover_phase(args, redis_url, workdir)
            scale = await scale_phase(args, redis_url, workdir)
            log = (workdir / "operator.log").read_text(errors="replace").splitlines()
    errors = [line for line in log if '"level": "error"' in line or "Traceback" in line]
    return {
        "benchmark": "operator_failover",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "args": vars(args),
        "failover": failover,
        "scale": scale,
        "operator_log_errors": errors[:20],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20, help="partial-recovery jobs in the failover phase")
    parser.add_argument("--full-jobs", type=int, default=3, help="full-recovery jobs (one failure each)")
    parser.add_argument("--trainers", type=int, default=4)
    parser.add_argument("--embedding-servers", type=int, default=3)
    parser.add_argument("--isolated-failures", type=int, default=20, help="failures injected one at a time")
    parser.add_argument("--failures", type=int, default=100, help="failures injected --concurrency at a time")
    parser.add_argument("--concurrency", type=int, default=10, help="jobs failing at the same time")
    parser.add_argument("--scale-jobs", type=int, default=100)
    parser.add_argument("--scale-pods", type=int, default=10, help="pods per job in the scale phase")
    parser.add_argument("--steady-s", type=float, default=10.0, help="steady-state observation window")
    parser.add_argument("--tick", type=float, default=2.0, help="the operator's reconcile tick")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    result = asyncio.run(main_async(args))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    if result["operator_log_errors"]:
        print(f"\noperator logged {len(result['operator_log_errors'])} error lines (see the JSON)")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
