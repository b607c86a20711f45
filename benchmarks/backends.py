"""The two shells a benchmark runs a TrainingJob through, measured the same way.

- ``LocalBackend``: ``LocalSupervisor`` with every replica a process on this machine (what
  ``trainingjob run`` does).
- ``KubernetesBackend``: the kopf operator on the API-server emulator with every pod run by the faithful
  process kubelet (``tests/support/kubelet.py``: own network namespace and IP, the pod's volumes, uid
  10001, probes at real timing unless scaled). Needs root, as the project's tests do.

Both get the same failure injector (SIGKILL into a replica's process at times counted from the moment
every trainer has trained, so a slower pod start does not shift the schedule) and the same watcher,
which reads the job's members from Redis every 50 ms and times each replacement from the kill until
the new instance serves (servers: registered with an endpoint; trainers: registered). Everything a
row reports is read from the job's Redis keys or the backend's own record, never from the other shell.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the test cluster lives in tests/support, beside the shipped package
    sys.path.insert(0, str(ROOT))

from trainingjob_operator.api import TrainingJob, parse_manifest  # noqa: E402
from trainingjob_operator.coordination import Coordination  # noqa: E402
from trainingjob_operator.local.redis_server import EmbeddedRedis  # noqa: E402
from trainingjob_operator.local.supervisor import LocalSupervisor, RunOptions  # noqa: E402
from trainingjob_operator.reconcile import desired_replicas  # noqa: E402
from trainingjob_operator.tuner import lost_samples  # noqa: E402

NAMESPACE = "ml"  # the test cluster's namespace; local jobs use it too so keys look alike


@dataclass(frozen=True)
class Kill:
    replica: str  # "embedding-server-0"
    after_s: float  # since every trainer had trained


def parse_schedule(text: str) -> list[Kill]:
    """``embedding-server/0@14s,trainer/1@22s`` (the ``--inject-failures`` form of scheduled kills)."""
    kills = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        target, _, at = item.partition("@")
        role, _, rank = target.partition("/")
        kills.append(Kill(f"{role}-{int(rank)}", float(at.removesuffix("s"))))
    return sorted(kills, key=lambda k: k.after_s)


@dataclass
class Outcome:
    """What one run of one job showed, read from its Redis keys and its backend."""

    status: str
    wall_s: float
    coord: Coordination
    job: TrainingJob
    kills: list[dict[str, Any]] = field(default_factory=list)  # replica, at_s, replacement_s
    restarts: dict[str, int] = field(default_factory=dict)  # role -> replacements
    probe_kills: list[str] = field(default_factory=list)
    keys: dict[str, Any] = field(default_factory=dict)  # the job's Redis keys when it ended (read_job)
    extra: dict[str, Any] = field(default_factory=dict)


def read_job(coord: Coordination, job: TrainingJob) -> dict[str, Any]:
    """Everything a benchmark row needs from the job's Redis keys, read before the job is deleted (the
    operator removes them with it)."""
    failures = coord.failures()
    names = {f"{f.get('role')}-{f.get('rank')}" for f in failures}
    return {
        "results": [r for rank in range(job.spec.replicas.trainer.replicas) if (r := coord.result(rank)) is not None],
        "failures": failures,
        "recoveries": {name: coord.recoveries(name) for name in names},
        "lost_samples": lost_samples(coord, job.spec),
        "checkpoints": coord.checkpoints(),
        "curve": coord.curve(),
    }


class Watcher(threading.Thread):
    """Polls the job's members; ``replacement_s`` times a kill until its replacement serves."""

    def __init__(self, coord: Coordination, job: TrainingJob) -> None:
        super().__init__(name="watcher", daemon=True)
        self.coord, self.names = coord, [rid.name for rid in desired_replicas(job.spec)]
        self.current: dict[str, tuple[str, bool]] = {}  # replica -> (instance, serving)
        self.changes: list[tuple[float, str, str, bool]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.05):
            with contextlib.suppress(Exception):
                for name in self.names:
                    role, _, rank = name.rpartition("-")
                    member = self.coord.member(role, int(rank))
                    if member is None:
                        continue
                    state = (member.instance, bool(member.endpoint) or role == "trainer")
                    if self.current.get(name) != state:
                        self.current[name] = state
                        self.changes.append((time.monotonic(), name, *state))

    def replacement_s(self, name: str, killed_at: float, instance: str) -> float | None:
        for at, who, new_instance, serving in self.changes:
            # The coordinator fences a failed instance as "fenced:<instance>": that is no replacement.
            if who == name and at >= killed_at and new_instance != instance and serving \
                    and not new_instance.startswith("fenced:"):
                return round(at - killed_at, 3)
        return None


class Injector:
    """Kills replicas on the schedule, counted from when every trainer has trained."""

    def __init__(self, kills: list[Kill], pid: Callable[[str], int | None], watcher: Watcher,
                 coord: Coordination, trainers: int) -> None:
        self.pending, self.pid, self.watcher = list(kills), pid, watcher
        self.coord, self.trainers = coord, trainers
        self.origin: float | None = None
        self.done: list[dict[str, Any]] = []

    def tick(self) -> None:
        if self.origin is None:
            progress = self.coord.all_progress(self.trainers)
            if len(progress) == self.trainers and all(p.samples > 0 for p in progress.values()):
                self.origin = time.monotonic()
            return
        while self.pending and time.monotonic() - self.origin >= self.pending[0].after_s:
            kill = self.pending.pop(0)
            pid = self.pid(kill.replica)
            instance = self.watcher.current.get(kill.replica, ("", False))[0]
            if pid is None:
                self.done.append({"replica": kill.replica, "at_s": kill.after_s, "skipped": "not running"})
                continue
            os.kill(pid, signal.SIGKILL)
            self.done.append({"replica": kill.replica, "at_s": kill.after_s, "killed_at": time.monotonic(),
                              "instance": instance})

    def results(self) -> list[dict[str, Any]]:
        out = []
        for k in self.done:
            row = {"replica": k["replica"], "at_s": k["at_s"]}
            if "killed_at" in k:
                row["replacement_s"] = self.watcher.replacement_s(k["replica"], k["killed_at"], k["instance"])
            else:
                row["skipped"] = k["skipped"]
            out.append(row)
        return out


def job_from(body: dict[str, Any]) -> TrainingJob:
    return parse_manifest(body)


class LocalBackend:
    name = "local"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._redis: EmbeddedRedis | None = None
        self.redis_url = ""

    def __enter__(self) -> LocalBackend:
        self._redis = EmbeddedRedis(self.workdir / "redis")
        self.redis_url = self._redis.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._redis is not None:
            self._redis.stop()

    def run(self, body: dict[str, Any], kills: list[Kill], timeout_s: float = 1800) -> Outcome:
        job = job_from(body)
        supervisor = LocalSupervisor(job, RunOptions(workdir=self.workdir / job.name, redis_url=self.redis_url))
        out: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: out.update(supervisor.run()), daemon=True)
        started = time.monotonic()
        thread.start()
        while supervisor.coord is None:
            time.sleep(0.05)
        coord = supervisor.coord
        watcher = Watcher(coord, job)
        watcher.start()

        def pid(name: str) -> int | None:
            proc = supervisor.processes.get(name)
            return proc.pid if proc is not None and proc.poll() is None else None

        injector = Injector(kills, pid, watcher, coord, job.spec.replicas.trainer.replicas)
        while thread.is_alive() and time.monotonic() - started < timeout_s:
            injector.tick()
            time.sleep(0.05)
        if thread.is_alive():
            supervisor.request_stop()
            thread.join(60)
        watcher.stopped.set()
        return Outcome(status=out.get("status", "Timeout"), wall_s=float(out.get("wall_seconds", 0.0)),
                       coord=coord, job=job, keys=read_job(coord, job),
                       kills=injector.results(), restarts=_by_role(out.get("restarts", {})),
                       extra={"summary": out})


def _by_role(per_replica: dict[str, int]) -> dict[str, int]:
    roles: dict[str, int] = {}
    for name, count in per_replica.items():
        roles[name.rpartition("-")[0]] = roles.get(name.rpartition("-")[0], 0) + count
    return roles


class KubernetesBackend:
    """One emulated cluster (API server, operator, faithful kubelet, Redis on its bridge) for every run."""

    name = "kubernetes"

    def __init__(self, workdir: Path, time_scale: float = 1.0) -> None:
        self.workdir, self.time_scale = workdir, time_scale
        self._loop = asyncio.new_event_loop()
        self._stack: contextlib.AsyncExitStack | None = None
        self.cluster: Any = None

    def __enter__(self) -> KubernetesBackend:
        if os.geteuid() != 0:
            raise SystemExit("the kubernetes backend runs pods in network namespaces: run as root (CI does)")
        from tests.support.cluster import faithful_cluster

        async def enter() -> Any:
            self._stack = contextlib.AsyncExitStack()
            return await self._stack.enter_async_context(faithful_cluster(self.workdir, time_scale=self.time_scale))

        self.cluster = self._loop.run_until_complete(enter())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stack is not None:
            self._loop.run_until_complete(self._stack.aclose())
        self._loop.close()

    def run(self, body: dict[str, Any], kills: list[Kill], timeout_s: float = 1800) -> Outcome:
        return self._loop.run_until_complete(self._run(body, kills, timeout_s))

    async def _run(self, body: dict[str, Any], kills: list[Kill], timeout_s: float) -> Outcome:
        cluster, kubelet = self.cluster.cluster, self.cluster.kubelet
        body = {**body, "metadata": {**body["metadata"], "namespace": NAMESPACE}}
        job = job_from(body)
        coord = cluster.coordination(job.name)
        coord.clear()
        probe_kills_before = len(kubelet.probe_kills)
        started = time.monotonic()
        await cluster.create_job(body)
        watcher = Watcher(coord, job)
        watcher.start()

        def pid(name: str) -> int | None:
            try:
                return int(kubelet.process(f"{job.name}-{name}").pid)
            except LookupError:
                return None

        injector = Injector(kills, pid, watcher, coord, job.spec.replicas.trainer.replicas)
        phase = None
        while time.monotonic() - started < timeout_s:
            phase = cluster.phase(job.name)
            if phase in ("Succeeded", "Failed"):
                break
            await asyncio.to_thread(injector.tick)
            await asyncio.sleep(0.05)
        wall = time.monotonic() - started
        watcher.stopped.set()
        status = cluster.status(job.name)
        restarts = {role: int(r.get("restarts", 0)) for role, r in status.get("replicas", {}).items()}
        keys = read_job(coord, job)
        await cluster.delete_job(job.name)
        with contextlib.suppress(Exception):
            await _wait(lambda: not cluster.pods(job.name), 120)
        return Outcome(status=phase or "Timeout", wall_s=round(wall, 3), coord=coord, job=job, keys=keys,
                       kills=injector.results(), restarts=restarts,
                       probe_kills=list(kubelet.probe_kills[probe_kills_before:]),
                       extra={"status": status, "pods_started": list(kubelet.started)})


async def _wait(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError
        await asyncio.sleep(0.2)
