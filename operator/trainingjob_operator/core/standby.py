"""Warm standby replicas (``recovery.standby``): how many to keep, which to retire, which takes over. Pure.

A standby is a process (a pod on Kubernetes) that has imported torch and connected to Redis and waits for an
assignment. It is not a replica: the reconcile core never sees it. When the core asks for a replacement the
shell hands that rank to a fresh standby instead of starting a cold one, then starts a new standby behind it.
The core's recovery decision (which rank to replace, in which generation) is the same either way.

The operator observes its standby pods and applies these decisions; the local supervisor keeps its own pool of
warm processes (``local.processes.StandbyPool``), handed a replica over stdin.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from trainingjob_operator.api.spec import Role, TrainingJobSpec
from trainingjob_operator.reconcile import ReplicaPhase


@dataclass(frozen=True)
class StandbyView:
    """One standby as a shell saw it."""

    name: str  # the pod's (or process's) name
    role: Role
    instance: str  # pod UID: what it offers itself under in Redis
    phase: ReplicaPhase
    created_at: float | None = None
    deleting: bool = False
    waiting_reason: str | None = None  # pending on a reason that does not clear by itself (Unschedulable, ...)
    waiting_message: str = ""


@dataclass(frozen=True)
class StandbyPlan:
    create: Mapping[Role, int] = field(default_factory=dict)  # how many new standbys per role
    delete: tuple[str, ...] = ()  # names of standbys to remove

    @property
    def empty(self) -> bool:
        return not self.delete and not any(self.create.values())


def is_fresh(view: StandbyView, offers: Mapping[str, float], now: float, heartbeat_timeout_s: float) -> bool:
    """Running and offering itself recently: it has done its imports and its Redis client works."""
    seen = offers.get(view.instance)
    return (view.phase is ReplicaPhase.RUNNING and not view.deleting and seen is not None
            and now - seen <= heartbeat_timeout_s)


def _stale(view: StandbyView, offers: Mapping[str, float] | None, now: float, spec: TrainingJobSpec) -> bool:
    """Past its startup budget and silent: hung, or never got through its imports. Unknown offers (Redis
    unreachable) are no evidence of silence."""
    if offers is None or view.phase is not ReplicaPhase.RUNNING or view.created_at is None:
        return False
    if now - view.created_at <= spec.recovery.startup_timeout_seconds:
        return False
    seen = offers.get(view.instance)
    return seen is None or now - seen > spec.recovery.heartbeat_timeout_seconds


def plan_standbys(spec: TrainingJobSpec, standbys: Iterable[StandbyView], *, active: bool,
                  offers: Mapping[str, float] | None, now: float) -> StandbyPlan:
    """Keep ``recovery.standby`` live standbys per role while the job runs (``active``), none otherwise.

    Ended standbys (crashed, killed) and stale ones are removed and replaced; a surplus (the spec lowered) goes,
    youngest first, since the oldest are the surest to be warm."""
    views = [v for v in standbys if not v.deleting]
    if not active:
        return StandbyPlan(delete=tuple(sorted(v.name for v in views)))
    delete: list[str] = []
    create: dict[Role, int] = {}
    for role in spec.roles():
        want = spec.recovery.standby.count(role)
        mine = [v for v in views if v.role is role]
        dead = [v for v in mine if v.phase in (ReplicaPhase.SUCCEEDED, ReplicaPhase.FAILED)
                or _stale(v, offers, now, spec)]
        live = sorted((v for v in mine if v not in dead), key=lambda v: (v.created_at or now, v.name))
        delete += [v.name for v in dead] + [v.name for v in live[want:]]
        if len(live) < want:
            create[role] = want - len(live)
    return StandbyPlan(create=create, delete=tuple(sorted(delete)))


def pick_standby(role: Role, standbys: Iterable[StandbyView], offers: Mapping[str, float], now: float,
                 heartbeat_timeout_s: float) -> StandbyView | None:
    """The standby to take over a failed ``role`` rank: the oldest fresh one; None: start a cold replacement."""
    fresh = [v for v in standbys if v.role is role and is_fresh(v, offers, now, heartbeat_timeout_s)]
    return min(fresh, key=lambda v: (v.created_at or now, v.name), default=None)


def stuck_standbys(standbys: Iterable[StandbyView]) -> list[StandbyView]:
    """Standbys that cannot start (unschedulable, image not pulled, ...). They are kept, not replaced (a new
    pod would wait on the same reason), and no failed rank waits for them: it gets a cold replacement. So
    nothing else would tell the user that the standbys they asked for are not there."""
    return sorted((v for v in standbys if v.phase is ReplicaPhase.PENDING and not v.deleting and v.waiting_reason),
                  key=lambda v: v.name)


def standby_counts(spec: TrainingJobSpec, standbys: Iterable[StandbyView], offers: Mapping[str, float] | None,
                   now: float) -> dict[Role, tuple[int, int, int]]:
    """Per role with standbys asked for or still present: (desired, ready to take a rank over, stuck)."""
    live = [v for v in standbys if not v.deleting]
    stuck = stuck_standbys(live)
    out = {}
    for role in spec.roles():
        desired = spec.recovery.standby.count(role)
        mine = [v for v in live if v.role is role]
        if not desired and not mine:
            continue
        ready = sum(1 for v in mine if offers is not None and is_fresh(v, offers, now,
                                                                        spec.recovery.heartbeat_timeout_seconds))
        out[role] = (desired, ready, sum(1 for v in stuck if v.role is role))
    return out
