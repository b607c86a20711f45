"""A killed local supervisor: its replicas keep training, ``trainingjob run --resume`` adopts them, and the keeper
stops them when nobody resumes. The supervisor runs as the CLI process a user starts, and is SIGKILLed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml

from tests.conftest import run_in_thread, small_job, wait_until
from trainingjob_operator.api.spec import TrainingJob
from trainingjob_operator.coordination import Coordination
from trainingjob_operator.local.keeper import process_of, processes_of_run
from trainingjob_operator.local.runstate import RunState, read_state
from trainingjob_operator.local.supervisor import LocalSupervisor, RunOptions

pytestmark = pytest.mark.processes

TRAININGJOB = [sys.executable, "-m", "trainingjob_operator.cli", "run"]


def start(job: TrainingJob, workdir: Path, *args: str) -> subprocess.Popen[bytes]:
    manifest = workdir.parent / f"{job.name}.yaml"
    manifest.write_text(yaml.safe_dump(job.to_wire()))
    log = (workdir.parent / "supervisor.log").open("ab")
    return subprocess.Popen([*TRAININGJOB, str(manifest), "--workdir", str(workdir), *args], stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def running_state(workdir: Path, job: TrainingJob) -> RunState:
    """The state once every replica runs and the trainers have trained a little."""
    wait_until(lambda: (workdir / "run-state.json").exists(), 60, "the state file")
    state = read_state(workdir / "run-state.json")
    coord = Coordination(state.redis_url, job.namespace, job.name)
    wait_until(lambda: trained(coord) > 40_000, 120, "training progress")
    return read_state(workdir / "run-state.json")


def trained(coord: Coordination) -> int:
    return sum(p.samples for p in coord.all_progress(2).values())


def kill_supervisor(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def replicas(summary: dict) -> dict[str, list[int]]:
    return {f"{r['role']}-{r['rank']}": [p["pid"] for p in r["pids"]] for r in summary["replicas"]}


def nothing_of_the_run_left(state: RunState) -> bool:
    listed = [*state.processes.values(), state.redis, state.keeper]
    return not processes_of_run(state.run_id) and all(process_of(ref) is None for ref in listed)


def test_a_killed_supervisor_is_resumed_and_only_the_replica_that_died_meanwhile_is_replaced(tmp_path: Path) -> None:
    job = small_job(data__trainSamples=500_000)
    workdir = tmp_path / "work"
    first = start(job, workdir, "--orphan-grace", "300")
    state = running_state(workdir, job)
    kill_supervisor(first)

    # The job goes on without a supervisor: the trainers keep training against the same Redis.
    coord = Coordination(state.redis_url, job.namespace, job.name)
    at_kill = trained(coord)
    wait_until(lambda: trained(coord) > at_kill + 20_000, 120, "training without a supervisor")
    assert all(process_of(ref) is not None for ref in state.processes.values())
    victim = state.processes["embedding-server-1"]
    os.kill(victim.pid, signal.SIGKILL)  # dies while nobody supervises
    wait_until(lambda: process_of(victim) is None, 10, "the victim to die")

    second = start(job, workdir, "--resume")
    assert second.wait(400) == 0, (tmp_path / "supervisor.log").read_text()[-3000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["status"] == "Succeeded"
    assert summary["samples"] >= job.spec.data.train_samples
    assert summary["auc"] > 0.6
    pids = replicas(summary)
    for name, ref in state.processes.items():  # every survivor adopted: still its first and only process
        if name != "embedding-server-1":
            assert pids[name] == [ref.pid], f"{name} was restarted"
    assert pids["embedding-server-1"][0] == victim.pid and len(pids["embedding-server-1"]) == 2
    [failure] = summary["failures"]
    assert (failure["role"], failure["rank"], failure["reason"]) == ("embedding-server", 1, "ExitCode137")
    assert summary["supervisor"]["resumes"] == 1
    assert "embedding-server-1" not in summary["supervisor"]["adopted"]
    assert {"embedding-server-0", "sync-server-0"} <= set(summary["supervisor"]["adopted"])
    trainers = [r for r in summary["replicas"] if r["role"] == "trainer"]
    assert all(p["exit_code"] == 0 for r in trainers for p in r["pids"])  # codes of processes it did not start
    final = read_state(workdir / "run-state.json")
    assert final.ended == "Succeeded"
    wait_until(lambda: nothing_of_the_run_left(final), 30, "every process of the run to be gone")


def test_unresumed_replicas_are_stopped_after_the_grace_period_and_a_later_resume_replaces_them(
        tmp_path: Path) -> None:
    # Long enough that no trainer finishes before the keeper stops it: this small model trains at up to ~36k
    # samples/s per trainer here, and a trainer that finished in the gap is (rightly) no failure to replace.
    job = small_job(data__trainSamples=2_000_000)
    workdir = tmp_path / "work"
    first = start(job, workdir, "--orphan-grace", "4")
    state = running_state(workdir, job)
    kill_supervisor(first)
    assert all(process_of(ref) is not None for ref in [*state.processes.values(), state.redis, state.keeper])
    wait_until(lambda: nothing_of_the_run_left(state), 60, "the keeper to stop the orphaned run")
    assert "no supervisor for 4 s" in (workdir / "logs" / "keeper.log").read_text()

    # Everything is gone, Redis too; a resume brings Redis back from its AOF (the cursors and checkpoints the
    # replicas recorded) and replaces every replica, each counted as a failure.
    second = start(job, workdir, "--resume")
    assert second.wait(400) == 0, (tmp_path / "supervisor.log").read_text()[-3000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["status"] == "Succeeded" and summary["samples"] >= job.spec.data.train_samples
    assert sorted(f"{f['role']}-{f['rank']}" for f in summary["failures"]) == sorted(state.processes)
    assert all(len(p) == 2 for p in replicas(summary).values())
    final = read_state(workdir / "run-state.json")
    wait_until(lambda: nothing_of_the_run_left(final), 30, "every process of the run to be gone")


def test_resume_refuses_a_run_that_is_still_supervised_or_over(tmp_path: Path) -> None:
    job = small_job(data__trainSamples=5_000_000)  # still training when it is stopped
    workdir = tmp_path / "work"
    missing = subprocess.run([*TRAININGJOB, "/dev/null", "--workdir", str(workdir), "--resume"], capture_output=True,
                             text=True)
    assert missing.returncode == 2  # /dev/null is no manifest: refused before any state is read
    first = start(job, workdir)
    try:
        running_state(workdir, job)
        manifest = tmp_path / f"{job.name}.yaml"
        while_alive = subprocess.run([*TRAININGJOB, str(manifest), "--workdir", str(workdir), "--resume"],
                                     capture_output=True, text=True, timeout=60)
        assert while_alive.returncode == 2
        assert f"a supervisor (pid {first.pid}) is still running this job" in " ".join(while_alive.stderr.split())
        fresh = subprocess.run([*TRAININGJOB, str(manifest), "--workdir", str(workdir)], capture_output=True,
                               text=True, timeout=60)
        assert fresh.returncode == 2 and "already running" in fresh.stderr
    finally:
        first.send_signal(signal.SIGTERM)  # stops the run as Ctrl-C does
        first.wait(60)
    over = subprocess.run([*TRAININGJOB, str(tmp_path / f"{job.name}.yaml"), "--workdir", str(workdir), "--resume"],
                          capture_output=True, text=True, timeout=60)
    assert over.returncode == 2 and "already ended (Interrupted)" in " ".join(over.stderr.split())
    nothing = subprocess.run([*TRAININGJOB, str(tmp_path / f"{job.name}.yaml"), "--workdir",
                              str(tmp_path / "elsewhere"), "--resume"], capture_output=True, text=True, timeout=60)
    assert nothing.returncode == 2 and "no run to resume" in " ".join(nothing.stderr.split())
    assert not psutil.pid_exists(first.pid)


def test_the_runs_redis_killed_is_started_again_from_its_aof_and_nothing_is_replaced(tmp_path: Path) -> None:
    job = small_job(data__trainSamples=500_000)
    supervisor = LocalSupervisor(job, RunOptions(workdir=tmp_path))  # an embedded Redis, as `trainingjob run`
    thread, out = run_in_thread(supervisor)
    wait_until(lambda: supervisor.redis_ref is not None and supervisor.coord is not None, 60, "the run's Redis")
    assert supervisor.redis_url is not None
    coord = Coordination(supervisor.redis_url, job.namespace, job.name)
    wait_until(lambda: trained(coord) > 40_000, 120, "training progress")
    cursors_before = {rank: p.samples for rank, p in coord.all_progress(2).items()}
    first = supervisor.redis_ref
    assert first is not None
    os.kill(first.pid, signal.SIGKILL)
    wait_until(lambda: supervisor.redis_restarts == 1, 60, "the Redis restart")
    assert supervisor.redis_ref is not None and supervisor.redis_ref.pid != first.pid
    # The job's state came back from the AOF (a second of writes at most is lost), and training goes on.
    restored = {rank: p.samples for rank, p in coord.all_progress(2).items()}
    assert all(restored[rank] >= cursors_before[rank] for rank in cursors_before)
    wait_until(lambda: trained(coord) > sum(restored.values()) + 20_000, 120, "training after the restart")
    thread.join(300)
    assert out["status"] == "Succeeded" and out["samples"] >= job.spec.data.train_samples
    assert out["failures"] == [] and all(r["restarts"] == 0 for r in out["replicas"])  # no replica noticed
    assert out["supervisor"]["redis_restarts"] == 1
    assert process_of(supervisor.redis_ref) is None  # stopped with the run
