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


# --- stuck replicas and the run policy ------------------------------------------------------------


def with_run_policy(**policy: Any) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate({"recovery": {"heartbeatTimeoutSeconds": 10}, "runPolicy": policy})


def test_a_pending_replica_waiting_on_an_image_pull_backoff_is_stuck_not_failed() -> None:
    pulling = replica(T1, ReplicaPhase.PENDING, heartbeat_at=None, started_at=None, waiting_reason="ImagePullBackOff",
                      waiting_message="Back-off pulling image")
    memory = running_memory(phase=Phase.PENDING, created_at={rid.name: NOW - 5 for rid in ALL})
    decision = reconcile(make_spec(), cluster(trainer_1=pulling), memory, NOW)
    stuck = condition(decision, "Stuck")
    assert (stuck.status, stuck.reason) == ("True", "ImagePullBackOff")
    assert stuck.message == "trainer-1: ImagePullBackOff (Back-off pulling image)"
    assert decision.actions == [] and decision.phase is Phase.PENDING
    # Once it runs, the condition says so; it was never there for a job that never had a stuck replica.
    later = reconcile(make_spec(), cluster(), decision.memory, NOW + 30)
    assert (condition(later, "Stuck").status, condition(later, "Stuck").reason) == ("False", "NoneStuck")
    fresh = reconcile(make_spec(), cluster(), running_memory(), NOW)
    assert all(c.type != "Stuck" for c in fresh.memory.conditions)


def test_a_refused_create_is_stuck_and_the_pending_timeout_fails_the_job_naming_it() -> None:
    memory = running_memory(phase=Phase.PENDING,
                            create_errors={"trainer-0": (NOW - 100, "Forbidden", "exceeded quota: gpu")})
    memory = dataclasses.replace(memory, created_at={k: v for k, v in memory.created_at.items() if k != "trainer-0"})
    observed = cluster(trainer_0=None)
    waiting = reconcile(make_spec(), observed, memory, NOW)
    assert condition(waiting, "Stuck").message == "trainer-0: Forbidden (exceeded quota: gpu)"
    assert ("CreateReplica", "trainer-0") in kinds(waiting)  # the shell retries it (with its backoff)

    failed = reconcile(with_run_policy(pendingTimeoutSeconds=60), observed, memory, NOW)
    assert failed.phase is Phase.FAILED
    failed_condition = condition(failed, "Failed")
    assert failed_condition.reason == "Forbidden"
    assert failed_condition.message == ("trainer-0 did not start within runPolicy.pendingTimeoutSeconds (60s): "
                                        "Forbidden: exceeded quota: gpu")
    assert condition(failed, "Running").status == "False"
    assert all(isinstance(a, DeleteReplica) and not a.recreate for a in failed.actions)


def test_the_pending_timeout_counts_from_the_replicas_own_create_and_names_a_stuck_one_first() -> None:
    spec = with_run_policy(pendingTimeoutSeconds=60)
    slow = replica(E0, ReplicaPhase.PENDING, heartbeat_at=None, started_at=None)  # pulling a large image
    unschedulable = replica(T0, ReplicaPhase.PENDING, heartbeat_at=None, started_at=None,
                            waiting_reason="Unschedulable", waiting_message="0/3 nodes: Insufficient nvidia.com/gpu")
    created = {rid.name: NOW - 30 for rid in ALL}
    within = reconcile(spec, cluster(embedding_server_0=slow, trainer_0=unschedulable),
                       running_memory(created_at=created), NOW)
    assert within.phase is not Phase.FAILED  # 30 s < 60 s
    late = reconcile(spec, cluster(embedding_server_0=slow, trainer_0=unschedulable),
                     running_memory(created_at=created), NOW + 31)
    assert (late.phase, condition(late, "Failed").reason) == (Phase.FAILED, "Unschedulable")
    only_slow = reconcile(spec, cluster(embedding_server_0=slow), running_memory(created_at=created), NOW + 31)
    assert (only_slow.phase, condition(only_slow, "Failed").reason) == (Phase.FAILED, "PendingTimeout")
    # A replacement created a moment ago is within its own timeout, however old the job is.
    replaced = dict(created, **{"trainer-0": NOW + 20})
    fine = reconcile(spec, cluster(trainer_0=unschedulable), running_memory(created_at=replaced), NOW + 31)
    assert fine.phase is not Phase.FAILED


def test_the_active_deadline_fails_a_running_job() -> None:
    spec = with_run_policy(activeDeadlineSeconds=400)
    assert reconcile(spec, cluster(), running_memory(start_time=NOW - 399), NOW).phase is Phase.RUNNING
    over = reconcile(spec, cluster(), running_memory(start_time=NOW - 401), NOW)
    assert over.phase is Phase.FAILED
    assert condition(over, "Failed").reason == "DeadlineExceeded"
    assert condition(over, "Failed").message == "the job ran longer than runPolicy.activeDeadlineSeconds (400s)"
    assert sorted(a.id.name for a in over.actions if isinstance(a, DeleteReplica)) == sorted(r.name for r in ALL)


# --- the failure policy: disruptions, rules, backoff ----------------------------------------------


def with_policy(**policy: Any) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate({"recovery": {"heartbeatTimeoutSeconds": 10, "failurePolicy": policy,
                                                        "restartBudget": {"maxRestarts": 2, "windowSeconds": 600}}})


def fail_repeatedly(spec: TrainingJobSpec, make: Any, times: int, every: float = 5.0) -> Decision:
    """Fail trainer-0 ``times`` times, ``every`` seconds apart: each time its pod fails, the core deletes it,
    and one step later (the pod gone) the core may create the replacement, which then runs. Returns the
    decision of that last step (or of the step that failed the job)."""
    memory, now = running_memory(), NOW
    decision = None
    for i in range(times):
        decision = reconcile(spec, cluster(trainer_0=make(i)), memory, now)
        if decision.phase is Phase.FAILED:
            return decision
        decision = reconcile(spec, cluster(trainer_0=None), decision.memory, now + 0.5)
        memory, now = decision.memory, now + every
    assert decision is not None
    return decision


def test_evictions_and_deleted_pods_do_not_spend_the_restart_budget_by_default() -> None:
    evicted = lambda i: replica(T0, ReplicaPhase.FAILED, reason="Evicted", instance=f"t0-{i}")  # noqa: E731
    drained = fail_repeatedly(with_policy(), evicted, times=6)
    assert drained.phase is not Phase.FAILED and drained.memory.restart_times.get("trainer-0", ()) == ()
    assert ("CreateReplica", "trainer-0") in kinds(drained)  # replaced at once, no backoff either
    counted = fail_repeatedly(with_policy(countDisruptions=True), evicted, times=3)
    assert (counted.phase, condition(counted, "Failed").reason) == (Phase.FAILED, "RestartBudgetExhausted")
    crashed = lambda i: replica(T0, ReplicaPhase.FAILED, exit_code=1, instance=f"t0-{i}")  # noqa: E731
    assert fail_repeatedly(with_policy(), crashed, times=3).phase is Phase.FAILED


def test_a_disruption_target_reason_and_a_deletion_are_disruptions() -> None:
    for reason in ("EvictionByEvictionAPI", "PreemptionByScheduler", "DeletionByTaintManager", "Deleted"):
        make = lambda i, r=reason: replica(T0, ReplicaPhase.FAILED, reason=r, instance=f"t0-{i}")  # noqa: E731
        assert fail_repeatedly(with_policy(), make, times=5).phase is not Phase.FAILED, reason


def test_failure_rules_match_exit_codes_and_reasons_first() -> None:
    oom = lambda i: replica(T0, ReplicaPhase.FAILED, reason="OOMKilled", exit_code=137, instance=f"t0-{i}")  # noqa: E731
    fatal = with_policy(rules=[{"action": "FailJob", "onReasons": ["OOMKilled"]}])
    decision = fail_repeatedly(fatal, oom, times=1)
    assert (decision.phase, condition(decision, "Failed").reason) == (Phase.FAILED, "FailurePolicy")
    assert "trainer-0 failed: OOMKilled (exit code 137)" in condition(decision, "Failed").message
    ignore_flaky = with_policy(rules=[{"action": "Ignore", "onExitCodes": {"operator": "In", "values": [3, 137]}}])
    assert fail_repeatedly(ignore_flaky, oom, times=6).phase is not Phase.FAILED
    # NotIn: everything but exit code 1 fails the job.
    strict = with_policy(rules=[{"action": "FailJob", "onExitCodes": {"operator": "NotIn", "values": [1]}}])
    assert fail_repeatedly(strict, oom, times=1).phase is Phase.FAILED
    # A user rule may even retry exit code 78.
    config = lambda i: replica(T0, ReplicaPhase.FAILED, exit_code=78, instance=f"t0-{i}")  # noqa: E731
    retry78 = with_policy(rules=[{"action": "Count", "onExitCodes": {"operator": "In", "values": [78]}}])
    assert fail_repeatedly(retry78, config, times=1).phase is not Phase.FAILED
    assert condition(fail_repeatedly(with_policy(), config, times=1), "Failed").reason == "PermanentError"


def test_a_replica_that_keeps_failing_is_replaced_after_a_doubling_backoff() -> None:
    spec = TrainingJobSpec.model_validate({"recovery": {"restartBudget": {"maxRestarts": 100, "windowSeconds": 600}}})
    memory, now, delays = running_memory(), NOW, []
    for i in range(6):
        decision = reconcile(spec, cluster(trainer_0=replica(T0, ReplicaPhase.FAILED, exit_code=1,
                                                             instance=f"t0-{i}")), memory, now)
        memory = decision.memory
        # The failed pod is deleted; find when the core creates its replacement.
        waited = 0.0
        while True:
            decision = reconcile(spec, cluster(trainer_0=None), memory, now + waited)
            memory = decision.memory
            if any(isinstance(a, CreateReplica) for a in decision.actions):
                break
            waited += 1.0
        delays.append(waited)
        now += waited + 1.0
    assert delays == [0.0, 0.0, 10.0, 20.0, 40.0, 80.0]
    assert "backing off: trainer-0 in 80s" in condition(decision, "Recovering").message
    # Healthy for a whole window: the next failure is replaced at once again.
    later = now + 601
    decision = reconcile(spec, cluster(trainer_0=replica(T0, ReplicaPhase.FAILED, exit_code=1, instance="late")),
                         memory, later)
    decision = reconcile(spec, cluster(trainer_0=None), decision.memory, later)
    assert ("CreateReplica", "trainer-0") in kinds(decision)


def test_backoff_can_be_switched_off_and_tuned() -> None:
    off = TrainingJobSpec.model_validate({"recovery": {"failurePolicy": {"backoff": {"enabled": False}}}})
    from trainingjob_operator.reconcile import replacement_delay

    assert replacement_delay(off, (NOW - 3, NOW - 2, NOW - 1, NOW), NOW) == 0.0
    tuned = TrainingJobSpec.model_validate({"recovery": {"failurePolicy": {"backoff": {
        "immediateReplacements": 0, "initialSeconds": 5, "maxSeconds": 12}}}})
    assert [replacement_delay(tuned, tuple(NOW - i for i in range(n)), NOW) for n in (1, 2, 3, 4)] == [5, 10, 12, 12]


# --- suspend and resume --------------------------------------------------------------------------


def test_suspending_deletes_every_pod_without_a_failure_and_resuming_recreates_them_one_generation_up() -> None:
    suspended_spec = with_run_policy(suspend=True)
    memory = running_memory(generation=3)
    decision = reconcile(suspended_spec, cluster(), memory, NOW)
    assert sorted(a.id.name for a in decision.actions if isinstance(a, DeleteReplica) and not a.recreate) == \
        sorted(r.name for r in ALL)
    assert decision.phase is Phase.SUSPENDED
    assert (condition(decision, "Suspended").status, condition(decision, "Running").status) == ("True", "False")
    # The pods exit (SIGTERM: a trainer with 143) and go: neither is a failure, nothing is created.
    stopping = cluster(trainer_0=replica(T0, ReplicaPhase.FAILED, exit_code=143))
    decision = reconcile(suspended_spec, stopping, decision.memory, NOW + 1)
    decision = reconcile(suspended_spec, {}, decision.memory, NOW + 30)
    assert not any(isinstance(a, (RecordFailure, CreateReplica)) for a in decision.actions)
    assert decision.memory.failures == 0 and decision.phase is Phase.SUSPENDED

    resumed = reconcile(make_spec(), {}, decision.memory, NOW + 600)
    creates = [a for a in resumed.actions if isinstance(a, CreateReplica)]
    assert sorted(a.id.name for a in creates) == sorted(r.name for r in ALL)
    assert {(a.reason.value, a.generation) for a in creates} == {("Resume", 4)}
    assert condition(resumed, "Suspended").status == "False" and resumed.phase is Phase.PENDING
    fresh = {rid: replica(rid, instance=f"{rid.name}-b", heartbeat_at=NOW + 609, started_at=NOW + 605) for rid in ALL}
    running = reconcile(make_spec(), fresh, resumed.memory, NOW + 610)
    assert running.phase is Phase.RUNNING and running.actions == []


def test_a_job_created_suspended_starts_nothing_until_resumed() -> None:
    decision = reconcile(with_run_policy(suspend=True), {}, JobMemory(), NOW)
    assert decision.actions == [] and decision.phase is Phase.SUSPENDED
    started = reconcile(make_spec(), {}, decision.memory, NOW + 5)
    assert {a.reason.value for a in started.actions if isinstance(a, CreateReplica)} == {"Initial"}
    assert len(started.actions) == len(ALL)


def test_a_shells_hold_suspends_like_the_spec_and_the_deadline_restarts_on_resume() -> None:
    spec = with_run_policy(activeDeadlineSeconds=100)
    held = reconcile(spec, cluster(), running_memory(start_time=NOW - 90), NOW, hold="waiting for queue admission")
    assert held.phase is Phase.SUSPENDED
    assert condition(held, "Suspended").message.startswith("waiting for queue admission")
    resumed = reconcile(spec, {}, held.memory, NOW + 50)
    assert resumed.phase is not Phase.FAILED  # 140 s since the start, but only 0 since the resume
    assert reconcile(spec, cluster(), resumed.memory, NOW + 151).phase is Phase.FAILED


def test_clean_pod_policy_all_deletes_the_finished_replicas_too() -> None:
    done = {rid: replica(rid, ReplicaPhase.SUCCEEDED if rid.role is Role.TRAINER else ReplicaPhase.RUNNING)
            for rid in ALL}
    kept = reconcile(make_spec(), done, running_memory(), NOW)
    assert kept.phase is Phase.SUCCEEDED
    assert sorted(a.id.name for a in kept.actions) == ["embedding-server-0", "embedding-server-1", "sync-server-0"]
    cleaned = reconcile(with_run_policy(cleanPodPolicy="All"), done, running_memory(), NOW)
    assert sorted(a.id.name for a in cleaned.actions) == sorted(r.name for r in ALL)
    # And on every later pass, until they are gone.
    later = reconcile(with_run_policy(cleanPodPolicy="All"), {T0: done[T0]}, cleaned.memory, NOW + 5)
    assert [a.id.name for a in later.actions] == ["trainer-0"]
