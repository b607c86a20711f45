"""A pytorch workload on the local backend: real agents, real gloo process groups, real DCP checkpoints and a
real Redis. A killed worker is replaced alone; the survivor keeps its process (the pod) and restarts its
script in place; every rank resumes from the newest complete checkpoint."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import join_run, run_in_thread, wait_until
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


def toy_processes(log: Path) -> list[psutil.Process]:
    """This test's script processes still alive (its TOY_LOG tells them from another run's on the machine)."""
    out = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if str(TOY) in (proc.info["cmdline"] or []) and proc.status() != psutil.STATUS_ZOMBIE \
                    and proc.environ().get("TOY_LOG") == str(log):
                out.append(proc)
        except psutil.Error:
            continue
    return out


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync-saves", "async-saves"])
def test_a_killed_worker_is_replaced_alone_and_every_rank_resumes_from_the_newest_checkpoint(
        redis_url: str, tmp_path: Path, asynchronous: bool) -> None:
    log = tmp_path / "steps"
    job = toy_job(f"toy-kill-{int(asynchronous)}", log, TOY_ASYNC=str(int(asynchronous)))
    supervisor = LocalSupervisor(job, RunOptions(workdir=tmp_path / "run", redis_url=redis_url))
    thread, out = run_in_thread(supervisor)
    coord = Coordination(redis_url, job.namespace, job.name)
    wait_until(lambda: len(coord.checkpoints()) >= 2 and (p := coord.step_progress()) is not None and p.step >= 40,
               180, "two checkpoints and 40 steps")
    survivor_pid = supervisor.processes["worker-0"].pid
    os.kill(supervisor.processes["worker-1"].pid, signal.SIGKILL)  # the pod dies, its script with it
    join_run(thread, 240, tmp_path / "run")
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
    coord_log = coord.checkpoints()
    assert coord_log and all(entry["asynchronous"] is asynchronous for entry in coord_log)
    # An asynchronous save blocks training only while it stages: less than it takes to write.
    assert all((entry["seconds"] < entry["write_seconds"]) is asynchronous for entry in coord_log if
               entry["write_seconds"] > 0.005)
    assert toy_processes(log) == []  # no script process outlived the job


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
    assert toy_processes(log) == []


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a real filesystem that fills up (ENOSPC), as a full volume does."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with contextlib.suppress(OSError), filler.open("wb", buffering=0) as f:
        while True:
            f.write(b"\0" * 1024)
    return filler


def test_full_checkpoint_storage_is_a_condition_while_training_goes_on_and_clears_when_saves_succeed(
        redis_url: str, tmp_path: Path, small_disk: Path) -> None:
    job = toy_job("toy-full", tmp_path / "steps", steps=600)
    job.spec.recovery.checkpoint.storage = str(small_disk)
    job.spec.recovery.checkpoint.max_consecutive_failures = 1000
    filler = fill(small_disk)
    supervisor = LocalSupervisor(job, RunOptions(workdir=tmp_path / "run", redis_url=redis_url))
    thread, out = run_in_thread(supervisor)

    def failing() -> dict[str, Any] | None:
        return next((c.to_wire() for c in supervisor.memory.conditions
                     if c.type == "CheckpointFailing" and c.status == "True"), None)

    wait_until(lambda: failing() is not None, 120, "the CheckpointFailing condition")
    condition = failing()
    assert condition is not None and "workers" in condition["message"]
    assert "No space left on device" in condition["message"], condition["message"]
    coord = Coordination(redis_url, job.namespace, job.name)
    step_then = coord.step_progress().step  # type: ignore[union-attr]
    wait_until(lambda: (p := coord.step_progress()) is not None and p.step > step_then + 20, 60,
               "training going on with every save failing")
    filler.unlink()  # space again: the next save succeeds
    join_run(thread, 240, tmp_path / "run")
    assert out["status"] == "Succeeded"
    [cleared] = [c for c in out["conditions"] if c["type"] == "CheckpointFailing"]
    assert (cleared["status"], cleared["reason"]) == ("False", "CheckpointsSaving")
    assert out["checkpoint"]["saves"] >= 1 and any(small_disk.glob("toy-full/step-*"))


def test_checkpoint_saves_failing_max_consecutive_failures_times_fail_the_job(
        redis_url: str, tmp_path: Path, small_disk: Path) -> None:
    job = toy_job("toy-full-fail", tmp_path / "steps", steps=100_000)
    job.spec.recovery.checkpoint.storage = str(small_disk)
    job.spec.recovery.checkpoint.max_consecutive_failures = 3
    fill(small_disk)
    summary = LocalSupervisor(job, RunOptions(workdir=tmp_path / "run", redis_url=redis_url)).run()
    assert summary["status"] == "Failed"
    failed = next(c for c in summary["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "CheckpointFailing"
    assert "3 checkpoint saves in a row failed" in failed["message"] and "No space" in failed["message"]
    assert summary["step"] > 0 and summary["failures"] == []  # no replica failed: its storage did
    assert toy_processes(tmp_path / "steps") == []


def test_the_llama_sft_example_replays_exactly_after_a_kill(redis_url: str, tmp_path: Path) -> None:
    """The real example script (AdamW state, DCP, the untrained accuracy carried in the checkpoint): a run with a
    worker killed after a checkpoint ends with the failure-free run's loss, since a step's data and learning rate
    are functions of the step alone."""
    from trainingjob_operator.api.loading import load_manifest

    def sft(name: str) -> TrainingJob:
        job = load_manifest(Path(__file__).resolve().parents[2] / "examples" / "llama-sft-local.yaml")
        job.metadata.name = name
        assert job.spec.pytorch is not None
        job.spec.pytorch.command += ["--steps", "60", "--eval-problems", "10"]
        job.spec.recovery.checkpoint.interval_seconds = 1.0
        return job

    clean = LocalSupervisor(sft("sft-clean"), RunOptions(workdir=tmp_path / "clean", redis_url=redis_url)).run()
    job = sft("sft-kill")
    supervisor = LocalSupervisor(job, RunOptions(workdir=tmp_path / "kill", redis_url=redis_url))
    thread, out = run_in_thread(supervisor)
    coord = Coordination(redis_url, job.namespace, job.name)
    wait_until(lambda: len(coord.checkpoints()) >= 1 and (p := coord.step_progress()) is not None and p.step >= 25,
               180, "a checkpoint and 25 steps")
    os.kill(supervisor.processes["worker-1"].pid, signal.SIGKILL)
    join_run(thread, 300, tmp_path / "kill")
    assert clean["status"] == out["status"] == "Succeeded"
    assert len(out["failures"]) == 1 and out["restarts_in_place"] == 1
    [recovery] = out["recoveries"]
    assert recovery["resumed_from_step"] >= 1
    # The last step's global loss: the same step on the same weights and data (final_loss averages the steps of
    # the last generation only, fewer after a late restart).
    assert out["result"]["last_loss"] == pytest.approx(clean["result"]["last_loss"], rel=1e-4)
    assert out["result"]["untrained_thinking_on"] == clean["result"]["untrained_thinking_on"]  # carried over
    assert {"thinking_on", "thinking_off"} <= set(out["result"])


def test_a_command_missing_from_the_image_fails_the_job_at_once_naming_it(redis_url: str, tmp_path: Path) -> None:
    job = toy_job("toy-missing", tmp_path / "steps")
    assert job.spec.pytorch is not None
    job.spec.pytorch.command = ["no-such-trainer", "--lr", "1"]
    summary = LocalSupervisor(job, RunOptions(workdir=tmp_path / "run", redis_url=redis_url)).run()
    assert summary["status"] == "Failed"
    failed = next(c for c in summary["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "PermanentError", failed
    assert all(len(r["pids"]) == 1 for r in summary["replicas"])  # exit 78: nothing was restarted
    logs = (tmp_path / "run" / "logs" / "worker-0.log").read_text()
    assert "pytorch.command ['no-such-trainer', '--lr', '1'] cannot be started" in logs
