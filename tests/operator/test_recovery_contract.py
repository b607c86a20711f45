"""One table of failure scenarios, run against both shells, asserting the same observations.

- local: ``LocalSupervisor`` with replicas as processes on this machine;
- kubernetes: the kopf operator on the API-server emulator, with every pod run by the faithful kubelet
  (own network namespace and IP, its volumes, the image's user, probes executed).

For each scenario both backends must show: which replicas were replaced and which kept their process,
the failure records (role, rank, reason, exit code, mode, samples at failure), a replaced embedding server
that restored the newest checkpoint of its shard taken while training (and the PLS that follows from it),
full recovery's rollback of every trainer to the checkpoint, and how the job ended (Succeeded, or Failed
with the reason a user reads in its Failed condition).

Not in the table: eviction and ``kubectl delete pod`` have no local counterpart (a process is not evicted);
the operator tests cover them on the emulator (``test_recovery.py``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.operator.conftest import Cluster, eventually, manifest
from tests.operator.test_faithful_cluster import faithful  # noqa: F401  (fixture)
from tests.support.cluster import FaithfulCluster, merge
from trainingjob_operator.api import parse_manifest
from trainingjob_operator.coordination import Coordination
from trainingjob_operator.core import accounting
from trainingjob_operator.core.recovery import consistent_round
from trainingjob_operator.local import supervisor as supervisor_module
from trainingjob_operator.local.processes import Incarnation, ReplicaProcess
from trainingjob_operator.local.supervisor import LocalSupervisor, RunOptions

pytestmark = pytest.mark.processes

JOB = "contract"
SPEC: dict[str, Any] = {
    "model": {"sparseFeatures": 8, "rowsPerTable": 5000, "embeddingDim": 8, "bottomMlp": [32], "topMlp": [32]},
    # Long enough that a failure lands mid-training on an idle machine too (at ~45k samples/s a 200k-sample
    # job once finished before a SIGSTOPped server's heartbeat timed out).
    "data": {"trainSamples": 400_000, "evalSamples": 8192, "batchSize": 512},
    "training": {"hogwildThreads": 1, "progressEverySeconds": 0.5},
    "recovery": {"checkpoint": {"intervalSeconds": 2}},  # the default 15 s heartbeat timeout
}
REPLICAS = ["embedding-server-0", "embedding-server-1", "sync-server-0", "trainer-0", "trainer-1"]
MEMBERS = ["embedding-server-0", "embedding-server-1", "sync-server-0"]  # who saves a part of each round
DELAY_S = 180.0  # a replacement slower than any RPC deadline: scheduling, an image pull, a large shard


@dataclass(frozen=True)
class Scenario:
    victim: str | None  # None: the job fails on its own (a configuration error)
    sig: signal.Signals = signal.SIGKILL
    reason: str = "ExitCode137"
    exit_code: int | None = 137
    mode: str = "partial"
    kills: int = 1  # 2: the victim is killed again once its replacement trains (the restart budget)
    spec: dict[str, Any] = field(default_factory=dict)
    delay_s: float = 0.0  # the replacement starts this much later
    failed_reason: str | None = None  # the job ends Failed with this reason; else it Succeeds

    def replaced(self) -> set[str]:
        if self.victim is None:
            return set()
        return set(REPLICAS) if self.mode == "full" else {self.victim}


SCENARIOS = [
    pytest.param(Scenario("embedding-server-0"), id="embedding-server-sigkill"),
    pytest.param(Scenario("trainer-1"), id="trainer-sigkill"),
    pytest.param(Scenario("sync-server-0"), id="sync-server-sigkill"),
    pytest.param(Scenario("embedding-server-1", signal.SIGSTOP, "HeartbeatTimeout", None), id="embedding-server-hung"),
    pytest.param(Scenario("embedding-server-0", mode="full", spec={"recovery": {"mode": "full"}}),
                 id="full-recovery-rollback"),
    pytest.param(Scenario("trainer-1", kills=2, failed_reason="RestartBudgetExhausted",
                          spec={"recovery": {"restartBudget": {"maxRestarts": 1, "windowSeconds": 600}}}),
                 id="restart-budget-exhausted"),
    pytest.param(Scenario(None, reason="ExitCode78", exit_code=78, failed_reason="PermanentError",
                          spec={"data": {"source": "criteo", "path": "/data/criteo-not-mounted"}}),
                 id="exit-78-configuration-error"),
    pytest.param(Scenario("embedding-server-0", delay_s=DELAY_S), id="replacement-delayed-3-minutes"),
]


@dataclass
class Backend:
    """What a scenario needs from a shell: signal a replica, delay a start, read what happened."""

    coord: Coordination
    pid: Callable[[str], int]
    starts: Callable[[], dict[str, int]]  # replica -> processes started for it
    phase: Callable[[], str | None]
    condition: Callable[[str], dict[str, Any] | None]  # the job's condition of that type
    delay_next_start: Callable[[str, float], None]


Start = Callable[[dict[str, Any]], Awaitable[Backend]]


@pytest.fixture
async def local_backend(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Start]:
    delays: dict[str, float] = {}
    real_spawn = supervisor_module.spawn

    def spawn(name: str, env: dict[str, str], log_path: Path, cwd: Path | None = None,
              standby: subprocess.Popen[bytes] | None = None, module: str = "dlrm_trainer") -> ReplicaProcess:
        if (delay := delays.pop(name, 0.0)) <= 0:
            return real_spawn(name, env, log_path, cwd, standby, module)
        # The process exists but starts its program later: what a slow pod start looks like to a shell.
        if standby is not None:
            standby.kill()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            popen = subprocess.Popen(["sh", "-c", f'sleep {delay}; exec "$0" -m {module}', sys.executable],
                                     env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        return ReplicaProcess(name, popen, Incarnation(popen.pid, time.time()), log_path=log_path)

    monkeypatch.setattr(supervisor_module, "spawn", spawn)
    runs: list[tuple[LocalSupervisor, threading.Thread]] = []

    async def start(spec: dict[str, Any]) -> Backend:
        # A name of its own: the session's Redis still holds the previous row's keys (same job name) until
        # this run clears them, and a check must never pass on a predecessor's progress.
        name = f"{JOB}-{uuid.uuid4().hex[:6]}"
        job = parse_manifest(manifest(name, **spec) | {"metadata": {"name": name}})
        supervisor = LocalSupervisor(job, RunOptions(workdir=tmp_path / "run", redis_url=redis_url))
        out: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: out.update(supervisor.run()), daemon=True)
        thread.start()
        runs.append((supervisor, thread))
        await eventually(lambda: supervisor.coord is not None and all(supervisor.history[n] for n in REPLICAS),
                         timeout=30, what="supervisor started every replica")
        assert supervisor.coord is not None

        def condition(type_: str) -> dict[str, Any] | None:
            return next((c.to_wire() for c in supervisor.memory.conditions if c.type == type_), None)

        return Backend(
            coord=supervisor.coord,
            pid=lambda name: supervisor.processes[name].pid,
            starts=lambda: {name: len(runs) for name, runs in supervisor.history.items()},
            phase=lambda: out.get("status"),
            condition=condition,
            delay_next_start=lambda name, seconds: delays.__setitem__(name, seconds),
        )

    yield start
    for supervisor, thread in runs:
        supervisor.request_stop()
        await asyncio.to_thread(thread.join, 60)


@pytest.fixture
async def kubernetes_backend(faithful: FaithfulCluster) -> AsyncIterator[Start]:  # noqa: F811
    cluster: Cluster = faithful.cluster

    async def start(spec: dict[str, Any]) -> Backend:
        await cluster.create_job(manifest(JOB, **spec))

        def starts() -> dict[str, int]:
            names = [name.removeprefix(f"{JOB}-") for name in faithful.kubelet.started]
            return {name: names.count(name) for name in REPLICAS}

        return Backend(
            coord=cluster.coordination(JOB),
            pid=lambda name: faithful.kubelet.process(f"{JOB}-{name}").pid,
            starts=starts,
            phase=lambda: cluster.phase(JOB),
            condition=lambda type_: cluster.condition(JOB, type_),
            delay_next_start=lambda name, seconds: faithful.kubelet.delay_start(f"{JOB}-{name}", seconds),
        )

    yield start
    assert faithful.kubelet.probe_kills == []  # no pod was killed by its own probes


@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_local_shell(local_backend: Start, scenario: Scenario) -> None:
    await recovers_as_the_contract_says(local_backend, scenario)


@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_kubernetes_shell(kubernetes_backend: Start, scenario: Scenario) -> None:
    await recovers_as_the_contract_says(kubernetes_backend, scenario)


def _spec(scenario: Scenario) -> dict[str, Any]:
    spec = {key: dict(value) if isinstance(value, dict) else value for key, value in SPEC.items()}
    merge(spec, scenario.spec)
    return spec


async def recovers_as_the_contract_says(start: Start, scenario: Scenario) -> None:
    backend = await start(_spec(scenario))
    coord = backend.coord
    if scenario.victim is None:
        await fails_as_the_contract_says(backend, scenario)
        return
    await eventually(lambda: all((p := coord.progress(r)) is not None and p.samples > 0 for r in (0, 1)),
                     timeout=120, what="both trainers training")
    shard = int(scenario.victim.rsplit("-", 1)[1]) if scenario.victim.startswith("embedding") else 0
    if scenario.mode == "full":  # full recovery restores a checkpoint round every server saved
        await eventually(lambda: consistent_round(coord.saved_rounds(), MEMBERS) is not None, timeout=60,
                         what="a checkpoint round saved by every server")
    else:
        await eventually(lambda: (p := coord.checkpoint_pointer(shard)) is not None and p.get("progress", 0) > 0,
                         timeout=60, what=f"a checkpoint of shard {shard} taken while training")
    survivors = {name: backend.pid(name) for name in REPLICAS if name not in scenario.replaced()}
    if scenario.delay_s:
        backend.delay_next_start(scenario.victim, scenario.delay_s)

    os.kill(backend.pid(scenario.victim), scenario.sig)

    await eventually(lambda: coord.failures(), timeout=60, what="the failure recorded")
    newest_checkpoint = coord.checkpoint_pointer(shard)  # what existed when the failure was detected
    if scenario.delay_s:
        await survivors_wait_for_the_late_replacement(backend, scenario)
    if scenario.kills == 2:  # again, once its replacement has trained
        assert scenario.victim.startswith("trainer")
        rank = int(scenario.victim.rsplit("-", 1)[1])
        before = backend.starts()[scenario.victim]
        trained = coord.progress(rank).samples  # type: ignore[union-attr]
        await eventually(lambda: backend.starts()[scenario.victim] == before + 1, timeout=60, what="replaced")
        await eventually(lambda: (p := coord.progress(rank)) is not None and p.samples > trained,
                         timeout=120, what="the replacement training")  # it resumed at or before `trained`
        os.kill(backend.pid(scenario.victim), scenario.sig)
    final = "Failed" if scenario.failed_reason else "Succeeded"
    await eventually(lambda: backend.phase() == final, timeout=240 + scenario.delay_s, what=f"job {final}")

    expected_starts = {name: 1 + (name in scenario.replaced()) * scenario.kills for name in REPLICAS}
    if scenario.failed_reason:  # the last kill fails the job: nothing replaces it
        expected_starts[scenario.victim] -= 1
    assert backend.starts() == expected_starts
    for name, pid in survivors.items():  # finished processes are gone; none was replaced
        assert backend.starts()[name] == 1, f"{name} (pid {pid}) was restarted"
    failures = coord.failures()
    assert len(failures) == scenario.kills
    for failure in failures:
        assert (f"{failure['role']}-{failure['rank']}", failure["reason"], failure["exit_code"], failure["mode"]) == \
            (scenario.victim, scenario.reason, scenario.exit_code, scenario.mode)
        assert failure["samples"] > 0
    if scenario.failed_reason:
        condition = backend.condition("Failed")
        assert condition is not None and condition["status"] == "True"
        assert condition["reason"] == scenario.failed_reason, condition
        return
    [failure] = failures
    if scenario.mode == "full":
        rolled_back_as_one(coord, failure)
    elif scenario.victim.startswith("embedding-server"):
        [restored] = [r for instance, r in coord.recoveries(scenario.victim).items()
                      if instance != failure["instance"]]
        assert restored["restored_progress"] > 0, restored["description"]
        assert newest_checkpoint is not None
        assert restored["restored_progress"] >= newest_checkpoint["progress"], (restored, newest_checkpoint)
        assert restored["failed_at"] == failure["samples"] and restored["mode"] == "partial"
        by_shard = accounting.job_spans(coord.shard_recoveries(2))
        # PLS: this shard's half of every sample between what it restored and the failure, counted once.
        assert accounting.lost_samples(by_shard, 2) == (failure["samples"] - restored["restored_progress"]) / 2
    assert all(coord.result(rank) is not None for rank in (0, 1))


def rolled_back_as_one(coord: Coordination, failure: dict[str, Any]) -> None:
    """Full recovery is a consistent cut: every shard restored its part of one checkpoint round, the
    newest one every server had saved when the failure struck, and every trainer resumed at that round's
    cursor, so no update is applied twice; nothing counts as lost (the rollback re-trains it)."""
    restore = coord.restore_round()
    assert restore is not None, "no checkpoint round restored"
    assert set(restore["ids"]) == set(MEMBERS)
    saved_then = {r for r, parts in coord.saved_rounds().items() if set(MEMBERS) <= set(parts)}
    assert restore["round"] in saved_then
    results = [coord.result(rank) for rank in (0, 1)]
    assert [r["start_cursor"] for r in results if r is not None] == [restore["cursor"]] * 2, results
    # (No bound by failure["samples"]: that is the progress last reported, up to a tick behind the cursors.)
    assert restore["cursor"] > 0 and failure["mode"] == "full"
    for shard in (0, 1):
        name = f"embedding-server-{shard}"
        replacement = max(coord.recoveries(name).values(), key=lambda r: r["time"])
        assert replacement["loaded"] == [restore["ids"][name]], replacement  # that round's part, nothing newer
        assert replacement["mode"] == "full" and accounting.spans_of(replacement) == []
    assert accounting.lost_samples(accounting.job_spans(coord.shard_recoveries(2)), 2) == 0


async def survivors_wait_for_the_late_replacement(backend: Backend, scenario: Scenario) -> None:
    """While the replacement is late, the survivors keep their processes and say whom they wait for."""
    assert scenario.victim is not None
    coord = backend.coord
    await eventually(lambda: all(scenario.victim in p.waiting_for for p in coord.all_progress(2).values()),
                     timeout=60, what=f"both trainers waiting for {scenario.victim}")
    waiting_since = time.monotonic()
    await eventually(lambda: not any(p.waiting_for for p in coord.all_progress(2).values()),
                     timeout=scenario.delay_s + 120, what="the late replacement serving")
    assert time.monotonic() - waiting_since > scenario.delay_s * 0.8  # they waited it out, alive
    assert backend.starts()[scenario.victim] == 2


async def fails_as_the_contract_says(backend: Backend, scenario: Scenario) -> None:
    """A configuration error fails the job at once: no replica is started twice."""
    await eventually(lambda: backend.phase() == "Failed", timeout=120, what="job Failed")
    condition = backend.condition("Failed")
    assert condition is not None and condition["reason"] == scenario.failed_reason, condition
    assert "exited with code 78" in condition["message"]
    [failure] = backend.coord.failures()
    assert (failure["role"], failure["reason"], failure["exit_code"]) == ("trainer", "ExitCode78", 78)
    assert all(count <= 1 for count in backend.starts().values()), backend.starts()
