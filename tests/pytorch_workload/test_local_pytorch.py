"""A pytorch workload on the local backend: real agents, real gloo process groups, real DCP checkpoints and a
real Redis. A killed worker is replaced alone; the survivor keeps its process (the pod) and restarts its
script in place; every rank resumes from the newest complete checkpoint."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import run_in_thread, wait_until
from trainingjob_operator.api.loading import parse_manifest
from trainingjob_operator.api.spec import TrainingJob
from trainingjob_operator.coordination import Coordination
from trainingjob_operator.local.supervisor import LocalSupervisor, RunOptions

pytestmark = pytest.mark.processes

TOY = Path(__file__).with_name("toy_ddp.py")


def toy_job(name: str, log: Path, steps: int = 300, **env: str) -> TrainingJob:
    return parse_manifest({
        "apiVersion": "training.cpr.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
        "spec": {
            "workload": "pytorch",
            "pytorch": {"command": ["python", str(TOY)], "peerFailureGraceSeconds": 2},
            "replicas": {"worker": {"replicas": 2, "env": {
                "TOY_STEPS": str(steps), "TOY_STEP_S": "0.03", "TOY_LOG": str(log), **env}}},
            "recovery": {"restartBudget": {"maxRestarts": 1},
                         "checkpoint": {"intervalSeconds": 0.5,
                                        "volume": {"kind": "sharedClaim", "claimName": "unused-locally"}}},
        }})


def steps_log(log: Path, rank: int) -> list[dict[str, Any]]:
    path = Path(f"{log}.{rank}")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def toy_processes() -> list[psutil.Process]:
    out = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if str(TOY) in (proc.info["cmdline"] or []) and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.Error:
            continue
    return out


def test_a_killed_worker_is_replaced_alone_and_every_rank_resumes_from_the_newest_checkpoint(
        redis_url: str, tmp_path: Path) -> None:
    log = tmp_path / "steps"
    job = toy_job("toy-kill", log)
    supervisor = LocalSupervisor(job, RunOptions(workdir=tmp_path / "run", redis_url=redis_url))
    thread, out = run_in_thread(supervisor)
    coord = Coordination(redis_url, job.namespace, job.name)
    wait_until(lambda: len(coord.checkpoints()) >= 2 and (p := coord.step_progress()) is not None and p.step >= 40,
               180, "two checkpoints and 40 steps")
    survivor_pid = supervisor.processes["worker-0"].pid
    os.kill(supervisor.processes["worker-1"].pid, signal.SIGKILL)  # the pod dies, its script with it
    thread.join(240)
    summary = out
    assert summary["status"] == "Succeeded", summary["conditions"]
    pids = {r["rank"]: [p["pid"] for p in r["pids"]] for r in summary["replicas"]}
    assert pids[0] == [survivor_pid] and len(pids[1]) == 2  # only the killed worker's pod was replaced
    [failure] = summary["failures"]
    assert (failure["role"], failure["rank"], failure["reason"]) == ("worker", 1, "ExitCode137")
    assert summary["result"] == {"final_loss": pytest.approx(summary["result"]["final_loss"]), "steps": 300,
                                 "world_size": 2}
    assert summary["result"]["final_loss"] < 0.01
    for rank in (0, 1):
        rows = steps_log(log, rank)
        generations = sorted({r["gen"] for r in rows})
        assert generations == [0, 1], generations  # rank 0's script restarted in place, in generation 1
        first, second = [r for r in rows if r["gen"] == 0], [r for r in rows if r["gen"] == 1]
        resumed = second[0]["resumed_from"]
        assert resumed is not None and second[0]["step"] == resumed + 1  # from the checkpoint, not from 0
        assert resumed <= first[-1]["step"] and second[-1]["step"] == 300
    [restart] = summary["recoveries"]
    assert restart["resumed_from_step"] == resumed and restart["resume_seconds"] > 0
    assert summary["restarts_in_place"] == 1 and summary["checkpoint"]["saves"] >= 3
    assert summary["checkpoint"]["o_save_s_median"] > 0
    assert toy_processes() == []  # no script process outlived the job


def test_a_worker_whose_script_fails_on_its_own_fails_its_pod_and_the_budget_fails_the_job(
        redis_url: str, tmp_path: Path) -> None:
    log = tmp_path / "steps"
    job = toy_job("toy-bug", log, TOY_FAIL_RANK="1")
    summary = LocalSupervisor(job, RunOptions(workdir=tmp_path / "run", redis_url=redis_url)).run()
    assert summary["status"] == "Failed"
    assert {f["replica"] if "replica" in f else f"{f['role']}-{f['rank']}" for f in summary["failures"]} == \
        {"worker-1"}  # the collateral failures of rank 0's script never failed its pod
    assert [len(r["pids"]) for r in sorted(summary["replicas"], key=lambda r: r["rank"])] == [1, 2]
    failed = next(c for c in summary["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and "worker-1" in failed["message"]
    assert all(f["exit_code"] == 3 for f in summary["failures"])
    assert toy_processes() == []
