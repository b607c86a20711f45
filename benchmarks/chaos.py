"""Chaos on the Kubernetes path: every role, Redis and the operator fail at random while a job trains.

The job runs as it would on a cluster: the operator is its own process (``python -m
trainingjob_operator.k8s.main``) logged in to the API-server emulator, every pod is a real process of the
faithful kubelet (its own network namespace, the pod's volumes, uid 10001, probes and grace periods at
real timing), and Redis is a real redis-server with AOF. While the job trains, the harness:

- kills every replica at random (SIGKILL; a share of them hang instead, SIGSTOP, and must be found by their
  silent heartbeat), each replica failing with the given mean time between failures;
- kills Redis (SIGKILL) and starts it again from its AOF after a few seconds;
- kills the operator (SIGKILL) in the middle of a recovery (just after a replica was killed) and starts
  it again: it must rebuild its view from the cluster and Redis, and no running pod may notice;
- corrupts the newest full checkpoint of a shard (flipped bytes) and kills that shard: its replacement must
  find the damage and fall back to an older checkpoint, never load it;
- makes a shard's checkpoint storage unwritable for a while (and keeps it so when the shard's pod is replaced
  meanwhile): training goes on, the job shows ``CheckpointFailing`` and clears it once saves succeed again.

It first runs the same job without failures (the AUC to compare against), then the chaos run, and prints a
table: kills by target, detection and recovery p50/p99, lost samples, PLS, AUC against the failure-free run,
corrupt checkpoints found and fallen back from (and loaded: must be 0), processes of the job left once it
ended (must be 0). Writes ``benchmarks/results/chaos.json`` (or ``--out``).

Needs root (network namespaces), as the project's tests do. ``--short`` is the version ``make test`` runs.

Usage: python benchmarks/chaos.py [--minutes 14] [--mtbf-s 30] [--redis-kills 10] [--operator-kills 10]
       [--trainers 3 --servers 3] [--samples N (default: sized to outlast the window)] [--stop-at 0.99]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import kmock
import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the test cluster lives in tests/support, beside the shipped package
    sys.path.insert(0, str(ROOT))

from backends import Watcher, read_job  # noqa: E402
from operator_failover import write_kubeconfig  # noqa: E402

from tests.support.emulator import ApiServerEmulator  # noqa: E402
from tests.support.kubelet import FaithfulKubelet  # noqa: E402
from trainingjob_operator.api import TrainingJob, parse_manifest  # noqa: E402
from trainingjob_operator.api.spec import API_VERSION, GROUP, KIND, PLURAL, VERSION, Role  # noqa: E402
from trainingjob_operator.coordination import Coordination  # noqa: E402
from trainingjob_operator.k8s.resources import checkpoint_claim_name  # noqa: E402
from trainingjob_operator.local.redis_server import EmbeddedRedis  # noqa: E402
from trainingjob_operator.reconcile import ReplicaId, desired_replicas  # noqa: E402

NAMESPACE = "ml"
RESULTS = ROOT / "benchmarks" / "results"
_FULL = re.compile(r"^\d+-full$")
TJ = kmock.resource(GROUP, VERSION, PLURAL)
JOBS_URL = f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}"


# --- the plan (pure) ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    at_s: float  # since every trainer had trained
    kind: str  # kill, hang, redis, operator, corrupt, unwritable
    target: str = ""  # a replica (embedding-server-0), or "" for Redis and the operator


@dataclass(frozen=True)
class ChaosPlan:
    window_s: float  # failures are drawn in [0, window_s)
    mtbf_s: float = 30.0  # of each replica
    hang_fraction: float = 0.1  # of replica failures that are hangs (SIGSTOP) instead of kills
    redis_kills: int = 10
    operator_kills: int = 10
    corruptions: int = 3
    unwritable: int = 2
    unwritable_s: float = 30.0
    redis_down_s: float = 3.0
    operator_down_s: float = 2.0
    seed: int = 0


def schedule(plan: ChaosPlan, replicas: list[str], shards: int) -> list[Event]:
    """Every replica fails as a Poisson process of rate 1/mtbf; Redis, operator, corruption and storage
    faults are spread evenly over the window (offset so that no two land together)."""
    rng = random.Random(plan.seed)
    events = []
    for replica in replicas:
        at = rng.expovariate(1.0 / plan.mtbf_s)
        while at < plan.window_s:
            events.append(Event(round(at, 3), "hang" if rng.random() < plan.hang_fraction else "kill", replica))
            at += rng.expovariate(1.0 / plan.mtbf_s)

    def spread(count: int, offset: float, kind: str, targets: list[str]) -> None:
        # Evenly spaced, shifted by a few seconds per kind so that two kinds never coincide (10 Redis kills
        # and 2 storage faults over an hour would otherwise meet at 30 minutes).
        shift = 1.5 * ["redis", "operator", "corrupt", "unwritable"].index(kind)
        for i in range(count):
            at = min(plan.window_s * (i + offset) / count + shift, plan.window_s * 0.999)
            events.append(Event(round(at, 3), kind, targets[i % len(targets)]))

    servers = [f"{Role.EMBEDDING_SERVER.value}-{k}" for k in range(shards)]
    spread(plan.redis_kills, 0.5, "redis", [""])
    spread(plan.operator_kills, 0.25, "operator", replicas)  # the replica killed just before the operator
    spread(plan.corruptions, 0.75, "corrupt", servers)
    spread(plan.unwritable, 0.1, "unwritable", servers[::-1])
    return sorted(events, key=lambda e: e.at_s)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))], 3)


# --- the job -----------------------------------------------------------------------------------------------


def chaos_manifest(name: str, samples: int, trainers: int, servers: int, seed: int = 0,
                   max_failed_saves: int = 1000) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "replicas": {"trainer": {"replicas": trainers}, "embeddingServer": {"replicas": servers}},
            "model": {"rowsPerTable": 50_000, "bottomMlp": [128, 64], "topMlp": [128, 64]},
            "data": {"trainSamples": samples, "evalSamples": 50_000, "batchSize": 1024, "seed": seed},
            "training": {"evalEverySamples": max(samples // 10, 1), "evalCurveSamples": 16_384},
            "recovery": {
                # 10 s of silence is a hang: a busy two-core machine can delay a heartbeat by seconds.
                "mode": "partial", "mtbfPriorHours": 0.01, "plsTarget": 0.02, "heartbeatTimeoutSeconds": 10,
                # A replica failing every 30 s is the test, not a reason to give up or to back off.
                "restartBudget": {"maxRestarts": 100_000, "windowSeconds": 600},
                "failurePolicy": {"backoff": {"enabled": False}},
                "checkpoint": {"initialIntervalSeconds": 5, "minIntervalSeconds": 2, "strategy": "full",
                               "maxConsecutiveFailures": max_failed_saves},
            },
        },
    }


# --- the cluster -------------------------------------------------------------------------------------------


@dataclass
class OperatorProcess:
    """The operator as its own process, so SIGKILL kills it as a node failure would."""

    server: str
    redis_url: str
    workdir: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        env = {**os.environ, "KUBECONFIG": str(write_kubeconfig(self.server, self.workdir)),
               "TJ_DEFAULT_REDIS_URL": self.redis_url}
        with (self.workdir / "operator.log").open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "trainingjob_operator.k8s.main", "--standalone", "--tick", "0.5",
                 "--log-level", "WARNING", "--console-logs"], env=env, stdout=log, stderr=subprocess.STDOUT)
        self.starts += 1

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Harness:
    api: ApiServerEmulator
    kubelet: FaithfulKubelet
    redis: EmbeddedRedis
    operator: OperatorProcess

    def phase(self, job: str) -> str | None:
        key = (TJ, NAMESPACE, job)
        if key not in self.api.objects or self.api.objects[key].deleted:
            return None
        return (self.api.objects[key].raw.get("status") or {}).get("phase")

    def status(self, job: str) -> dict[str, Any]:
        key = (TJ, NAMESPACE, job)
        return dict(self.api.objects[key].raw.get("status") or {}) if key in self.api.objects else {}

    def condition(self, job: str, type_: str) -> str | None:
        return next((c["status"] for c in self.status(job).get("conditions", []) if c["type"] == type_), None)

    def pods(self, job: str) -> list[dict[str, Any]]:
        return [p for p in self.api.live("pods", NAMESPACE)
                if p["metadata"].get("labels", {}).get(f"{GROUP}/job") == job]

    def pid(self, pod: str) -> int | None:
        try:
            return int(self.kubelet.process(pod).pid)
        except LookupError:
            return None

    async def create_job(self, body: dict[str, Any]) -> None:
        async with self.api.post(JOBS_URL, json=body) as response:
            assert response.status < 300, await response.text()

    async def delete_job(self, name: str) -> None:
        async with self.api.delete(f"{JOBS_URL}/{name}"):
            pass

    def operator_deleted(self, pod: str, since: float) -> float | None:
        """When the operator first deleted that pod after ``since`` (monotonic, the API server's clock)."""
        for entry in self.api.journal:
            if entry.at >= since and entry.method == "DELETE" and entry.plural == "pods" and entry.name == pod \
                    and entry.user_agent.startswith("kopf"):
                return entry.at
        return None


@contextlib.asynccontextmanager
async def harness(workdir: Path, time_scale: float):  # type: ignore[no-untyped-def]
    async with ApiServerEmulator() as api, kmock.Server(api):
        api.pod_startup_s = None
        api.hold_deleted_pods = True
        async with FaithfulKubelet(api, workdir / "node", namespace=NAMESPACE, time_scale=time_scale,
                                   extra_binds=[ROOT]) as kubelet:
            redis = EmbeddedRedis(workdir / "redis", host=kubelet.bridge_ip, appendonly=True)
            redis.start()
            operator = OperatorProcess(str(api.url).rstrip("/"), redis.url, workdir)
            operator.start()
            try:
                yield Harness(api, kubelet, redis, operator)
            finally:
                operator.stop()
                redis.stop()


# --- one run -----------------------------------------------------------------------------------------------


@dataclass
class Done:
    kind: str
    target: str
    at_s: float
    killed_at: float = 0.0  # monotonic
    instance: str = ""
    detected_s: float | None = None
    recovered_s: float | None = None
    skipped: str = ""  # why nothing was done: "not running", "no checkpoint yet"
    note: str = ""


@dataclass
class RunRecord:
    status: str
    wall_s: float
    keys: dict[str, Any]
    done: list[Done] = field(default_factory=list)
    checkpoint_failing_seen: int = 0
    checkpoint_failing_cleared: int = 0
    corrupted: list[dict[str, Any]] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    final_status: dict[str, Any] = field(default_factory=dict)
    probe_kills: int = 0
    pods_started: int = 0  # by the kubelet for this job: the first ones plus every replacement
    replicas: int = 0


def _newest_full(folder: Path) -> Path | None:
    fulls = [d for d in folder.rglob("*") if d.is_dir() and _FULL.match(d.name) and (d / "MANIFEST.json").exists()]
    return max(fulls, key=lambda d: d.name) if fulls else None


def corrupt_newest_full(claim: Path) -> str | None:
    """Flip bytes in the middle of the biggest table file of the shard's newest full checkpoint."""
    entry = _newest_full(claim)
    if entry is None:
        return None
    victim = max(entry.glob("*.safetensors"), key=lambda f: f.stat().st_size)
    data = bytearray(victim.read_bytes())
    middle = len(data) // 2
    for i in range(middle, min(middle + 64, len(data))):
        data[i] ^= 0xFF
    victim.write_bytes(bytes(data))
    return entry.name


def _make_unwritable(root: Path, modes: dict[Path, int]) -> None:
    """Every folder of the claim read-only for its pod's user; ``modes`` keeps each one's mode from before the
    fault (folders made meanwhile included), for the restore."""
    with contextlib.suppress(OSError):
        for folder in [root, *root.rglob("*")]:
            if not folder.is_dir():
                continue
            mode = folder.stat().st_mode & 0o7777
            modes.setdefault(folder, mode)
            if mode != 0o555:
                folder.chmod(0o555)


def _restore_modes(modes: dict[Path, int]) -> None:
    for folder, mode in modes.items():
        with contextlib.suppress(OSError):
            folder.chmod(mode)


def job_processes(job: str) -> list[str]:
    """Processes whose environment names the job (its replicas): none may outlive it."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get("TJ_JOB") == job:
                found.append(f"{proc.pid} {' '.join(proc.info['cmdline'] or [])[:80]}")
    return found


async def run_job(h: Harness, body: dict[str, Any], events: list[Event], plan: ChaosPlan | None,
                  timeout_s: float, stop_at_fraction: float = 0.9) -> RunRecord:
    job: TrainingJob = parse_manifest(body)
    coord = Coordination(h.redis.url, NAMESPACE, job.name, patient=False)
    coord.clear()
    trainers = job.spec.replicas.trainer.replicas
    await h.create_job(body)
    started = time.monotonic()
    watcher = Watcher(coord, job)
    watcher.start()
    pending = list(events)
    done: list[Done] = []
    restores: list[tuple[float, str, Any]] = []  # (monotonic due, what, data)
    unwritable: dict[str, dict[Path, int]] = {}  # replica -> its claim's folders' modes from before the fault
    kept_unwritable_at = 0.0
    origin: float | None = None
    record = RunRecord(status="Timeout", wall_s=0.0, keys={}, replicas=len(desired_replicas(job.spec)))
    failing_was = False
    shown_at = 0.0
    probe_kills_before = len(h.kubelet.probe_kills)
    started_before = len(h.kubelet.started)

    def kill_replica(event: Event, sig: int) -> Done:
        pod = f"{job.name}-{event.target}"
        pid = h.pid(pod)
        uids = h.kubelet.pods(pod)  # a replica's instance is its pod's UID
        d = Done(event.kind, event.target, event.at_s, time.monotonic(), uids[-1] if uids else "")
        if pid is None:
            d.skipped = "not running"
            return d
        os.kill(pid, sig)
        return d

    def claim_of(replica: str) -> Path:
        return h.kubelet.claim_dir(checkpoint_claim_name(job.name, ReplicaId.parse(replica)))

    while time.monotonic() - started < timeout_s:
        phase = h.phase(job.name)
        if phase in ("Succeeded", "Failed"):
            record.status = phase
            break
        now = time.monotonic()
        if origin is None:
            with contextlib.suppress(Exception):
                progress = await asyncio.to_thread(coord.all_progress, trainers)
                if len(progress) == trainers and all(p.samples > 0 for p in progress.values()):
                    origin = now
                    print(f"  every trainer trained after {now - started:.0f}s: failures start", file=sys.stderr)
        else:
            trained = None
            with contextlib.suppress(Exception):
                trained = sum(p.samples for p in (await asyncio.to_thread(coord.all_progress, trainers)).values())
            if trained is not None and trained >= stop_at_fraction * job.spec.data.train_samples:
                pending = []  # the tail trains in peace: a kill in the last batches measures nothing
            while pending and now - origin >= pending[0].at_s:
                event = pending.pop(0)
                if event.kind in ("kill", "hang"):
                    done.append(kill_replica(event, signal.SIGKILL if event.kind == "kill" else signal.SIGSTOP))
                elif event.kind == "redis":
                    assert h.redis.process is not None
                    h.redis.process.kill()
                    h.redis.process.wait()
                    done.append(Done("redis", "", event.at_s, now))
                    restores.append((now + (plan.redis_down_s if plan else 3.0), "redis", None))
                elif event.kind == "operator":
                    done.append(kill_replica(Event(event.at_s, "kill", event.target), signal.SIGKILL))
                    await asyncio.sleep(0.3)  # the operator is now handling that failure
                    h.operator.kill()
                    done.append(Done("operator", "", event.at_s, time.monotonic()))
                    restores.append((time.monotonic() + (plan.operator_down_s if plan else 2.0), "operator", None))
                elif event.kind == "corrupt":
                    entry = corrupt_newest_full(claim_of(event.target))
                    if entry is None:
                        done.append(Done("corrupt", event.target, event.at_s, now, skipped="no checkpoint yet"))
                        continue
                    record.corrupted.append({"replica": event.target, "entry": entry, "at_unix": time.time()})
                    d = kill_replica(Event(event.at_s, "kill", event.target), signal.SIGKILL)
                    d.kind, d.note = "corrupt", entry
                    done.append(d)
                elif event.kind == "unwritable":
                    modes: dict[Path, int] = {}
                    _make_unwritable(claim_of(event.target), modes)
                    unwritable[event.target] = modes
                    done.append(Done("unwritable", event.target, event.at_s, now))
                    restores.append((now + (plan.unwritable_s if plan else 20.0), "unwritable", event.target))
        if unwritable and now - kept_unwritable_at >= 0.5:
            # The fault outlasts the pod: a replacement's volume setup (fsGroup ownership) makes the claim group
            # writable again, as a kubelet's does, which would end the fault whenever a kill of that shard came
            # first and leave its saves no time to fail. Broken storage stays broken for its whole window.
            kept_unwritable_at = now
            for target, modes in unwritable.items():
                _make_unwritable(claim_of(target), modes)
        for item in [r for r in restores if r[0] <= now]:
            restores.remove(item)
            _, what, data = item
            if what == "redis":
                await asyncio.to_thread(h.redis.start)
            elif what == "operator":
                h.operator.start()
            elif what == "unwritable":
                _restore_modes(unwritable.pop(data))
        if now - shown_at >= 15.0:
            shown_at = now
            with contextlib.suppress(Exception):
                trained_now = sum(p.samples for p in (await asyncio.to_thread(coord.all_progress, trainers)).values())
                running = sum(1 for p in h.pods(job.name) if (p.get("status") or {}).get("phase") == "Running")
                print(f"  {now - started:5.0f}s {phase or '-':<9} {trained_now:>10} samples, {running} pods running, "
                      f"{len(done)} failures done, {len(pending)} to come", file=sys.stderr, flush=True)
        failing = h.condition(job.name, "CheckpointFailing") == "True"
        if failing and not failing_was:
            record.checkpoint_failing_seen += 1
        if failing_was and not failing:
            record.checkpoint_failing_cleared += 1
        failing_was = failing
        await asyncio.sleep(0.05)
    # Whatever is still down comes back before the job's keys are read.
    for _, what, data in restores:
        if what == "redis":
            await asyncio.to_thread(h.redis.start)
        elif what == "operator":
            h.operator.start()
        elif what == "unwritable":
            _restore_modes(unwritable.pop(data))
    record.wall_s = round(time.monotonic() - started, 1)
    watcher.stopped.set()
    record.final_status = h.status(job.name)
    record.keys = read_job(coord, job)
    record.probe_kills = len(h.kubelet.probe_kills) - probe_kills_before
    record.pods_started = len(h.kubelet.started) - started_before
    for d in done:
        if d.kind in ("kill", "hang", "corrupt") and not d.skipped:
            deleted = h.operator_deleted(f"{job.name}-{d.target}", d.killed_at)
            d.detected_s = None if deleted is None else round(deleted - d.killed_at, 3)
            d.recovered_s = watcher.replacement_s(d.target, d.killed_at, d.instance)
    record.done = done
    await h.delete_job(job.name)
    deadline = time.monotonic() + 180
    while (h.pods(job.name) or h.phase(job.name) is not None) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)  # a process the kubelet has just killed is reaped
    record.orphans = job_processes(job.name)
    return record


# --- the report --------------------------------------------------------------------------------------------


def row_key(kind: str, target: str) -> str:
    """The table row of a failure: the replica's role, with the kind for anything but a plain kill."""
    role = target.rpartition("-")[0] if target and kind not in ("redis", "operator", "supervisor") else kind
    return f"{role} ({kind})" if kind in ("hang", "corrupt", "unwritable") else role


def target_table(failures: Iterable[tuple[str, object, float | None, float | None]]) -> dict[str, dict[str, Any]]:
    """(row, skipped (true, or why), detected after s, recovered after s) per failure -> count, skips and p50/p99
    per row."""
    rows: dict[str, dict[str, Any]] = {}
    for key, skipped, detected, recovered in failures:
        row = rows.setdefault(key, {"count": 0, "detected_s": [], "recovered_s": [], "skipped": 0})
        row["count"] += 1
        row["skipped"] += 1 if skipped else 0
        if detected is not None:
            row["detected_s"].append(detected)
        if recovered is not None:
            row["recovered_s"].append(recovered)
    return {k: {"count": v["count"], "skipped": v["skipped"],
                "detect_p50_s": percentile(v["detected_s"], 0.5), "detect_p99_s": percentile(v["detected_s"], 0.99),
                "recover_p50_s": percentile(v["recovered_s"], 0.5),
                "recover_p99_s": percentile(v["recovered_s"], 0.99)}
            for k, v in sorted(rows.items())}


def print_target_rows(table: dict[str, dict[str, Any]]) -> None:
    print(f"{'target':<30} {'count':>5} {'skip':>4} {'detect p50':>10} {'p99':>6} {'recover p50':>11} {'p99':>6}")

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    for target, row in table.items():
        print(f"{target:<30} {row['count']:>5} {row['skipped']:>4} {fmt(row['detect_p50_s']):>10} "
              f"{fmt(row['detect_p99_s']):>6} {fmt(row['recover_p50_s']):>11} {fmt(row['recover_p99_s']):>6}")


def summarize(chaos: RunRecord, baseline: RunRecord | None, plan: ChaosPlan) -> dict[str, Any]:
    keys = chaos.keys
    results = keys["results"]
    samples = sum(int(r.get("samples", 0)) for r in results)
    aucs = [float(r["auc"]) for r in results if r.get("auc") is not None]
    auc = statistics.fmean(aucs) if aucs else None
    base_auc = None
    if baseline is not None:
        base = [float(r["auc"]) for r in baseline.keys["results"] if r.get("auc") is not None]
        base_auc = statistics.fmean(base) if base else None
    table = target_table((row_key(d.kind, d.target), d.skipped, d.detected_s, d.recovered_s) for d in chaos.done)
    descriptions = [str(r.get("description", "")) for recs in keys["recoveries"].values() for r in recs.values()]
    corrupt_found = sum(len(re.findall(r"checkpoint \S+ corrupt", d)) for d in descriptions)

    def loads_after(c: dict[str, Any]) -> list[str]:
        """What the shard's replacements restored once that checkpoint was corrupted (before, it was intact)."""
        return [str(r.get("description", "")) for r in keys["recoveries"].get(c["replica"], {}).values()
                if float(r.get("time", 0.0)) >= c["at_unix"]]

    corrupt_loaded = sum(1 for c in chaos.corrupted for d in loads_after(c)
                         if re.search(rf"restored {re.escape(c['entry'])}\b", d))
    fallen_back = sum(1 for c in chaos.corrupted
                      if any(f"checkpoint {c['entry']} corrupt" in d for d in loads_after(c)))
    replica_failures = sum(1 for d in chaos.done if d.kind in ("kill", "hang", "corrupt") and not d.skipped)
    return {
        "status": chaos.status, "chaos_minutes": round(chaos.wall_s / 60.0, 2),
        "baseline_minutes": round(baseline.wall_s / 60.0, 2) if baseline else None,
        "failures_total": replica_failures + sum(1 for d in chaos.done if d.kind in ("redis", "operator")),
        "replica_failures": replica_failures,
        "redis_kills": sum(1 for d in chaos.done if d.kind == "redis"),
        "operator_kills": sum(1 for d in chaos.done if d.kind == "operator"),
        "by_target": table, "samples": samples, "lost_samples": round(keys["lost_samples"]),
        "pls": round(keys["lost_samples"] / samples, 5) if samples else None,
        "auc": round(auc, 5) if auc is not None else None,
        "auc_failure_free": round(base_auc, 5) if base_auc is not None else None,
        "auc_delta": round(auc - base_auc, 5) if auc is not None and base_auc is not None else None,
        "corruptions": chaos.corrupted, "corrupt_checkpoints_found": corrupt_found,
        "corruptions_fallen_back_from": fallen_back, "corrupt_checkpoints_loaded": corrupt_loaded,
        "checkpoint_failing_seen": chaos.checkpoint_failing_seen,
        "checkpoint_failing_cleared": chaos.checkpoint_failing_cleared,
        "job_failures_recorded": len(keys["failures"]), "probe_kills": chaos.probe_kills,
        # A replacement per replica failure and no more: killing Redis or the operator replaced no pod.
        "pods_started": chaos.pods_started, "pods_expected": chaos.replicas + replica_failures,
        "orphans": chaos.orphans, "plan": asdict(plan),
        "events": [asdict(d) for d in chaos.done],
    }


def print_table(s: dict[str, Any]) -> None:
    print(f"\nchaos run: {s['status']} after {s['chaos_minutes']} min (failure-free: {s['baseline_minutes']} min); "
          f"{s['failures_total']} failures: {s['replica_failures']} of replicas, {s['redis_kills']} of Redis, "
          f"{s['operator_kills']} of the operator")
    print_target_rows(s["by_target"])
    print(f"samples {s['samples']}, lost {s['lost_samples']}, PLS {s['pls']}; AUC {s['auc']} vs failure-free "
          f"{s['auc_failure_free']} (delta {s['auc_delta']})")
    print(f"corrupt checkpoints: {len(s['corruptions'])} made, {s['corrupt_checkpoints_found']} found, "
          f"{s['corruptions_fallen_back_from']} fallen back from, {s['corrupt_checkpoints_loaded']} loaded; "
          f"CheckpointFailing shown {s['checkpoint_failing_seen']}x, cleared {s['checkpoint_failing_cleared']}x; "
          f"probe kills {s['probe_kills']}; processes of the job left: {len(s['orphans'])}")
    print(f"pods started {s['pods_started']} for {s['pods_expected']} expected (the first ones and one replacement "
          "per replica failure)")


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    # Job names of this invocation only: the orphan check must not count another run's pods (a test beside a
    # benchmark) as this job's leftovers.
    run_id = secrets.token_hex(2)
    with contextlib.ExitStack() as stack:
        tmp = str(args.workdir) if args.workdir else \
            stack.enter_context(tempfile.TemporaryDirectory(prefix="tj-chaos-"))
        os.makedirs(tmp, exist_ok=True)
        os.chmod(tmp, 0o755)
        async with harness(Path(tmp), args.time_scale) as h:
            baseline = None
            window = args.minutes * 60.0
            if args.samples <= 0:
                # Sized so that even at the failure-free rate the job outlasts the window: every planned
                # failure happens, however fast the job trains between them.
                print("measuring the training rate (failure-free, 1M samples) ...", file=sys.stderr, flush=True)
                rate_body = chaos_manifest(f"rate-{run_id}", 1_000_000, args.trainers, args.servers)
                warmup = await run_job(h, rate_body, [], None, timeout_s=args.timeout_s)
                rate = sum(float(r.get("samples_per_second", 0.0)) for r in warmup.keys["results"])
                args.samples = int(rate * window * 1.15 / 100_000 + 1) * 100_000
                print(f"  {rate:.0f} samples/s: the job trains {args.samples} samples", file=sys.stderr, flush=True)
            body = chaos_manifest(f"chaos-{run_id}", args.samples, args.trainers, args.servers, seed=args.seed)
            job = parse_manifest(body)
            replicas = [rid.name for rid in desired_replicas(job.spec)]
            if args.baseline and args.baseline_from is None:
                print(f"failure-free run of {args.samples} samples ...", file=sys.stderr, flush=True)
                base_body = chaos_manifest(f"baseline-{run_id}", args.samples, args.trainers, args.servers,
                                           seed=args.seed)
                baseline = await run_job(h, base_body, [], None, timeout_s=args.timeout_s)
                print(f"  {baseline.status} in {baseline.wall_s:.0f}s", file=sys.stderr, flush=True)
            plan = ChaosPlan(window_s=window, mtbf_s=args.mtbf_s, hang_fraction=args.hang_fraction,
                             redis_kills=args.redis_kills, operator_kills=args.operator_kills,
                             corruptions=args.corruptions, unwritable=args.unwritable,
                             unwritable_s=args.unwritable_s, seed=args.seed)
            events = schedule(plan, replicas, job.spec.replicas.embedding_server.replicas)
            print(f"chaos run: {len(events)} failures planned over {window:.0f}s", file=sys.stderr, flush=True)
            chaos = await run_job(h, body, events, plan, timeout_s=args.timeout_s, stop_at_fraction=args.stop_at)
    summary = summarize(chaos, baseline, plan)
    if args.baseline_from is not None:
        earlier = json.loads(args.baseline_from.read_text())
        if (earlier.get("samples"), earlier.get("plan", {}).get("seed")) != (summary["samples"], args.seed):
            raise SystemExit(f"{args.baseline_from}: another job (samples, seed), its failure-free run is no baseline")
        summary.update(auc_failure_free=earlier["auc_failure_free"], baseline_minutes=earlier["baseline_minutes"],
                       baseline_from=str(args.baseline_from))
        if summary["auc"] is not None and earlier["auc_failure_free"] is not None:
            summary["auc_delta"] = round(summary["auc"] - earlier["auc_failure_free"], 5)
    return summary


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=0,
                        help="training samples of the job (0: sized to outlast the window at the failure-free rate)")
    parser.add_argument("--minutes", type=float, default=14.0, help="window in which failures are drawn")
    parser.add_argument("--mtbf-s", type=float, default=30.0, help="mean time between failures of each replica")
    parser.add_argument("--hang-fraction", type=float, default=0.1)
    parser.add_argument("--redis-kills", type=int, default=10)
    parser.add_argument("--operator-kills", type=int, default=10)
    parser.add_argument("--corruptions", type=int, default=3)
    parser.add_argument("--unwritable", type=int, default=2)
    parser.add_argument("--unwritable-s", type=float, default=30.0)
    parser.add_argument("--trainers", type=int, default=3)
    parser.add_argument("--servers", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-scale", type=float, default=1.0, help="probe and grace periods (1.0: real)")
    parser.add_argument("--timeout-s", type=float, default=3600.0)
    parser.add_argument("--no-baseline", dest="baseline", action="store_false")
    parser.add_argument("--baseline-from", type=Path, default=None,
                        help="a chaos JSON of the same job (samples, seed, replicas) whose failure-free run to reuse")
    parser.add_argument("--stop-at", type=float, default=0.99,
                        help="no failure once the job has trained this share of its samples")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the cluster's files (logs) here")
    parser.add_argument("--short", action="store_true", help="the version make test runs (about 2 minutes)")
    parser.add_argument("--out", type=Path, default=RESULTS / "chaos.json")
    args = parser.parse_args()
    if args.short:
        args.samples, args.minutes, args.mtbf_s, args.trainers, args.servers = 3_000_000, 1.2, 20.0, 2, 2
        args.redis_kills, args.operator_kills, args.corruptions, args.unwritable = 2, 2, 1, 1
        args.unwritable_s, args.hang_fraction, args.time_scale = 40.0, 0.15, 0.5
        args.timeout_s = min(args.timeout_s, 900.0)
    if os.geteuid() != 0:
        raise SystemExit("chaos runs pods in network namespaces: run as root (CI does)")
    # SIGTERM (a timeout, Ctrl-C from a CI runner) unwinds like Ctrl-C: the kubelet then stops every pod.
    signal.signal(signal.SIGTERM, _interrupt)
    summary = asyncio.run(main_async(args))
    print_table(summary)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
