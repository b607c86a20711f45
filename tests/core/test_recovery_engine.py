"""The recovery decisions both shells take from ``core``: mode, failure record, rollback, tuning inputs,
and the env contract rendered for a pod and for a process."""

from __future__ import annotations

from typing import Any

import pytest

from trainingjob_operator.api import parse_manifest
from trainingjob_operator.api.spec import RecoveryMode, Role, TrainingJob, TrainingJobSpec
from trainingjob_operator.core import contract
from trainingjob_operator.core.recovery import (
    RestoreRound,
    RollbackPoint,
    consistent_round,
    failure_record,
    measurements,
    resolve_mode,
    rollback_point,
    round_members,
    trainer_rollbacks,
    tuning_inputs,
)
from trainingjob_operator.k8s.resources import Owner, render_pod
from trainingjob_operator.reconcile import (
    CreateReason,
    CreateReplica,
    FailureEvent,
    FailureReason,
    RecordFailure,
    ReplicaId,
)

T1 = ReplicaId(Role.TRAINER, 1)
E0 = ReplicaId(Role.EMBEDDING_SERVER, 0)


def make_job(**spec: Any) -> TrainingJob:
    return parse_manifest({"apiVersion": "training.cpr.dev/v1alpha1", "kind": "TrainingJob",
                           "metadata": {"name": "job", "namespace": "ml"}, "spec": spec})


@pytest.mark.parametrize(("requested", "planned", "expected"), [
    (RecoveryMode.PARTIAL, "full", RecoveryMode.PARTIAL),
    (RecoveryMode.FULL, "partial", RecoveryMode.FULL),
    (RecoveryMode.AUTO, "full", RecoveryMode.FULL),
    (RecoveryMode.AUTO, "partial", RecoveryMode.PARTIAL),
    (RecoveryMode.AUTO, None, RecoveryMode.PARTIAL),  # before the benefit test ran
])
def test_the_effective_mode(requested: RecoveryMode, planned: str | None, expected: RecoveryMode) -> None:
    assert resolve_mode(requested, planned) is expected


def test_the_failure_record_carries_the_samples_at_failure() -> None:
    action = RecordFailure(FailureEvent(E0, FailureReason.HEARTBEAT_TIMEOUT, 123.5, None, "uid-9"), 4, "partial")
    record = failure_record(action, samples=81920, replica="job-embedding-server-0")
    assert record.to_stream() == {
        "role": "embedding-server", "rank": 0, "reason": "HeartbeatTimeout", "time": 123.5, "exit_code": None,
        "instance": "uid-9", "generation": 4, "mode": "partial", "samples": 81920, "pod": "job-embedding-server-0"}


MEMBERS = ["embedding-server-0", "embedding-server-1", "sync-server-0"]


def part(checkpoint_id: str, cursor: int) -> dict[str, Any]:
    return {"id": checkpoint_id, "cursor": cursor}


def test_full_recovery_restores_the_newest_round_every_server_saved() -> None:
    saved = {
        3: {"embedding-server-0": part("00000007-full", 40), "sync-server-0": part("00000004-dense", 40)},
        2: {m: part(f"{m}-r2", 30) for m in MEMBERS},  # round 3 lacks shard 1: not a consistent cut
        1: {m: part(f"{m}-r1", 15) for m in MEMBERS},
    }
    restore = consistent_round(saved, MEMBERS)
    assert restore == RestoreRound(2, 30, {m: f"{m}-r2" for m in MEMBERS})
    assert rollback_point(restore, batch_size=1024) == RollbackPoint(cursor=30, samples=30 * 1024)
    assert restore.to_wire() == {"round": 2, "cursor": 30, "ids": {m: f"{m}-r2" for m in MEMBERS}}


def test_without_a_complete_round_a_full_recovery_starts_over() -> None:
    assert consistent_round({}, MEMBERS) is None
    assert consistent_round({1: {"embedding-server-0": part("x", 5)}}, MEMBERS) is None
    assert rollback_point(None, batch_size=1024) == RollbackPoint(0, 0)
    assert round_members(make_job(replicas={"embeddingServer": {"replicas": 2}}).spec) == MEMBERS


def test_only_full_recovery_rolls_replaced_trainers_back() -> None:
    point = RollbackPoint(3, 3072)
    actions = [CreateReplica(T1, 1, CreateReason.REPLACEMENT), CreateReplica(E0, 1, CreateReason.REPLACEMENT),
               CreateReplica(ReplicaId(Role.TRAINER, 0), 0, CreateReason.INITIAL)]
    assert trainer_rollbacks(actions, RecoveryMode.FULL, point) == {1: point}
    assert trainer_rollbacks(actions, RecoveryMode.PARTIAL, point) == {}
    assert trainer_rollbacks(actions, RecoveryMode.FULL, None) == {}


def test_tuning_inputs_use_medians_and_the_failure_log() -> None:
    spec = TrainingJobSpec()
    got = measurements({"stall_full": [1.0, 9.0, 2.0], "o_load": [], "o_res": [4.0]}, 1000.0)
    assert (got.o_save_s, got.o_load_s, got.o_res_s, got.samples_per_second) == (2.0, None, 4.0, 1000.0)
    inputs = tuning_inputs(spec, costs={"stall_full": [1.0]}, started=100.0, now=400.0, lost_samples=50, samples=1000,
                           samples_per_second=None,
                           failure_log=[{"role": "embedding-server", "rank": 1, "time": 160.0}, {"junk": 1}])
    assert [(f.role, f.rank, f.time_s) for f in inputs.failures] == [("embedding-server", 1, 60.0)]
    assert inputs.observed_seconds == 300.0
    # A portion of the job's planned samples, not of the 1000 trained so far: two early failures must not
    # look like a spent PLS budget (issue #9: auto flipped to full after early failures).
    assert inputs.measured_pls == 50 / spec.data.train_samples
    late = tuning_inputs(spec, costs={}, started=0.0, now=1.0, lost_samples=50, samples=2 * spec.data.train_samples,
                         samples_per_second=None, failure_log=[])
    assert late.measured_pls == 50 / (2 * spec.data.train_samples)


def test_one_env_contract_for_pods_and_processes() -> None:
    """Same names in the same order; a pod gets references where a process gets literals."""
    job = make_job(replicas={"embeddingServer": {"env": {"EXTRA": "1", "TJ_RANK": "9", "TJ_GRPC_PORT": "1"}}})
    pod = render_pod(job, E0, owner=Owner("job", "uid"), redis_url="redis://r:6379/0", generation=2)
    pod_env = pod["spec"]["containers"][0]["env"]
    process_env = contract.replica_env(job, E0, redis_url="redis://r:6379/0", generation=2,
                                       placement=contract.process_placement(job, "/tmp/ck"))
    assert [e["name"] for e in pod_env if e["name"] != "TJ_INSTANCE"] == [n for n, _ in process_env]
    literal = contract.literal_env(process_env)
    assert literal["EXTRA"] == "1" and literal["TJ_RANK"] == "0"  # role.env never overrides the contract
    assert literal["TJ_GRPC_PORT"] == "0" and literal["POD_IP"] == "127.0.0.1"
    assert literal["TJ_CHECKPOINT_DIR"] == "/tmp/ck"
    by_name = {e["name"]: e for e in pod_env}
    assert by_name["TJ_GRPC_PORT"]["value"] == "50051"  # the port the pod declares and probes
    assert by_name["TJ_RANK"]["value"] == "0"
    with pytest.raises(ValueError, match="only a pod can resolve it"):
        contract.literal_env(contract.replica_env(job, E0, redis_url="r", generation=0,
                                                  placement=contract.pod_placement("cm", "k")))
