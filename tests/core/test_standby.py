"""The pure standby decisions: how many warm standbys to keep per role, which to retire, which takes over."""

from __future__ import annotations

from typing import Any

import pytest

from trainingjob_operator.api.spec import Role, TrainingJobSpec
from trainingjob_operator.core.standby import (
    StandbyPlan,
    StandbyView,
    is_fresh,
    pick_standby,
    plan_standbys,
    standby_counts,
    stuck_standbys,
)
from trainingjob_operator.reconcile import ReplicaPhase

NOW = 10_000.0
STARTUP_S = 60.0
HEARTBEAT_S = 10.0
SHARED = {"volume": {"kind": "sharedClaim", "claimName": "ckpt"}}


def make_spec(trainer: int = 0, embedding_server: int = 0, sync_server: int = 0) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate({"recovery": {
        "standby": {"trainer": trainer, "embeddingServer": embedding_server, "syncServer": sync_server},
        "checkpoint": SHARED, "startupTimeoutSeconds": STARTUP_S, "heartbeatTimeoutSeconds": HEARTBEAT_S}})


def view(name: str, role: Role = Role.TRAINER, *, phase: ReplicaPhase = ReplicaPhase.RUNNING,
         created_at: float | None = NOW - 10, deleting: bool = False) -> StandbyView:
    return StandbyView(name=name, role=role, instance=f"uid-{name}", phase=phase, created_at=created_at,
                       deleting=deleting)


def offers_of(*views: StandbyView, seen: float = NOW - 1) -> dict[str, float]:
    """Every view offering itself at ``seen``."""
    return {v.instance: seen for v in views}


def plan(spec: TrainingJobSpec, views: list[StandbyView], *, active: bool = True,
         offers: Any = "all") -> StandbyPlan:
    """``offers`` "all": every view offered a second ago; None: Redis unknown; else the mapping."""
    return plan_standbys(spec, views, active=active, offers=offers_of(*views) if offers == "all" else offers,
                         now=NOW)


# --- plan_standbys --------------------------------------------------------------------------------------------


def test_the_configured_count_per_role_is_kept_while_active() -> None:
    views = [view("t-a"), view("e-a", Role.EMBEDDING_SERVER), view("e-b", Role.EMBEDDING_SERVER)]
    result = plan(make_spec(trainer=1, embedding_server=2), views)
    assert result.delete == ()
    assert not any(result.create.values())
    assert result.empty


def test_missing_standbys_are_created_per_role() -> None:
    result = plan(make_spec(trainer=1, embedding_server=2, sync_server=1), [view("e-a", Role.EMBEDDING_SERVER)])
    assert result.delete == ()
    assert {role: n for role, n in result.create.items() if n} == {
        Role.TRAINER: 1, Role.EMBEDDING_SERVER: 1, Role.SYNC_SERVER: 1}
    assert not result.empty


def test_no_standbys_are_created_when_none_are_configured() -> None:
    result = plan(make_spec(), [])
    assert result.empty and not any(result.create.values())


def test_every_standby_is_deleted_and_none_created_when_the_job_is_not_active() -> None:
    views = [view("t-b"), view("e-a", Role.EMBEDDING_SERVER), view("t-a", phase=ReplicaPhase.PENDING),
             view("t-c", phase=ReplicaPhase.FAILED)]
    result = plan(make_spec(trainer=2, embedding_server=1), views, active=False)
    assert result.delete == ("e-a", "t-a", "t-b", "t-c")
    assert not any(result.create.values())


@pytest.mark.parametrize("ended", [ReplicaPhase.SUCCEEDED, ReplicaPhase.FAILED], ids=["succeeded", "failed"])
def test_an_ended_standby_is_deleted_and_replaced(ended: ReplicaPhase) -> None:
    views = [view("t-dead", phase=ended, created_at=NOW - 5000), view("t-live", created_at=NOW - 20)]
    result = plan(make_spec(trainer=2), views)
    assert result.delete == ("t-dead",)
    assert result.create.get(Role.TRAINER) == 1


def test_a_surplus_standby_goes_youngest_first() -> None:
    views = [view("t-mid", created_at=NOW - 200), view("t-old", created_at=NOW - 300),
             view("t-young", created_at=NOW - 100)]
    assert plan(make_spec(trainer=2), views).delete == ("t-young",)
    lowered = plan(make_spec(trainer=1), views)
    assert lowered.delete == ("t-mid", "t-young")
    assert not any(lowered.create.values())


def test_every_standby_of_a_role_lowered_to_zero_is_deleted() -> None:
    views = [view("t-a"), view("e-a", Role.EMBEDDING_SERVER)]
    result = plan(make_spec(trainer=0, embedding_server=1), views)
    assert result.delete == ("t-a",)
    assert not any(result.create.values())


def test_a_standby_running_past_its_startup_budget_and_silent_is_deleted_and_replaced() -> None:
    silent = view("t-silent", created_at=NOW - STARTUP_S - 1)
    result = plan(make_spec(trainer=1), [silent], offers={silent.instance: NOW - HEARTBEAT_S - 1})
    assert result.delete == ("t-silent",)
    assert result.create.get(Role.TRAINER) == 1


def test_a_standby_past_its_startup_budget_that_never_offered_itself_is_deleted_and_replaced() -> None:
    result = plan(make_spec(trainer=1), [view("t-never", created_at=NOW - STARTUP_S - 1)], offers={})
    assert result.delete == ("t-never",)
    assert result.create.get(Role.TRAINER) == 1


def test_a_standby_within_its_startup_budget_is_kept_though_it_never_offered_itself() -> None:
    result = plan(make_spec(trainer=1), [view("t-young", created_at=NOW - STARTUP_S + 1)], offers={})
    assert result.empty


def test_a_standby_past_its_startup_budget_is_kept_while_it_offers_itself() -> None:
    alive = view("t-alive", created_at=NOW - 10 * STARTUP_S)
    result = plan(make_spec(trainer=1), [alive], offers={alive.instance: NOW - HEARTBEAT_S + 1})
    assert result.empty


def test_a_silent_standby_is_kept_when_redis_is_unknown() -> None:
    views = [view("t-silent", created_at=NOW - 10 * STARTUP_S)]
    result = plan(make_spec(trainer=1), views, offers=None)
    assert result.empty


def test_a_pending_standby_is_not_stale_however_old() -> None:
    old = view("t-pending", phase=ReplicaPhase.PENDING, created_at=NOW - 10 * STARTUP_S)
    result = plan(make_spec(trainer=1), [old], offers={})
    assert result.empty


def test_a_deleting_standby_is_neither_counted_nor_deleted_again() -> None:
    views = [view("t-going", deleting=True), view("t-dead", phase=ReplicaPhase.FAILED, deleting=True)]
    result = plan(make_spec(trainer=1), views)
    assert result.delete == ()
    assert result.create.get(Role.TRAINER) == 1
    assert plan(make_spec(trainer=1), views, active=False).delete == ()


# --- is_fresh and pick_standby --------------------------------------------------------------------------------


def test_a_standby_is_fresh_only_running_undeleted_and_offered_within_the_heartbeat_timeout() -> None:
    running = view("t-a")
    assert is_fresh(running, {running.instance: NOW - HEARTBEAT_S}, NOW, HEARTBEAT_S)
    assert not is_fresh(running, {running.instance: NOW - HEARTBEAT_S - 0.1}, NOW, HEARTBEAT_S)
    assert not is_fresh(running, {}, NOW, HEARTBEAT_S)
    pending = view("t-b", phase=ReplicaPhase.PENDING)
    assert not is_fresh(pending, offers_of(pending), NOW, HEARTBEAT_S)
    deleting = view("t-c", deleting=True)
    assert not is_fresh(deleting, offers_of(deleting), NOW, HEARTBEAT_S)


def test_the_oldest_fresh_standby_of_the_role_takes_over() -> None:
    views = [view("t-young", created_at=NOW - 10), view("t-old", created_at=NOW - 500),
             view("t-mid", created_at=NOW - 100)]
    picked = pick_standby(Role.TRAINER, views, offers_of(*views), NOW, HEARTBEAT_S)
    assert picked is not None and picked.name == "t-old"


def test_pick_skips_other_roles_pending_deleting_never_offered_and_stale_offers() -> None:
    other_role = view("e-oldest", Role.EMBEDDING_SERVER, created_at=NOW - 900)
    pending = view("t-pending", phase=ReplicaPhase.PENDING, created_at=NOW - 800)
    deleting = view("t-deleting", deleting=True, created_at=NOW - 700)
    never = view("t-never", created_at=NOW - 600)
    stale = view("t-stale", created_at=NOW - 500)
    fresh = view("t-fresh", created_at=NOW - 5)
    offers = {**offers_of(other_role, pending, deleting, fresh), stale.instance: NOW - HEARTBEAT_S - 1}
    views = [other_role, pending, deleting, never, stale, fresh]
    picked = pick_standby(Role.TRAINER, views, offers, NOW, HEARTBEAT_S)
    assert picked is not None and picked.name == "t-fresh"


def test_pick_returns_none_without_a_fresh_standby_of_the_role() -> None:
    views = [view("e-a", Role.EMBEDDING_SERVER), view("t-pending", phase=ReplicaPhase.PENDING)]
    assert pick_standby(Role.TRAINER, views, offers_of(*views), NOW, HEARTBEAT_S) is None
    assert pick_standby(Role.TRAINER, [], {}, NOW, HEARTBEAT_S) is None


def test_stuck_standbys_are_the_pending_ones_waiting_on_a_reason_not_the_ones_merely_starting() -> None:
    starting = view("starting", phase=ReplicaPhase.PENDING)
    unschedulable = StandbyView(name="b-unschedulable", role=Role.TRAINER, instance="u1", phase=ReplicaPhase.PENDING,
                                waiting_reason="Unschedulable", waiting_message="0/3 nodes are available")
    pull = StandbyView(name="a-pull", role=Role.EMBEDDING_SERVER, instance="u2", phase=ReplicaPhase.PENDING,
                       waiting_reason="ImagePullBackOff")
    going = StandbyView(name="going", role=Role.TRAINER, instance="u3", phase=ReplicaPhase.PENDING,
                        waiting_reason="Unschedulable", deleting=True)
    assert stuck_standbys([starting, unschedulable, pull, going, view("running")]) == [pull, unschedulable]


def test_a_stuck_standby_is_kept_not_replaced_and_never_picked() -> None:
    """A new pod would wait on the same reason; a failed rank starts cold instead of waiting for it."""
    stuck = StandbyView(name="stuck", role=Role.TRAINER, instance="u1", phase=ReplicaPhase.PENDING,
                        created_at=NOW - 10 * STARTUP_S, waiting_reason="Unschedulable")
    assert plan(make_spec(trainer=1), [stuck], offers={}).empty
    assert pick_standby(Role.TRAINER, [stuck], {}, NOW, HEARTBEAT_S) is None


def test_standby_counts_say_per_role_how_many_are_asked_for_ready_and_stuck() -> None:
    ready, silent = view("ready"), view("silent")
    starting = view("starting", phase=ReplicaPhase.PENDING)
    stuck = StandbyView(name="stuck", role=Role.TRAINER, instance="u-stuck", phase=ReplicaPhase.PENDING,
                        waiting_reason="Unschedulable")
    going = view("going", deleting=True)
    leftover = view("left", Role.SYNC_SERVER)  # the spec was lowered to 0: still there, still counted
    spec = make_spec(trainer=3, embedding_server=1)
    counts = standby_counts(spec, [ready, silent, starting, stuck, going, leftover], offers_of(ready, going), NOW)
    assert counts == {Role.TRAINER: (3, 1, 1), Role.EMBEDDING_SERVER: (1, 0, 0), Role.SYNC_SERVER: (0, 0, 0)}
    assert standby_counts(spec, [ready], None, NOW)[Role.TRAINER] == (3, 0, 0)  # Redis unknown: none known ready
    assert standby_counts(make_spec(), [], {}, NOW) == {}
