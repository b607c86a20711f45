"""The pure decisions of the pytorch workload: the agent's, the helpers', the reconcile core's and the tuner's."""

from __future__ import annotations

import math
from typing import Any

import pytest

from trainingjob_operator.api.loading import ManifestError, parse_manifest
from trainingjob_operator.api.spec import Role, TrainingJobSpec
from trainingjob_operator.api.status import Phase
from trainingjob_operator.core.contract import replica_command
from trainingjob_operator.core.recovery import effective_mode
from trainingjob_operator.reconcile import (
    CreateReplica,
    DeleteReplica,
    JobMemory,
    ObservedReplica,
    RecordFailure,
    ReplicaId,
    ReplicaPhase,
    desired_replicas,
    reconcile,
)
from trainingjob_operator.tuning import FailureObservation, daly_interval, plan_pytorch, young_interval
from trainingjob_torch import decisions
from trainingjob_torch.decisions import LocalState, Next

W0, W1, W2 = (ReplicaId(Role.WORKER, r) for r in range(3))
NOW = 10_000.0


def pytorch_spec(**extra: Any) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate({
        "workload": "pytorch", "pytorch": {"command": ["python", "train.py"]},
        "replicas": {"worker": {"replicas": 3}},
        "recovery": {"checkpoint": {"volume": {"kind": "sharedClaim", "claimName": "ckpt"}}}, **extra})


def running(rid: ReplicaId, phase: ReplicaPhase = ReplicaPhase.RUNNING, **kw: Any) -> ObservedReplica:
    kw.setdefault("instance", f"{rid.name}-a")
    return ObservedReplica(rid, phase, heartbeat_at=NOW - 1, started_at=NOW - 100, **kw)


def memory() -> JobMemory:
    return JobMemory(phase=Phase.RUNNING, created_at={r.name: NOW - 500 for r in (W0, W1, W2)}, start_time=NOW - 500)


# --- the reconcile core -----------------------------------------------------------------------


def test_a_pytorch_job_runs_its_workers_and_nothing_of_dlrm() -> None:
    spec = pytorch_spec()
    assert desired_replicas(spec) == [W0, W1, W2]
    decision = reconcile(spec, {}, JobMemory(), NOW)
    assert [a.id for a in decision.actions if isinstance(a, CreateReplica)] == [W0, W1, W2]
    assert set(decision.replicas) == {"worker"}
    assert replica_command(Role.WORKER) == ["python", "-m", "trainingjob_torch.agent"]


def test_a_failed_worker_alone_is_replaced_and_the_generation_moves_for_the_survivors() -> None:
    spec = pytorch_spec()
    observed = {W0: running(W0), W1: running(W1, ReplicaPhase.FAILED, exit_code=137), W2: running(W2)}
    decision = reconcile(spec, observed, memory(), NOW, effective_mode(spec, "full").value)
    deletes = [a for a in decision.actions if isinstance(a, DeleteReplica)]
    assert [(a.id, a.recreate) for a in deletes] == [(W1, True)]  # the survivors' pods stay
    [record] = [a for a in decision.actions if isinstance(a, RecordFailure)]
    assert record.generation == 1  # what write_failure publishes: the survivors' agents restart in place
    assert decision.memory.generation == 1


def test_full_mode_recreates_every_worker_pod() -> None:
    spec = pytorch_spec(recovery={"mode": "full", "checkpoint": {"volume": {"kind": "sharedClaim",
                                                                           "claimName": "c"}}})
    observed = {W0: running(W0), W1: running(W1, ReplicaPhase.FAILED, exit_code=1), W2: running(W2)}
    decision = reconcile(spec, observed, memory(), NOW, "full")
    assert {a.id for a in decision.actions if isinstance(a, DeleteReplica)} == {W0, W1, W2}


def test_the_job_succeeds_when_every_worker_exits_0_and_an_early_finisher_is_no_failure() -> None:
    spec = pytorch_spec()
    early = reconcile(spec, {W0: running(W0, ReplicaPhase.SUCCEEDED, exit_code=0), W1: running(W1),
                             W2: running(W2)}, memory(), NOW)
    assert early.phase is Phase.RUNNING and not any(isinstance(a, RecordFailure) for a in early.actions)
    done = reconcile(spec, {w: running(w, ReplicaPhase.SUCCEEDED, exit_code=0) for w in (W0, W1, W2)},
                     early.memory, NOW + 1)
    assert done.phase is Phase.SUCCEEDED
    succeeded = next(c for c in done.memory.conditions if c.type == "Succeeded")
    assert succeeded.reason == "WorkersCompleted" and "3 workers" in succeeded.message


def test_auto_mode_never_turns_a_pytorch_plan_into_recreating_every_pod() -> None:
    spec = pytorch_spec(recovery={"mode": "auto", "checkpoint": {"volume": {"kind": "emptyDir"}}})
    assert effective_mode(spec, "full").value == "partial"


# --- the spec -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "field", "words"), [
    ({"workload": "pytorch"}, "spec", "pytorch is required when workload is pytorch"),
    ({"workload": "pytorch", "pytorch": {"command": ["python", "x.py"]}}, "spec", "claimPerReplica"),
    ({"workload": "pytorch", "pytorch": {"command": []}}, "spec.pytorch.command", "at least 1"),
    ({"pytorch": {"command": ["python", "x.py"]}}, "spec", "workload is dlrm"),
    ({"workload": "pytorch", "pytorch": {"command": ["x"], "procsPerWorker": 0}}, "spec.pytorch.procsPerWorker",
     "greater than or equal to 1"),
    ({"workload": "tensorflow"}, "spec.workload", "dlrm"),
])
def test_a_bad_pytorch_manifest_names_the_field(spec: dict[str, Any], field: str, words: str) -> None:
    doc = {"apiVersion": "training.cpr.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "x"},
           "spec": spec}
    with pytest.raises(ManifestError) as info:
        parse_manifest(doc)
    assert field in str(info.value) and words in str(info.value)


def test_the_examples_parse() -> None:
    from pathlib import Path

    from trainingjob_operator.api.loading import load_manifest

    paths = sorted((Path(__file__).resolve().parents[2] / "examples").glob("llama-sft*.yaml"))
    assert len(paths) == 3
    for path in paths:
        job = load_manifest(path)
        assert job.spec.workload.value == "pytorch" and job.spec.pytorch is not None, path
        assert job.spec.pytorch.command == ["python", "-m", "llama_sft"]


# --- the agent -------------------------------------------------------------------------------------


def state(codes: tuple[int | None, ...], moved: bool = False, failed_since: float | None = None,
          ours: bool = False, now: float = 100.0) -> LocalState:
    return LocalState(codes, moved, failed_since, now, 30.0, ours)


@pytest.mark.parametrize(("s", "expected"), [
    (state((None, None)), Next.KEEP_RUNNING),
    (state((0, None)), Next.KEEP_RUNNING),  # one local process done, the other still training
    (state((0, 0)), Next.DONE),
    (state((None, None), moved=True), Next.RESTART_IN_PLACE),
    (state((0, 0), moved=True), Next.RESTART_IN_PLACE),  # a moved generation wins
    (state((1, None), failed_since=90.0, ours=True), Next.WAIT_FOR_PEERS),  # within the grace
    (state((1, -15), failed_since=60.0, ours=True), Next.FAIL_POD),  # the grace passed: its own failure
    (state((1, -15), failed_since=0.0, ours=False), Next.WAIT_FOR_PEERS),  # collateral: waits for the peer's pod
    (state((1, -15), failed_since=60.0, moved=True, ours=True), Next.RESTART_IN_PLACE),
])
def test_the_agent_restarts_in_place_only_when_the_generation_moves(s: LocalState, expected: Next) -> None:
    assert decisions.next_step(s) is expected


def test_each_process_gets_torchruns_env() -> None:
    env = decisions.process_env(worker_rank=1, workers=3, local_rank=1, procs_per_worker=2, master_addr="10.0.0.5",
                                master_port=29500, generation=4, restarts=2)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"], env["GROUP_RANK"]) == (
        "3", "6", "1", "2", "1")
    assert (env["MASTER_ADDR"], env["MASTER_PORT"], env["TORCHELASTIC_RESTART_COUNT"]) == ("10.0.0.5", "29500", "2")
    assert decisions.split_address("[fd00::1]:29500") == ("fd00::1", 29500)
    assert decisions.resolve_command(["python", "-m", "x"], "/venv/bin/python") == ["/venv/bin/python", "-m", "x"]
    assert decisions.resolve_command(["torchrun", "x"], "/venv/bin/python") == ["torchrun", "x"]


def test_a_generation_forms_only_with_every_current_incarnation() -> None:
    world = {0: {"address": "a:1", "instance": "u0"}, 1: {"address": "b:1", "instance": "u1-old"}}
    assert not decisions.world_complete(world, 2, {0: "u0", 1: "u1-new"})  # the replaced pod joined, then died
    assert not decisions.world_complete({0: world[0]}, 2, {0: "u0", 1: "u1-new"})
    world[1] = {"address": "c:1", "instance": "u1-new"}
    assert decisions.world_complete(world, 2, {0: "u0", 1: "u1-new"})


# --- checkpoints ---------------------------------------------------------------------------------


def test_the_newest_complete_checkpoint_is_loaded_never_a_staging_or_unfinished_one() -> None:
    entries = {"step-000000010": [".metadata", "__0_0.distcp"], "step-000000020": ["__0_0.distcp"],
               ".step-000000030.g2.tmp": [".metadata"], "other": [".metadata"]}
    assert decisions.newest_complete(entries) == ("step-000000010", 10)
    assert decisions.newest_complete({}) is None
    names = ["step-000000010", "step-000000020", "step-000000030", ".step-000000025.g1.tmp",
             ".step-000000040.g3.tmp"]
    assert decisions.to_prune(names, keep=2) == [".step-000000025.g1.tmp", "step-000000010"]


def test_saves_follow_the_interval_and_never_repeat_a_step() -> None:
    assert decisions.save_due(now=100, last_save=40, interval_s=60, step=5, last_saved_step=2)
    assert not decisions.save_due(now=99, last_save=40, interval_s=60, step=5, last_saved_step=2)
    assert not decisions.save_due(now=500, last_save=40, interval_s=60, step=5, last_saved_step=5)


# --- the interval ----------------------------------------------------------------------------------


def test_the_interval_is_dalys_on_the_measured_save_cost_and_the_workers_failure_rate() -> None:
    # 4 workers, 8 failures in one hour: T_fail_job = 4 * 3600 / 8 / 4 = 450 s (evidence past the prior).
    failures = [FailureObservation("worker", i % 4, 100.0 * i) for i in range(8)]
    plan = plan_pytorch(workers=4, mtbf_prior_hours_per_worker=24, failures=failures, observed_seconds=3600,
                        o_save_s=2.0, o_load_s=1.0, min_interval_s=5, max_interval_s=86_400,
                        initial_interval_s=60)
    assert math.isclose(plan.t_fail_job_s, 450.0)
    assert math.isclose(plan.interval_s, daly_interval(2.0, 450.0))
    assert abs(plan.interval_s - young_interval(2.0, 450.0)) < 0.1 * plan.interval_s  # Daly ~ Young when C << M
    assert "Daly" in plan.reason and "Young" in plan.reason
    # Failures of other roles do not count; unmeasured saves use the initial interval; a fixed one wins.
    unmeasured = plan_pytorch(workers=4, mtbf_prior_hours_per_worker=24, failures=[], observed_seconds=10,
                              o_save_s=None, o_load_s=None, min_interval_s=5, max_interval_s=86_400,
                              initial_interval_s=60)
    assert unmeasured.interval_s == 60
    fixed = plan_pytorch(workers=4, mtbf_prior_hours_per_worker=24, failures=failures, observed_seconds=3600,
                         o_save_s=2.0, o_load_s=None, min_interval_s=5, max_interval_s=86_400,
                         initial_interval_s=60, fixed_interval_s=7.0)
    assert fixed.interval_s == 7.0
