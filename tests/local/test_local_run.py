"""The local backend with real processes, real gRPC and a real Redis server."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import run_in_thread, small_job, wait_until
from trainingjob_operator.coordination import Coordination
from trainingjob_operator.local.supervisor import LocalSupervisor, RunOptions

pytestmark = pytest.mark.processes


def _pids(summary: dict, name: str) -> list[int]:
    role, _, rank = name.rpartition("-")
    replica = next(r for r in summary["replicas"] if r["role"] == role and r["rank"] == int(rank))
    return [p["pid"] for p in replica["pids"]]


def test_job_trains_to_completion_and_leaves_no_process(redis_url: str, tmp_path: Path) -> None:
    job = small_job()
    summary = LocalSupervisor(job, RunOptions(workdir=tmp_path, redis_url=redis_url)).run()
    assert summary["status"] == "Succeeded"
    assert summary["samples"] == job.spec.data.train_samples  # one pass, every sample once
    assert summary["auc"] > 0.6 and summary["teacher_auc"] > summary["auc"]
    assert 0 < summary["normalized_entropy"] < 1
    assert summary["failures"] == [] and all(r["restarts"] == 0 for r in summary["replicas"])
    assert {r["role"] for r in summary["replicas"]} == {"trainer", "embedding-server", "sync-server"}
    assert set(summary["peak_rss_mb_by_role"]) == {"trainer", "embedding-server", "sync-server"}
    assert summary["sync"]["exchanges"] > 0  # the shadow thread really synchronised
    every_pid = [p["pid"] for r in summary["replicas"] for p in r["pids"]]
    assert len(every_pid) == 5 and not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                                            for p in every_pid)
    assert all(p["exit_code"] is not None for r in summary["replicas"] for p in r["pids"])


@pytest.mark.parametrize("victim", ["trainer-1", "embedding-server-0", "sync-server-0"])
def test_a_killed_replica_is_replaced_alone(redis_url: str, tmp_path: Path, victim: str) -> None:
    job = small_job(data__trainSamples=300_000)
    supervisor = LocalSupervisor(job, RunOptions(workdir=tmp_path, redis_url=redis_url))
    thread, out = run_in_thread(supervisor)
    coord = Coordination(redis_url, job.namespace, job.name)
    wait_until(lambda: sum(p.samples for p in coord.all_progress(2).values()) > 30_000, 120, "training progress")
    pid = supervisor.processes[victim].pid
    os.kill(pid, signal.SIGKILL)
    thread.join(300)
    summary = out
    assert summary["status"] == "Succeeded"
    assert len(_pids(summary, victim)) == 2 and _pids(summary, victim)[0] == pid
    role, _, rank = victim.rpartition("-")
    replica = next(r for r in summary["replicas"] if r["role"] == role and r["rank"] == int(rank))
    assert [p["warm"] for p in replica["pids"]] == [False, True]  # the replacement was a warm standby
    for other in ["trainer-0", "trainer-1", "embedding-server-0", "embedding-server-1", "sync-server-0"]:
        if other != victim:
            assert len(_pids(summary, other)) == 1, f"{other} was restarted"
    [failure] = summary["failures"]
    assert (f"{failure['role']}-{failure['rank']}", failure["reason"]) == (victim, "ExitCode137")  # as a kubelet
    assert failure["generation"] == 1 and failure["mode"] == "partial"
    assert summary["samples"] >= job.spec.data.train_samples  # the replacement resumed its shard
    assert summary["auc"] > 0.6


def test_hung_replica_is_detected_by_heartbeat_and_replaced(redis_url: str, tmp_path: Path) -> None:
    job = small_job(data__trainSamples=400_000, recovery__heartbeatTimeoutSeconds=5)
    supervisor = LocalSupervisor(job, RunOptions(workdir=tmp_path, redis_url=redis_url))
    thread, out = run_in_thread(supervisor)
    coord = Coordination(redis_url, job.namespace, job.name)
    wait_until(lambda: sum(p.samples for p in coord.all_progress(2).values()) > 30_000, 120, "training progress")
    pid = supervisor.processes["embedding-server-1"].pid
    os.kill(pid, signal.SIGSTOP)
    thread.join(300)
    assert out["status"] == "Succeeded"
    [failure] = out["failures"]
    assert failure["reason"] == "HeartbeatTimeout" and failure["role"] == "embedding-server"
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def test_stop_request_terminates_every_process(redis_url: str, tmp_path: Path) -> None:
    job = small_job(data__trainSamples=5_000_000)
    supervisor = LocalSupervisor(job, RunOptions(workdir=tmp_path, redis_url=redis_url))
    thread, out = run_in_thread(supervisor)
    wait_until(lambda: len(supervisor.processes) == 5, 60, "all replicas started")
    pids = [p.pid for p in supervisor.processes.values()]
    time.sleep(1.0)
    supervisor.request_stop()
    thread.join(30)
    assert out["status"] == "Interrupted"
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids)


@pytest.mark.parametrize(("mode", "algorithm"), [("background", "ma"), ("background", "bmuf"),
                                                 ("foreground", "easgd")])
def test_every_sync_algorithm_trains(redis_url: str, tmp_path: Path, mode: str, algorithm: str) -> None:
    job = small_job(training__sync={"mode": mode, "algorithm": algorithm, "everySteps": 2})
    summary = LocalSupervisor(job, RunOptions(workdir=tmp_path, redis_url=redis_url)).run()
    assert summary["status"] == "Succeeded"
    assert summary["auc"] > 0.6
    assert (summary["sync"]["mode"], summary["sync"]["algorithm"]) == (mode, algorithm)
    assert summary["sync"]["exchanges"] > 0
    if mode == "foreground":
        # Inside the loop every 2 steps (plus one final exchange per trainer).
        steps = sum(t["steps"] for t in summary["trainers"])
        assert summary["sync"]["exchanges"] == pytest.approx(steps / 2 + 2, abs=3)
