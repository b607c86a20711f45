"""The operator's test cluster, shared by the operator tests and the benchmarks that drive the Kubernetes
path: the emulated API server, the operator in a thread of its own (as in its own process), and — with
:func:`faithful_cluster` — the faithful process kubelet and a redis-server on its bridge.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kmock
import kopf

from tests.support.emulator import ApiServerEmulator
from tests.support.kubelet import FaithfulKubelet
from tests.support.waiting import eventually
from trainingjob_operator.api.spec import API_VERSION, GROUP, KIND, PLURAL, VERSION
from trainingjob_operator.coordination import Coordination
from trainingjob_operator.k8s.config import OperatorConfig
from trainingjob_operator.k8s.coordinator import OperatorContext
from trainingjob_operator.k8s.main import serve
from trainingjob_operator.local.redis_server import EmbeddedRedis

ROOT = Path(__file__).resolve().parents[2]

NAMESPACE = "ml"
JOBS_URL = f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}"
TJ = kmock.resource(GROUP, VERSION, PLURAL)
TICK_S = 0.25


def manifest(name: str, *, trainers: int = 2, embedding_servers: int = 2, **spec: Any) -> dict[str, Any]:
    """A TrainingJob manifest; ``spec`` keys are merged into the spec (camelCase, nested dicts)."""
    body: dict[str, Any] = {
        "replicas": {"trainer": {"replicas": trainers}, "embeddingServer": {"replicas": embedding_servers}},
        "recovery": {"restartBudget": {"maxRestarts": 5, "windowSeconds": 600}},
    }
    merge(body, spec)
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": body}


def merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value


@dataclass
class Cluster:
    """The emulated API server plus helpers that read it the way a test wants."""

    api: ApiServerEmulator
    redis_url: str

    async def create_job(self, body: dict[str, Any]) -> None:
        async with self.api.post(JOBS_URL, json=body) as response:
            assert response.status < 300, await response.text()

    async def delete_job(self, name: str) -> None:
        async with self.api.delete(f"{JOBS_URL}/{name}") as response:
            assert response.status < 300, await response.text()

    def job(self, name: str) -> dict[str, Any]:
        return dict(self.api.objects[TJ, NAMESPACE, name].raw)

    def job_exists(self, name: str) -> bool:
        key = (TJ, NAMESPACE, name)
        return key in self.api.objects and not self.api.objects[key].deleted

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.job(name).get("status") or {})

    def phase(self, name: str) -> str | None:
        return self.status(name).get("phase")

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        return next((c for c in self.status(name).get("conditions", []) if c["type"] == type_), None)

    def pods(self, job: str) -> dict[str, dict[str, Any]]:
        return {p["metadata"]["name"]: p for p in self.api.live("pods", NAMESPACE)
                if p["metadata"].get("labels", {}).get(f"{GROUP}/job") == job}

    def uids(self, job: str) -> dict[str, str]:
        return {name: p["metadata"]["uid"] for name, p in self.pods(job).items()}

    def running(self, job: str, count: int) -> dict[str, str] | None:
        """The pods' UIDs once exactly ``count`` pods are Running, else None."""
        pods = self.pods(job)
        if len(pods) == count and all(p.get("status", {}).get("phase") == "Running" for p in pods.values()):
            return {name: p["metadata"]["uid"] for name, p in pods.items()}
        return None

    def events(self, job: str) -> list[dict[str, Any]]:
        return [e for e in self.api.live("events") if e.get("involvedObject", {}).get("name") == job]

    def requests(self, method: str, plural: str, since: float = 0.0) -> list[Any]:
        return [e for e in self.api.journal if e.method == method and e.plural == plural and e.at >= since
                and e.user_agent.startswith("kopf")]

    def coordination(self, job: str) -> Coordination:
        return Coordination(self.redis_url, NAMESPACE, job)


@dataclass
class Operator:
    """The operator in a thread with its own event loop, as in a separate process (kopf cancels
    every task of its loop when it stops, so it must not share the test's loop). ``restart()``
    simulates a new operator process: new memo, new in-memory state, same cluster and Redis."""

    config: OperatorConfig
    memo: kopf.Memo = field(default_factory=kopf.Memo)
    thread: threading.Thread | None = None
    stop_flag: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    @property
    def context(self) -> OperatorContext:
        ctx: OperatorContext = self.memo["tj"]
        return ctx

    def _run(self, ready: threading.Event) -> None:
        try:
            asyncio.run(serve(self.config, stop_flag=self.stop_flag, ready_flag=ready, memo=self.memo))
        except BaseException as e:  # surfaced by stop()
            self.error = e

    async def start(self) -> None:
        self.memo, self.stop_flag, self.error = kopf.Memo(), threading.Event(), None
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), name="operator", daemon=True)
        self.thread.start()
        await eventually(lambda: "tj" in self.memo, what="operator startup")

    async def stop(self) -> None:
        if self.thread is None:
            return
        self.stop_flag.set()
        await eventually(lambda: not self.thread.is_alive(), timeout=20, what="operator exit")  # type: ignore[union-attr]
        self.thread = None
        if self.error is not None:
            raise self.error

    async def restart(self) -> None:
        await self.stop()
        await self.start()


def operator_config(api: ApiServerEmulator, redis_url: str) -> OperatorConfig:
    connection = kopf.ConnectionInfo(server=str(api.url).rstrip("/"), insecure=True)
    return OperatorConfig(standalone=True, metrics_port=None, default_redis_url=redis_url, tick_s=TICK_S,
                          tune_every_s=1.0, progress_every_s=0.5, connection=connection, log_json=False)


@dataclass
class FaithfulCluster:
    cluster: Cluster
    kubelet: FaithfulKubelet
    operator: Operator
    redis: EmbeddedRedis  # the job's Redis on the kubelet's bridge (a test may pause it)


@asynccontextmanager
async def faithful_cluster(workdir: Path, *, time_scale: float = 1.0, api: ApiServerEmulator | None = None,
                           redis_password: str | None = None) -> AsyncIterator[FaithfulCluster]:
    """The operator on an emulated API server whose pods the faithful kubelet runs as real processes, with
    a redis-server on the kubelet's bridge (where every pod reaches it). ``time_scale`` scales probe and
    grace periods (1.0: as a cluster runs them)."""
    async with _api(api) as served:
        served.pod_startup_s = None  # the faithful kubelet starts pods, not the emulator's toy one
        served.hold_deleted_pods = True  # a deleted pod stays until the kubelet has terminated it
        # The "image" holds the project (a CI clone may live anywhere, not only under /work).
        async with FaithfulKubelet(served, workdir / "node", namespace=NAMESPACE, time_scale=time_scale,
                                   extra_binds=[ROOT]) as kubelet:
            embedded = EmbeddedRedis(workdir / "redis", host=kubelet.bridge_ip, password=redis_password)
            with embedded as redis_url:
                operator = Operator(config=operator_config(served, redis_url))
                await operator.start()
                try:
                    yield FaithfulCluster(Cluster(api=served, redis_url=redis_url), kubelet, operator, embedded)
                finally:
                    await operator.stop()


@asynccontextmanager
async def _api(api: ApiServerEmulator | None) -> AsyncIterator[ApiServerEmulator]:
    if api is not None:  # already served (a test's fixture)
        yield api
        return
    async with ApiServerEmulator() as new, kmock.Server(new):
        yield new
