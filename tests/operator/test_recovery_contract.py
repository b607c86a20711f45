"""One table of failure scenarios, run against both shells, asserting the same observations.

- local: ``LocalSupervisor`` with replicas as processes on this machine;
- kubernetes: the kopf operator on the API-server emulator, with every pod run by the faithful kubelet
  (own network namespace and IP, its volumes, the image's user, probes executed).

For each scenario both backends must show: which replicas were replaced and which kept their process,
the failure record (role, rank, reason, exit code, mode, samples at failure), a replaced embedding server
that restored the newest checkpoint of its shard taken while training, and a job that Succeeded.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.operator.conftest import NAMESPACE, Cluster, eventually, manifest
from tests.operator.test_faithful_cluster import faithful  # noqa: F401  (fixture)
from tests.support.cluster import FaithfulCluster
from trainingjob_operator.api import parse_manifest
from trainingjob_operator.coordination import Coordination
from trainingjob_operator.local.supervisor import LocalSupervisor, RunOptions

pytestmark = pytest.mark.processes

JOB = "contract"
SPEC: dict[str, Any] = {
    "model": {"sparseFeatures": 8, "rowsPerTable": 5000, "embeddingDim": 8, "bottomMlp": [32], "topMlp": [32]},
    "data": {"trainSamples": 200_000, "evalSamples": 8192, "batchSize": 512},
    "training": {"hogwildThreads": 1, "progressEverySeconds": 0.5},
    "recovery": {"checkpoint": {"intervalSeconds": 2}},  # the default 15 s heartbeat timeout
}
REPLICAS = ["embedding-server-0", "embedding-server-1", "sync-server-0", "trainer-0", "trainer-1"]


@dataclass(frozen=True)
class Scenario:
    victim: str
    sig: signal.Signals
    reason: str
    exit_code: int | None


SCENARIOS = [
    pytest.param(Scenario("embedding-server-0", signal.SIGKILL, "ExitCode137", 137), id="embedding-server-sigkill"),
    pytest.param(Scenario("trainer-1", signal.SIGKILL, "ExitCode137", 137), id="trainer-sigkill"),
    pytest.param(Scenario("sync-server-0", signal.SIGKILL, "ExitCode137", 137), id="sync-server-sigkill"),
    pytest.param(Scenario("embedding-server-1", signal.SIGSTOP, "HeartbeatTimeout", None), id="embedding-server-hung"),
]


@dataclass
class Backend:
    """What a scenario needs from a shell: signal a replica, read what happened."""

    coord: Coordination
    pid: Callable[[str], int]
    starts: Callable[[], dict[str, int]]  # replica -> processes started for it
    phase: Callable[[], str | None]


@pytest.fixture
async def local_backend(redis_url: str, tmp_path: Path) -> AsyncIterator[Backend]:
    # A name of its own: the session's Redis still holds the previous row's keys (same job name) until
    # this run clears them, and a check must never pass on a predecessor's progress.
    name = f"{JOB}-{uuid.uuid4().hex[:6]}"
    job = parse_manifest(manifest(name, **SPEC) | {"metadata": {"name": name}})
    supervisor = LocalSupervisor(job, RunOptions(workdir=tmp_path / "run", redis_url=redis_url))
    out: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: out.update(supervisor.run()), daemon=True)
    thread.start()
    await eventually(lambda: supervisor.coord is not None and set(supervisor.processes) == set(REPLICAS),
                     timeout=30, what="supervisor started every replica")
    assert supervisor.coord is not None
    try:
        yield Backend(
            coord=supervisor.coord,
            pid=lambda name: supervisor.processes[name].pid,
            starts=lambda: {name: len(runs) for name, runs in supervisor.history.items()},
            phase=lambda: out.get("status"),
        )
    finally:
        supervisor.request_stop()
        await asyncio.to_thread(thread.join, 60)


@pytest.fixture
async def kubernetes_backend(faithful: FaithfulCluster) -> AsyncIterator[Backend]:  # noqa: F811
    cluster: Cluster = faithful.cluster
    await cluster.create_job(manifest(JOB, **SPEC))

    def starts() -> dict[str, int]:
        names = [name.removeprefix(f"{JOB}-") for name in faithful.kubelet.started]
        return {name: names.count(name) for name in REPLICAS}

    yield Backend(
        coord=cluster.coordination(JOB),
        pid=lambda name: faithful.kubelet.process(f"{JOB}-{name}").pid,
        starts=starts,
        phase=lambda: cluster.phase(JOB),
    )
    assert faithful.kubelet.probe_kills == []  # no pod was killed by its own probes
    assert NAMESPACE == "ml"


@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_local_shell(local_backend: Backend, scenario: Scenario) -> None:
    await recovers_as_the_contract_says(local_backend, scenario)


@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_kubernetes_shell(kubernetes_backend: Backend, scenario: Scenario) -> None:
    await recovers_as_the_contract_says(kubernetes_backend, scenario)


async def recovers_as_the_contract_says(backend: Backend, scenario: Scenario) -> None:
    coord = backend.coord
    await eventually(lambda: all((p := coord.progress(r)) is not None and p.samples > 0 for r in (0, 1)),
                     timeout=120, what="both trainers training")
    shard = int(scenario.victim.rsplit("-", 1)[1]) if scenario.victim.startswith("embedding") else 0
    await eventually(lambda: (p := coord.checkpoint_pointer(shard)) is not None and p.get("progress", 0) > 0,
                     timeout=60, what=f"a checkpoint of shard {shard} taken while training")
    survivors = {name: backend.pid(name) for name in REPLICAS if name != scenario.victim}

    os.kill(backend.pid(scenario.victim), scenario.sig)

    await eventually(lambda: coord.failures(), timeout=60, what="the failure recorded")
    newest_checkpoint = coord.checkpoint_pointer(shard)  # what existed when the failure was detected
    await eventually(lambda: backend.phase() == "Succeeded", timeout=240, what="job Succeeded")

    assert backend.starts() == {name: 1 + (name == scenario.victim) for name in REPLICAS}
    for name, pid in survivors.items():  # finished processes are gone; none was replaced
        assert backend.starts()[name] == 1, f"{name} (pid {pid}) was restarted"
    [failure] = coord.failures()
    assert (f"{failure['role']}-{failure['rank']}", failure["reason"], failure["exit_code"], failure["mode"]) == \
        (scenario.victim, scenario.reason, scenario.exit_code, "partial")
    assert failure["samples"] > 0
    if scenario.victim.startswith("embedding-server"):
        [restored] = [r for instance, r in coord.recoveries(scenario.victim).items()
                      if instance != failure["instance"]]
        assert restored["restored_progress"] > 0, restored["description"]
        assert newest_checkpoint is not None
        assert restored["restored_progress"] >= newest_checkpoint["progress"], (restored, newest_checkpoint)
        lost = restored["lost_samples"]
        assert lost == (failure["samples"] - restored["restored_progress"]) // 2  # PLS: this shard's half
    assert all(coord.result(rank) is not None for rank in (0, 1))
