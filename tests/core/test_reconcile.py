"""Table-driven tests of the pure reconcile core (the same core drives pods and local processes)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from trainingjob_operator.api.spec import Role, TrainingJobSpec
from trainingjob_operator.api.status import Phase
from trainingjob_operator.reconcile import (
    CREATE_GRACE_S,
    CreateReplica,
    Decision,
    DeleteReplica,
    JobMemory,
    ObservedReplica,
    RecordFailure,
    ReplicaId,
    ReplicaPhase,
    desired_replicas,
    reconcile,
)

T0, T1 = ReplicaId(Role.TRAINER, 0), ReplicaId(Role.TRAINER, 1)
E0, E1 = ReplicaId(Role.EMBEDDING_SERVER, 0), ReplicaId(Role.EMBEDDING_SERVER, 1)
S0 = ReplicaId(Role.SYNC_SERVER, 0)
ALL = [E0, E1, S0, T0, T1]
NOW = 10_000.0


def make_spec(**recovery: Any) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate({"recovery": {"heartbeatTimeoutSeconds": 10, **recovery}})


def replica(rid: ReplicaId, phase: ReplicaPhase = ReplicaPhase.RUNNING, **kw: Any) -> ObservedReplica:
    kw.setdefault("instance", f"{rid.name}-a")
    kw.setdefault("heartbeat_at", NOW - 1)
    kw.setdefault("started_at", NOW - 100)
    return ObservedReplica(rid, phase, **kw)


def cluster(**overrides: ObservedReplica | None) -> dict[ReplicaId, ObservedReplica]:
    """Every replica running and heartbeating, except the ones given (None: absent)."""
    out = {rid: replica(rid) for rid in ALL}
    for name, obs in overrides.items():
        rid = ReplicaId.parse(name.replace("_", "-"))
        if obs is None:
            del out[rid]
        else:
            out[rid] = obs
    return out


def running_memory(**kw: Any) -> JobMemory:
    """What the core remembers of a job that has been running a while."""
    base = JobMemory(phase=Phase.RUNNING, created_at={rid.name: NOW - 500 for rid in ALL}, start_time=NOW - 500)
    return dataclasses.replace(base, **kw)


def kinds(decision: Decision) -> list[tuple[str, str]]:
    return [(type(a).__name__, a.id.name if not isinstance(a, RecordFailure) else a.failure.id.name)
            for a in decision.actions]


def condition(decision: Decision, type_: str) -> Any:
    return next(c for c in decision.memory.conditions if c.type == type_)


# --- creation ----------------------------------------------------------------------------------------


def test_a_new_job_creates_every_replica_servers_first() -> None:
    decision = reconcile(make_spec(), {}, JobMemory(), NOW)
    assert decision.actions == [CreateReplica(rid, 0, "Initial") for rid in ALL]
    assert desired_replicas(make_spec()) == ALL
    assert decision.phase is Phase.PENDING
    assert decision.memory.start_time == NOW


@pytest.mark.parametrize(("age", "expected"), [
    pytest.param(1.0, [], id="within-grace-watch-lag"),
    pytest.param(CREATE_GRACE_S + 1, [("RecordFailure", "trainer-1"), ("CreateReplica", "trainer-1")],
                 id="vanished-after-grace"),
])
def test_a_created_replica_not_yet_observed(age: float, expected: list[tuple[str, str]]) -> None:
    memory = running_memory(created_at={**running_memory().created_at, "trainer-1": NOW - age})
    decision = reconcile(make_spec(), cluster(trainer_1=None), memory, NOW)
    assert kinds(decision) == expected


def test_a_replica_that_was_observed_and_disappears_is_replaced_at_once() -> None:
    """kubectl delete pod on a young pod: no waiting out the create grace of its first creation."""
    memory = running_memory(created_at={**running_memory().created_at, "trainer-1": NOW - 2})
    observed = reconcile(make_spec(), cluster(), memory, NOW)
    assert "trainer-1" in observed.memory.seen
    gone = reconcile(make_spec(), cluster(trainer_1=None), observed.memory, NOW + 0.5)
    assert kinds(gone) == [("RecordFailure", "trainer-1"), ("CreateReplica", "trainer-1")]
    assert gone.actions[0].failure.reason == "Deleted"
    assert "trainer-1" not in gone.memory.seen  # its replacement is not observed yet: watch-lag grace again
    lag = reconcile(make_spec(), cluster(trainer_1=None), gone.memory, NOW + 1.0)
    assert lag.actions == []


@pytest.mark.parametrize(("timeout", "silent_for", "failed"), [
    pytest.param(1800.0, 1200.0, False, id="a-large-shard-still-loading"),
    pytest.param(1800.0, 1801.0, True, id="past-the-spec-timeout"),
    pytest.param(60.0, 61.0, True, id="a-short-timeout"),
])
def test_the_no_heartbeat_grace_follows_the_spec(timeout: float, silent_for: float, failed: bool) -> None:
    spec = make_spec(startupTimeoutSeconds=timeout)
    obs = replica(E1, heartbeat_at=None, started_at=NOW - silent_for)
    decision = reconcile(spec, cluster(embedding_server_1=obs), running_memory(), NOW)
    assert kinds(decision) == ([("RecordFailure", "embedding-server-1"), ("DeleteReplica", "embedding-server-1")]
                               if failed else [])


def test_all_running_is_running() -> None:
    decision = reconcile(make_spec(), cluster(), running_memory(phase=Phase.PENDING), NOW)
    assert decision.actions == []
    assert decision.phase is Phase.RUNNING
    assert condition(decision, "Running").status == "True"


# --- failures ----------------------------------------------------------------------------------------

FAILURES = pytest.mark.parametrize(("observed", "reason", "exit_code"), [
    pytest.param(replica(T1, ReplicaPhase.FAILED, exit_code=1), "ExitCode1", 1, id="exit-1"),
    pytest.param(replica(T1, ReplicaPhase.FAILED, exit_code=137, reason="OOMKilled"), "OOMKilled", 137, id="oom"),
    pytest.param(replica(T1, ReplicaPhase.FAILED, reason="Evicted"), "Evicted", None, id="evicted"),
    pytest.param(replica(T1, heartbeat_at=NOW - 11), "HeartbeatTimeout", None, id="hung"),
    pytest.param(replica(T1, heartbeat_at=None, started_at=NOW - 601), "NoHeartbeat", None,
                 id="never-heartbeat"),
])


@FAILURES
def test_partial_recovery_replaces_only_the_failed_replica(observed: ObservedReplica, reason: str,
                                                           exit_code: int | None) -> None:
    decision = reconcile(make_spec(), cluster(trainer_1=observed), running_memory(), NOW)
    [record, delete] = decision.actions
    assert isinstance(record, RecordFailure)
    assert (record.failure.id, record.failure.reason, record.failure.exit_code) == (T1, reason, exit_code)
    assert (record.generation, record.mode) == (1, "partial")
    assert delete == DeleteReplica(T1, "Replace:partial", recreate=True)
    assert decision.phase is Phase.RECOVERING
    recovering = condition(decision, "Recovering")
    assert (recovering.status, recovering.reason) == ("True", reason)
    assert "replacing trainer-1 (partial recovery, generation 1)" in recovering.message
    assert decision.memory.replacing == {"trainer-1"}
    assert (decision.memory.failures, decision.memory.restarts) == (1, {"trainer-1": 1})


def test_the_replacement_is_created_once_the_old_replica_is_gone() -> None:
    failed = reconcile(make_spec(), cluster(trainer_1=replica(T1, ReplicaPhase.FAILED, exit_code=1)),
                       running_memory(), NOW)
    gone = reconcile(make_spec(), cluster(trainer_1=None), failed.memory, NOW + 1)
    assert gone.actions == [CreateReplica(T1, 1, "Replacement")]
    assert gone.memory.replacing == frozenset()
    back = reconcile(make_spec(), cluster(trainer_1=replica(T1, instance="trainer-1-b")), gone.memory, NOW + 2)
    assert back.actions == []
    assert back.phase is Phase.RUNNING
    assert (condition(back, "Recovering").status, condition(back, "Recovering").reason) == ("False", "Recovered")


def test_full_recovery_replaces_every_unfinished_replica() -> None:
    observed = cluster(embedding_server_1=replica(E1, ReplicaPhase.FAILED, exit_code=1),
                       trainer_0=replica(T0, ReplicaPhase.SUCCEEDED, exit_code=0))
    decision = reconcile(make_spec(), observed, running_memory(), NOW, mode="full")
    assert kinds(decision) == [("RecordFailure", "embedding-server-1")] + [
        ("DeleteReplica", rid.name) for rid in (E0, E1, S0, T1)]  # trainer-0 finished: kept
    assert all(a.recreate for a in decision.actions if isinstance(a, DeleteReplica))
    assert "replacing all replicas (full recovery, generation 1)" in condition(decision, "Recovering").message
    again = reconcile(make_spec(), {}, decision.memory, NOW + 1, mode="full")
    assert again.actions == [CreateReplica(rid, 1, "Replacement") for rid in (E0, E1, S0, T1)]


def test_a_second_failure_during_full_recovery_counts_each_restart_once() -> None:
    failed = replica(T0, ReplicaPhase.FAILED, exit_code=1)
    first = reconcile(make_spec(), cluster(trainer_0=failed), running_memory(), NOW, mode="full")
    # The others are still terminating when trainer-0's replacement is created...
    terminating = {rid: dataclasses.replace(replica(rid), deleting=True) for rid in (E0, E1, S0, T1)}
    second = reconcile(make_spec(), terminating, first.memory, NOW + 1, mode="full")
    assert second.actions == [CreateReplica(T0, 1, "Replacement")]
    # ...and fails at once: only it restarts again; the others are mid-replacement already.
    again = replica(T0, ReplicaPhase.FAILED, exit_code=1, instance="trainer-0-b")
    third = reconcile(make_spec(), {**terminating, T0: again}, second.memory, NOW + 2, mode="full")
    assert kinds(third) == [("RecordFailure", "trainer-0"), ("DeleteReplica", "trainer-0")]
    assert third.memory.restarts == {"trainer-0": 2, "trainer-1": 1, "embedding-server-0": 1,
                                     "embedding-server-1": 1, "sync-server-0": 1}


def test_a_server_that_exits_cleanly_mid_job_is_a_failure() -> None:
    decision = reconcile(make_spec(), cluster(sync_server_0=replica(S0, ReplicaPhase.SUCCEEDED, exit_code=0)),
                         running_memory(), NOW)
    assert kinds(decision) == [("RecordFailure", "sync-server-0"), ("DeleteReplica", "sync-server-0")]
    assert decision.actions[0].failure.reason == "ServerExited"  # type: ignore[union-attr]


@pytest.mark.parametrize(("heartbeat_age", "failed"), [
    pytest.param(9.0, False, id="within-timeout"),
    pytest.param(11.0, True, id="past-timeout"),
])
def test_heartbeat_timeout(heartbeat_age: float, failed: bool) -> None:
    observed = cluster(embedding_server_0=replica(E0, heartbeat_at=NOW - heartbeat_age))
    decision = reconcile(make_spec(), observed, running_memory(), NOW)
    assert bool(decision.actions) is failed


def test_silence_counts_only_from_when_the_shell_could_hear_again() -> None:
    """Redis was away until NOW - 5: every heartbeat is older than the timeout, but nobody could write one."""
    stale = cluster(**{f"{rid.role.value.replace('-', '_')}_{rid.rank}": replica(rid, heartbeat_at=NOW - 70)
                       for rid in ALL})
    assert reconcile(make_spec(), stale, running_memory(), NOW, heard_since=NOW - 5).actions == []
    # Still silent a whole timeout after Redis came back: that replica is hung after all.
    later = reconcile(make_spec(), stale, running_memory(), NOW + 6, heard_since=NOW - 5)
    assert {a.failure.id for a in later.actions if isinstance(a, RecordFailure)} == set(ALL)
    # The startup grace likewise counts from heard_since.
    starting = cluster(trainer_1=replica(T1, heartbeat_at=None, started_at=NOW - 10_000))
    assert reconcile(make_spec(), starting, running_memory(), NOW, heard_since=NOW - 5).actions == []


def test_a_replacement_without_its_own_heartbeat_yet_is_given_its_startup_grace() -> None:
    # The shell passes no heartbeat until the member in Redis carries the new instance.
    fresh = replica(T1, instance="trainer-1-b", heartbeat_at=None, started_at=NOW - 30)
    assert reconcile(make_spec(), cluster(trainer_1=fresh), running_memory(), NOW).actions == []
    # Without any evidence (no start time either) nothing is declared hung.
    unknown = replica(T1, heartbeat_at=None, started_at=None)
    assert reconcile(make_spec(), cluster(trainer_1=unknown), running_memory(), NOW).actions == []


# --- no double counting --------------------------------------------------------------------------------


def test_nothing_repeats_while_a_delete_is_in_flight() -> None:
    failed = replica(T1, ReplicaPhase.FAILED, exit_code=1)
    first = reconcile(make_spec(), cluster(trainer_1=failed), running_memory(), NOW)
    in_flight = reconcile(make_spec(), cluster(trainer_1=dataclasses.replace(failed, deleting=True)),
                          first.memory, NOW + 1)
    assert in_flight.actions == []
    assert (in_flight.memory.failures, in_flight.memory.generation) == (1, 1)


def test_a_lost_delete_is_asked_again_without_counting_a_new_failure() -> None:
    failed = replica(T1, ReplicaPhase.FAILED, exit_code=1)
    first = reconcile(make_spec(), cluster(trainer_1=failed), running_memory(), NOW)
    lost = reconcile(make_spec(), cluster(trainer_1=failed), first.memory, NOW + 1)
    assert lost.actions == [DeleteReplica(T1, "Replace:partial", recreate=True)]
    assert (lost.memory.failures, lost.memory.generation, lost.memory.restarts) == (1, 1, {"trainer-1": 1})


# --- giving up -----------------------------------------------------------------------------------------


def test_exit_code_78_fails_the_job_and_stops_the_rest() -> None:
    decision = reconcile(make_spec(), cluster(embedding_server_1=replica(E1, ReplicaPhase.FAILED, exit_code=78)),
                         running_memory(), NOW)
    assert kinds(decision) == [("RecordFailure", "embedding-server-1")] + [
        ("DeleteReplica", rid.name) for rid in (E0, S0, T0, T1)]
    assert not any(isinstance(a, DeleteReplica) and a.recreate for a in decision.actions)
    assert decision.phase is Phase.FAILED
    failed = condition(decision, "Failed")
    assert (failed.status, failed.reason) == ("True", "PermanentError")
    # Finished: later calls create nothing, whatever they see.
    later = reconcile(make_spec(), {}, decision.memory, NOW + 100)
    assert later.actions == [] and later.phase is Phase.FAILED


@pytest.mark.parametrize(("previous", "fatal"), [
    pytest.param((NOW - 50, NOW - 20), True, id="two-recent-restarts-exhaust-budget-2"),
    pytest.param((NOW - 700, NOW - 650), False, id="old-restarts-outside-window"),
    pytest.param((NOW - 700, NOW - 20), False, id="one-recent-one-old"),
])
def test_restart_budget_window(previous: tuple[float, ...], fatal: bool) -> None:
    spec = make_spec(restartBudget={"maxRestarts": 2, "windowSeconds": 600})
    memory = running_memory(restart_times={"trainer-1": previous})
    decision = reconcile(spec, cluster(trainer_1=replica(T1, ReplicaPhase.FAILED, exit_code=1)), memory, NOW)
    assert (decision.phase is Phase.FAILED) is fatal
    if fatal:
        assert condition(decision, "Failed").reason == "RestartBudgetExhausted"
        assert "trainer-1 failed 3 times within 600s (budget 2)" in condition(decision, "Failed").message
    else:
        assert len(decision.memory.restart_times["trainer-1"]) == 1 + sum(NOW - t <= 600 for t in previous)


# --- success ------------------------------------------------------------------------------------------


def test_when_every_trainer_succeeded_the_servers_stop_and_the_job_succeeds() -> None:
    done = {rid: replica(rid, ReplicaPhase.SUCCEEDED, exit_code=0) for rid in (T0, T1)}
    decision = reconcile(make_spec(), cluster(trainer_0=done[T0], trainer_1=done[T1]), running_memory(), NOW)
    assert decision.actions == [DeleteReplica(rid, "TrainersCompleted", recreate=False) for rid in (E0, E1, S0)]
    assert decision.phase is Phase.SUCCEEDED
    assert decision.memory.completion_time == NOW
    assert condition(decision, "Succeeded").status == "True"


def test_a_finished_trainer_is_never_restarted() -> None:
    spec = make_spec(heartbeatTimeoutSeconds=1000)  # the others stay healthy however long this takes
    done = replica(T0, ReplicaPhase.SUCCEEDED, exit_code=0)
    first = reconcile(spec, cluster(trainer_0=done), running_memory(), NOW)
    assert first.actions == []
    gone = reconcile(spec, cluster(trainer_0=None), first.memory, NOW + CREATE_GRACE_S + 10)
    assert gone.actions == []
    assert gone.memory.succeeded == {"trainer-0"}


# --- a restarted shell ---------------------------------------------------------------------------------


def test_a_restarted_shell_with_its_memory_recreates_nothing() -> None:
    decision = reconcile(make_spec(), cluster(), running_memory(), NOW)
    assert decision.actions == []
    assert decision.phase is Phase.RUNNING


def test_a_restarted_shell_without_memory_adopts_what_runs() -> None:
    decision = reconcile(make_spec(), cluster(), JobMemory(), NOW)
    assert decision.actions == []
