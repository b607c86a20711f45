"""CPR recovery end to end: real processes, real gRPC, a real Redis, real checkpoints on disk."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import run_in_thread, small_job, wait_until
from trainingjob_operator.coordination import Coordination
from trainingjob_operator.local.injection import Injection
from trainingjob_operator.local.redis_server import EmbeddedRedis
from trainingjob_operator.local.supervisor import LocalSupervisor, RunOptions

pytestmark = pytest.mark.processes

ALL = ["embedding-server-0", "embedding-server-1", "sync-server-0", "trainer-0", "trainer-1"]


def cpr_job(**overrides: object):  # type: ignore[no-untyped-def]
    defaults: dict[str, object] = {
        "data__trainSamples": 600_000, "recovery__checkpoint__initialIntervalSeconds": 2,
        "recovery__checkpoint__minIntervalSeconds": 1, "recovery__mtbfPriorHours": 0.01,
    }
    return small_job(**{**defaults, **overrides})


def run(job, tmp_path: Path, redis_url: str, injections: list[Injection]) -> dict:  # type: ignore[no-untyped-def]
    return LocalSupervisor(job, RunOptions(workdir=tmp_path, redis_url=redis_url, injections=injections)).run()


def test_every_role_fails_and_only_the_failed_replicas_restart(redis_url: str, tmp_path: Path) -> None:
    job = cpr_job(data__trainSamples=900_000)
    supervisor = LocalSupervisor(job, RunOptions(workdir=tmp_path, redis_url=redis_url))
    thread, out = run_in_thread(supervisor)
    coord = Coordination(redis_url, job.namespace, job.name)
    # Kill the shard once it has a checkpoint to restore.
    wait_until(lambda: coord.checkpoint_pointer(1) is not None, 120, "a shard-1 checkpoint")
    for role, rank in [("embedding-server", 1), ("trainer", 0), ("sync-server", 0)]:
        # Injected through the supervisor's own schedule, so detection times are measured.
        supervisor.tracker.injections.append(Injection(time.time() - supervisor.started, role, rank))
        time.sleep(3.0)
    thread.join(300)
    summary = out
    assert summary["status"] == "Succeeded"
    assert summary["restarts"] == {"embedding-server-0": 0, "embedding-server-1": 1, "sync-server-0": 1,
                                   "trainer-0": 1, "trainer-1": 0}
    by_name = {f"{r['role']}-{r['rank']}": r for r in summary["replicas"]}
    for name in ALL:
        assert len(by_name[name]["pids"]) == 1 + summary["restarts"][name]
    emb, trainer, sync = summary["failures"]
    assert emb["role"] == "embedding-server" and emb["detected_after_s"] < 2 and emb["recovered_after_s"] > 0
    assert "restored" in emb["restored"]  # the replacement loaded its shard's checkpoint
    assert 0 <= emb["lost_samples"] <= emb["samples_at_failure"] // 2
    assert trainer["lost_samples"] == 0 and sync["lost_samples"] == 0
    assert summary["pls"] == pytest.approx(summary["lost_samples"] / summary["samples"], abs=1e-6)
    assert summary["checkpoint"]["saves"] >= 2 and summary["checkpoint"]["errors"] == {}
    assert summary["recovery"]["interval_history"], "the interval was never planned"
    # The survivor trainer waited for the embedding server no longer than its replacement took + 1 s.
    survivor = next(t for t in summary["trainers"] if t["rank"] == 1)
    assert survivor["stalled_on_embedding_servers_s"] <= emb["recovered_after_s"] + 1.0


def test_full_recovery_restarts_everything_and_rolls_back(redis_url: str, tmp_path: Path) -> None:
    job = cpr_job(recovery__mode="full", recovery__checkpoint__intervalSeconds=3)
    supervisor = LocalSupervisor(job, RunOptions(workdir=tmp_path, redis_url=redis_url))
    thread, out = run_in_thread(supervisor)
    coord = Coordination(redis_url, job.namespace, job.name)

    def trained_past_the_checkpoints() -> bool:
        pointers = [coord.checkpoint_pointer(s) for s in range(2)]
        if any(p is None or p.get("progress") is None for p in pointers):
            return False
        return coord.total_samples(2) > max(p["progress"] for p in pointers if p) + 4 * 512

    # Fail between two saves (fixed 3 s interval) so there is work to roll back.
    wait_until(trained_past_the_checkpoints, 120, "training past the first checkpoints")
    supervisor.tracker.injections.append(Injection(time.time() - supervisor.started, "embedding-server", 0))
    thread.join(300)
    summary = out
    assert summary["status"] == "Succeeded"
    assert all(count == 1 for count in summary["restarts"].values()), summary["restarts"]
    [failure] = summary["failures"]
    assert failure["mode"] == "full"
    # Every trainer resumed from the checkpoint's rollback point (never past the failure) and trained
    # the samples since then again; nothing is lost.
    batch, trainers = job.spec.data.batch_size, job.spec.replicas.trainer.replicas
    starts = {t["start_cursor"] for t in summary["trainers"]}
    assert len(starts) == 1
    rollback = starts.pop() * batch * trainers
    assert 0 <= rollback < failure["samples_at_failure"]
    assert failure["rolled_back_samples"] > 0
    assert failure["rolled_back_samples"] == failure["samples_at_failure"] - rollback
    assert summary["samples"] == job.spec.data.train_samples
    assert summary["lost_samples"] == 0


def test_corrupt_checkpoint_falls_back_to_the_previous_intact_one(redis_url: str, tmp_path: Path) -> None:
    job = cpr_job(data__trainSamples=900_000)
    supervisor = LocalSupervisor(job, RunOptions(workdir=tmp_path, redis_url=redis_url))
    thread, out = run_in_thread(supervisor)
    shard_dir = tmp_path / "checkpoints" / "shard-0"
    wait_until(lambda: len(list(shard_dir.glob("*/MANIFEST.json"))) >= 2, 120, "two shard-0 checkpoints")
    newest = sorted(p.parent for p in shard_dir.glob("*/MANIFEST.json"))[-1]
    victim = sorted(newest.glob("*.safetensors"))[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    os.kill(supervisor.processes["embedding-server-0"].pid, signal.SIGKILL)
    thread.join(300)
    assert out["status"] == "Succeeded"
    [failure] = out["failures"]
    restored = failure["restored"]
    assert "fell back" in restored or "corrupt" in restored, restored


def test_unwritable_checkpoint_storage_keeps_training_and_reports(redis_url: str, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the checkpoint directory should be")
    job = cpr_job(data__trainSamples=300_000, recovery__checkpoint__storage=str(blocker / "ckpt"))
    summary = run(job, tmp_path, redis_url, [])
    assert summary["status"] == "Succeeded"
    assert summary["checkpoint"]["saves"] == 0
    # Every saver on that storage says so: both shards and the sync server's dense copy.
    assert set(summary["checkpoint"]["errors"]) == {"0", "1", "sync-server-0"}
    assert all("not writable" in message for message in summary["checkpoint"]["errors"].values())


def test_redis_restart_mid_run_is_survived(tmp_path: Path) -> None:
    redis = EmbeddedRedis(tmp_path / "redis", appendonly=True)
    url = redis.start()
    try:
        job = cpr_job(data__trainSamples=500_000)
        supervisor = LocalSupervisor(job, RunOptions(workdir=tmp_path, redis_url=url))
        thread, out = run_in_thread(supervisor)
        coord = Coordination(url, job.namespace, job.name)
        wait_until(lambda: sum(p.samples for p in coord.all_progress(2).values()) >= 50_000, 120, "progress")
        redis.stop()
        time.sleep(1.5)
        redis.start()
        thread.join(300)
        assert out["status"] == "Succeeded"
        assert out["failures"] == []  # nobody was replaced because Redis blinked
        assert out["samples"] == job.spec.data.train_samples
    finally:
        redis.stop()


def test_a_trainer_killed_while_evaluating_is_replaced_by_one_that_only_evaluates(
        redis_url: str, tmp_path: Path) -> None:
    """A trainer that has read its whole shard and dies in its final evaluation: its replacement resumes at the
    end of the shard and evaluates; it does not train the shard again from batch 0."""
    job = cpr_job(data__trainSamples=200_000, data__evalSamples=1_500_000)  # an evaluation that takes a while
    supervisor = LocalSupervisor(job, RunOptions(workdir=tmp_path, redis_url=redis_url))
    thread, out = run_in_thread(supervisor)
    coord = Coordination(redis_url, job.namespace, job.name)

    def evaluating() -> bool:
        progress = coord.progress(0)
        return progress is not None and progress.done and coord.result(0) is None

    wait_until(evaluating, 120, "trainer-0 done with its shard, evaluating")
    os.kill(supervisor.processes["trainer-0"].pid, signal.SIGKILL)
    thread.join(300)
    assert out["status"] == "Succeeded"
    assert out["restarts"]["trainer-0"] == 1
    result = coord.result(0)
    assert result is not None
    assert result["trained_samples"] == 0  # the replacement trained nothing: the shard was done
    assert out["samples"] == job.spec.data.train_samples  # every shard's samples counted once
