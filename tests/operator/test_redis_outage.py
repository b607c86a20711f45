"""Redis away for 60 s mid-run, on both shells (issue #10): training goes on (the hot path needs no Redis),
heartbeats resume once it is back, nothing is replaced needlessly, and the job succeeds.

The job's redis-server is stopped with SIGSTOP (a hung Redis or a partition: connections neither fail nor
answer), then continued. Everything else is real: replicas as processes (locally) or pods run by the faithful
kubelet with their own network namespaces, the operator on the emulated API server.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.operator.conftest import Cluster, eventually, manifest
from tests.operator.test_faithful_cluster import faithful  # noqa: F401  (fixture)
from tests.support.cluster import FaithfulCluster
from trainingjob_operator.api import parse_manifest
from trainingjob_operator.coordination import Coordination
from trainingjob_operator.local.redis_server import EmbeddedRedis
from trainingjob_operator.local.supervisor import LocalSupervisor, RunOptions

pytestmark = pytest.mark.processes

JOB = "outage"
OUTAGE_S = 60.0
SPEC: dict[str, Any] = {
    "model": {"sparseFeatures": 8, "rowsPerTable": 5000, "embeddingDim": 8, "bottomMlp": [32], "topMlp": [32]},
    # Long enough to train through the outage and well past it on an idle machine (~45k samples/s).
    "data": {"trainSamples": 8_000_000, "evalSamples": 8192, "batchSize": 512},
    "training": {"hogwildThreads": 1, "progressEverySeconds": 0.5},
    "recovery": {"checkpoint": {"intervalSeconds": 5}},  # the default 15 s heartbeat timeout
}
REPLICAS = ["embedding-server-0", "embedding-server-1", "sync-server-0", "trainer-0", "trainer-1"]


@dataclass
class Shell:
    coord: Coordination
    redis_pid: int
    starts: Callable[[], dict[str, int]]  # replica -> processes started for it
    phase: Callable[[], str | None]


@pytest.fixture
async def local_shell(tmp_path: Path) -> AsyncIterator[Shell]:
    embedded = EmbeddedRedis(tmp_path / "redis")
    with embedded as url:
        assert embedded.process is not None
        embedded_pid = embedded.process.pid
        job = parse_manifest(manifest(JOB, **SPEC) | {"metadata": {"name": JOB}})
        supervisor = LocalSupervisor(job, RunOptions(workdir=tmp_path / "run", redis_url=url))
        out: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: out.update(supervisor.run()), daemon=True)
        thread.start()
        await eventually(lambda: supervisor.coord is not None and all(supervisor.history[n] for n in REPLICAS),
                         timeout=30, what="every replica started")
        try:
            yield Shell(Coordination(url, job.namespace, JOB), embedded_pid,
                        lambda: {n: len(runs) for n, runs in supervisor.history.items()}, lambda: out.get("status"))
        finally:
            os.kill(embedded_pid, signal.SIGCONT)
            supervisor.request_stop()
            await asyncio.to_thread(thread.join, 60)


@pytest.fixture
async def kubernetes_shell(faithful: FaithfulCluster) -> AsyncIterator[Shell]:  # noqa: F811
    cluster: Cluster = faithful.cluster
    await cluster.create_job(manifest(JOB, **SPEC))
    assert faithful.redis.process is not None
    pid = faithful.redis.process.pid

    def starts() -> dict[str, int]:
        names = [name.removeprefix(f"{JOB}-") for name in faithful.kubelet.started]
        return {name: names.count(name) for name in REPLICAS}

    try:
        yield Shell(cluster.coordination(JOB), pid, starts, lambda: cluster.phase(JOB))
    finally:
        os.kill(pid, signal.SIGCONT)
    assert faithful.kubelet.probe_kills == []


async def test_local_shell(local_shell: Shell) -> None:
    await rides_out_a_redis_outage(local_shell)


async def test_kubernetes_shell(kubernetes_shell: Shell) -> None:
    await rides_out_a_redis_outage(kubernetes_shell)


def trained(coord: Coordination) -> int:
    return sum(p.samples for p in coord.all_progress(2).values())


async def rides_out_a_redis_outage(shell: Shell) -> None:
    coord = shell.coord
    await eventually(lambda: all((p := coord.progress(r)) is not None and p.samples > 0 for r in (0, 1)),
                     timeout=120, what="both trainers training")
    await eventually(lambda: coord.checkpoint_pointer(0) is not None, timeout=60, what="a first checkpoint")
    before = trained(coord)

    os.kill(shell.redis_pid, signal.SIGSTOP)
    await asyncio.sleep(OUTAGE_S)
    os.kill(shell.redis_pid, signal.SIGCONT)
    resumed_at = time.time()

    # Training went on without Redis: the trainers' next reports carry the samples trained meanwhile.
    await eventually(lambda: trained(coord) > before + 200_000, timeout=30, what="samples trained during the outage")
    # Heartbeats resume: every replica's heartbeat is newer than the end of the outage.
    await eventually(lambda: all((m := coord.member(n.rsplit("-", 1)[0], int(n.rsplit("-", 1)[1]))) is not None
                                 and m.heartbeat > resumed_at for n in REPLICAS),
                     timeout=30, what="every replica heartbeating again")
    await eventually(lambda: shell.phase() == "Succeeded", timeout=400, what="job Succeeded")
    assert coord.failures() == [], "nothing failed: an outage of Redis is no replica's failure"
    assert shell.starts() == {name: 1 for name in REPLICAS}, "no replica was replaced"
