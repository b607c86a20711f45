"""The reconcile core shared by the kopf operator and the local supervisor.

A pure state machine: ``reconcile(spec, observed, memory, now, mode) -> Decision``. It never
touches Kubernetes, processes, Redis or a clock. The shells observe replicas (pods or local
processes), call it, apply ``Decision.actions`` and keep ``Decision.memory`` for the next call.

Recovery semantics follow ARCHITECTURE.md §4: in partial mode only the failed replica is
replaced (survivors keep running, keep their memory); in full mode every unfinished replica is
deleted and recreated (the torchrun/PyTorchJob baseline). Exit code 78 is a permanent
configuration error and a per-replica restart budget inside a time window stops crash loops.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from trainingjob_operator.api.spec import DISRUPTION_REASONS, FailureAction, Role, TrainingJobSpec
from trainingjob_operator.api.status import Condition, Phase, RoleReplicaStatus

EXIT_PERMANENT = 78  # EX_CONFIG from sysexits.h: retrying cannot help
CREATE_GRACE_S = 30.0  # a just-created replica may not be observable yet (watch lag)


class FailureReason(enum.StrEnum):
    """Why the core counts a replica as failed (a pod's own reasons, e.g. Evicted, pass through)."""

    DELETED = "Deleted"  # observed, then gone (kubectl delete pod, a drain) or never appeared
    HEARTBEAT_TIMEOUT = "HeartbeatTimeout"  # alive but silent: hung
    NO_HEARTBEAT = "NoHeartbeat"  # started but never heartbeat within recovery.startupTimeoutSeconds
    SERVER_EXITED = "ServerExited"  # a server exited 0 before the trainers finished
    FAILED = "Failed"


HUNG_REASONS = frozenset({FailureReason.HEARTBEAT_TIMEOUT, FailureReason.NO_HEARTBEAT})


class CreateReason(enum.StrEnum):
    INITIAL = "Initial"
    REPLACEMENT = "Replacement"
    RESUME = "Resume"  # recreated after a suspension: resumes its own progress, not a failure's replacement


class ConditionType(enum.StrEnum):
    RUNNING = "Running"
    RECOVERING = "Recovering"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CHECKPOINTS_DURABLE = "CheckpointsDurable"  # False: a replaced server loses its shard (emptyDir)
    SUSPENDED = "Suspended"  # True: runPolicy.suspend (or a queue's hold): no pods, progress and checkpoints kept
    STUCK = "Stuck"  # True: a replica cannot start (image, scheduling, config, create errors); names them
    CHECKPOINT_FAILING = "CheckpointFailing"  # True: some replica's saves fail (storage full, unwritable); names them


# Why a replica that has not started cannot start on its own: the kubelet's waiting reasons, the
# scheduler's, and a create request the API server refused. A pod pulling its image is merely pending.
STUCK_WAITING_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                                   "CreateContainerConfigError", "CreateContainerError", "Unschedulable"})


@dataclass(frozen=True, order=True)
class ReplicaId:
    role: Role
    rank: int
    # Computed once: a 1,000-replica job built names 32M times and hashed ids (through the enum's Python-level
    # __hash__) 40M times in a simulated month (trainingjob simulate's profile).
    name: str = field(init=False, compare=False, repr=False)
    _hash: int = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", f"{self.role.value}-{self.rank}")
        object.__setattr__(self, "_hash", hash((self.role.value, self.rank)))

    def __hash__(self) -> int:
        return self._hash

    @classmethod
    def parse(cls, name: str) -> ReplicaId:
        role, _, rank = name.rpartition("-")
        return cls(Role(role), int(rank))


def desired_replicas(spec: TrainingJobSpec) -> list[ReplicaId]:
    """Every replica the spec asks for, servers first (trainers need them to start); a pytorch workload's
    workers."""
    roles = spec.roles()
    return list(_desired(roles, tuple(spec.replicas.count(role) for role in roles)))


@functools.lru_cache(maxsize=64)
def _desired(roles: tuple[Role, ...], counts: tuple[int, ...]) -> tuple[ReplicaId, ...]:
    return tuple(ReplicaId(role, rank) for role, count in zip(roles, counts, strict=True) for rank in range(count))


class ReplicaPhase(enum.StrEnum):
    PENDING = "Pending"  # created, not yet running (pod scheduling, image pull)
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True)
class ObservedReplica:
    """What a shell saw of one replica: a pod or a local process."""

    id: ReplicaId
    phase: ReplicaPhase
    instance: str = ""  # pod UID or process id: tells a replacement from the original
    exit_code: int | None = None
    reason: str | None = None  # e.g. Evicted, OOMKilled, Signal 9
    started_at: float | None = None
    heartbeat_at: float | None = None  # last heartbeat the replica wrote to Redis
    deleting: bool = False  # deletion already requested (pod has deletionTimestamp)
    deleting_until: float | None = None  # when its graceful termination should be over (deletionTimestamp)
    waiting_reason: str | None = None  # why a pending replica cannot start (STUCK_WAITING_REASONS)
    waiting_message: str = ""  # the kubelet's or scheduler's words for it
    handle: str = ""  # the shell's own name for it when not derived from the id (a standby pod that took it over)


@dataclass(frozen=True)
class FailureEvent:
    id: ReplicaId
    reason: str
    time: float
    exit_code: int | None = None
    instance: str = ""


# --- actions the shells apply ---------------------------------------------------------------


@dataclass(frozen=True)
class CreateReplica:
    id: ReplicaId
    generation: int
    reason: CreateReason


@dataclass(frozen=True)
class DeleteReplica:
    """Stop a replica. ``recreate`` says it is being replaced (the core will create it once gone)."""

    id: ReplicaId
    reason: str
    recreate: bool


@dataclass(frozen=True)
class RecordFailure:
    """Log the failure (Redis stream, Kubernetes Event, summary)."""

    failure: FailureEvent
    generation: int
    mode: str


Action = CreateReplica | DeleteReplica | RecordFailure


# --- the coordinator's memory between two calls ----------------------------------------------


@dataclass(frozen=True)
class JobMemory:
    """State the core carries between calls; shells persist it (status on Kubernetes)."""

    phase: Phase = Phase.PENDING
    generation: int = 0
    created_at: Mapping[str, float] = field(default_factory=dict)  # last create action per replica
    seen: frozenset[str] = frozenset()  # observed since their last create: once gone, failed at once
    replacing: frozenset[str] = frozenset()  # deleted by us, to be created again once gone
    succeeded: frozenset[str] = frozenset()  # trainers that finished: never restarted
    restart_times: Mapping[str, tuple[float, ...]] = field(default_factory=dict)  # failures, for the budget
    restarts: Mapping[str, int] = field(default_factory=dict)  # every replacement, for status
    failures: int = 0
    last_failure: FailureEvent | None = None
    conditions: tuple[Condition, ...] = ()
    start_time: float | None = None
    completion_time: float | None = None
    # Create requests the shell could not make: replica -> (first failure, reason, message). Cleared on success.
    create_errors: Mapping[str, tuple[float, str, str]] = field(default_factory=dict)
    not_before: Mapping[str, float] = field(default_factory=dict)  # backoff: no replacement before this time
    resuming: frozenset[str] = frozenset()  # deleted by a suspension, to be recreated on resume
    resumed_at: float | None = None  # the active deadline counts from here after a suspension


@dataclass(frozen=True)
class Stuck:
    """A replica that cannot start: its pod waits on a reason that will not clear by itself, or its create
    request keeps failing."""

    id: ReplicaId
    reason: str
    message: str
    since: float  # when its create was asked for (or first refused)


@dataclass(frozen=True)
class Decision:
    actions: list[Action]
    memory: JobMemory
    replicas: dict[str, RoleReplicaStatus]

    @property
    def phase(self) -> Phase:
        return self.memory.phase


# --- conditions -------------------------------------------------------------------------------


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: tuple[Condition, ...], type_: str, status: bool, reason: str, message: str, now: float
) -> tuple[Condition, ...]:
    """Upsert a condition; lastTransitionTime moves only when the status flips (Kubernetes convention)."""
    value = "True" if status else "False"
    old = next((c for c in conditions if c.type == type_), None)
    changed_at = old.last_transition_time if old is not None and old.status == value else iso(now)
    new = Condition(type=type_, status=value, reason=reason, message=message, last_transition_time=changed_at)
    if old is None:
        return (*conditions, new)
    return tuple(new if c.type == type_ else c for c in conditions)


# --- the core -------------------------------------------------------------------------------


def _failure_of(
    rid: ReplicaId, obs: ObservedReplica | None, memory: JobMemory, spec: TrainingJobSpec, now: float,
    heard_since: float | None = None,
) -> FailureEvent | None:
    """Why this replica counts as failed now, or None if it is healthy, waiting or done. Silence counts only
    from ``heard_since`` on: while Redis was unreachable no heartbeat could be written or read, so a replica
    is never declared hung for a silence the shell could not hear."""
    name = rid.name
    if name in memory.succeeded or name in memory.replacing or name in memory.resuming:
        return None  # done, already being replaced (never counted twice), or stopped by a suspension
    if obs is None:
        if name not in memory.created_at:
            return None  # ours to create, not a failure
        if name in memory.seen:
            return FailureEvent(rid, FailureReason.DELETED, now)  # it was there and is gone: no grace
        if now - memory.created_at[name] < CREATE_GRACE_S:
            return None  # created a moment ago, not visible yet
        return FailureEvent(rid, FailureReason.DELETED, now)
    if obs.deleting:
        return None
    if obs.phase is ReplicaPhase.FAILED:
        reason = obs.reason or (f"ExitCode{obs.exit_code}" if obs.exit_code is not None else FailureReason.FAILED)
        return FailureEvent(rid, reason, now, obs.exit_code, obs.instance)
    if obs.phase is ReplicaPhase.SUCCEEDED and rid.role is not spec.completing_role():
        return FailureEvent(rid, FailureReason.SERVER_EXITED, now, obs.exit_code, obs.instance)
    if obs.phase is ReplicaPhase.RUNNING:
        if obs.heartbeat_at is not None:
            last = max(obs.heartbeat_at, heard_since) if heard_since is not None else obs.heartbeat_at
            if now - last > spec.recovery.heartbeat_timeout_seconds:
                return FailureEvent(rid, FailureReason.HEARTBEAT_TIMEOUT, now, None, obs.instance)
        elif obs.started_at is not None:
            started = max(obs.started_at, heard_since) if heard_since is not None else obs.started_at
            if now - started > spec.recovery.startup_timeout_seconds:
                return FailureEvent(rid, FailureReason.NO_HEARTBEAT, now, None, obs.instance)
    return None


def stuck_replicas(spec: TrainingJobSpec, observed: Mapping[ReplicaId, ObservedReplica],
                   memory: JobMemory, now: float) -> list[Stuck]:
    """Every replica that cannot start now, with why and since when."""
    out = []
    for rid in desired_replicas(spec):
        name = rid.name
        obs = observed.get(rid)
        if obs is None and name in memory.create_errors:
            since, reason, message = memory.create_errors[name]
            out.append(Stuck(rid, reason, message, since))
        elif obs is not None and obs.phase is ReplicaPhase.PENDING and not obs.deleting and obs.waiting_reason:
            out.append(Stuck(rid, obs.waiting_reason, obs.waiting_message, memory.created_at.get(name, now)))
    return out


def _not_started(spec: TrainingJobSpec, observed: Mapping[ReplicaId, ObservedReplica], memory: JobMemory,
                 stuck: list[Stuck]) -> list[tuple[ReplicaId, float, Stuck | None]]:
    """Replicas asked for and not running yet: (replica, since, why stuck if it is)."""
    why = {s.id: s for s in stuck}
    out: list[tuple[ReplicaId, float, Stuck | None]] = []
    for rid in desired_replicas(spec):
        obs = observed.get(rid)
        if rid in why:
            out.append((rid, why[rid].since, why[rid]))
        elif obs is not None and obs.phase is ReplicaPhase.PENDING and not obs.deleting \
                and rid.name in memory.created_at:
            out.append((rid, memory.created_at[rid.name], None))
    return out


def _run_policy_violation(spec: TrainingJobSpec, observed: Mapping[ReplicaId, ObservedReplica], memory: JobMemory,
                          stuck: list[Stuck], now: float) -> tuple[str, str] | None:
    """(reason, message) when ``runPolicy`` ends the job: past its active deadline, or a replica pending
    (stuck or not) for longer than ``pendingTimeoutSeconds``; the stuck reason names the failure."""
    policy = spec.run_policy
    started = memory.start_time if memory.start_time is not None else now
    if memory.resumed_at is not None:
        started = memory.resumed_at  # like a Job's: a suspension stops the clock, resuming starts it again
    if policy.active_deadline_seconds is not None and now - started > policy.active_deadline_seconds:
        return ("DeadlineExceeded", f"the job ran longer than runPolicy.activeDeadlineSeconds "
                                    f"({policy.active_deadline_seconds:g}s)")
    timeout = policy.pending_timeout_seconds
    if timeout is None:
        return None
    late = [(rid, why) for rid, since, why in _not_started(spec, observed, memory, stuck) if now - since > timeout]
    for rid, why in sorted(late, key=lambda item: item[1] is None):  # a stuck one says why: name it first
        detail = f": {why.reason}: {why.message}" if why is not None else ""
        return (why.reason if why is not None else "PendingTimeout",
                f"{rid.name} did not start within runPolicy.pendingTimeoutSeconds ({timeout:g}s){detail}")
    return None


def stuck_condition(conditions: tuple[Condition, ...], stuck: list[Stuck], now: float) -> tuple[Condition, ...]:
    """``Stuck``: True naming every stuck replica and its reason; False once none is (absent until one was)."""
    if stuck:
        message = "; ".join(f"{s.id.name}: {s.reason}" + (f" ({s.message})" if s.message else "") for s in stuck)
        return set_condition(conditions, ConditionType.STUCK, True, stuck[0].reason, message, now)
    if any(c.type == ConditionType.STUCK and c.status == "True" for c in conditions):
        return set_condition(conditions, ConditionType.STUCK, False, "NoneStuck", "every replica could start", now)
    return conditions


def checkpoint_condition(conditions: tuple[Condition, ...], failing: Mapping[str, tuple[int, str]], limit: int,
                         now: float) -> tuple[tuple[Condition, ...], str | None]:
    """The CheckpointFailing condition from the savers whose saves fail (training goes on meanwhile), and why the
    job must fail when one of them failed ``limit`` times in a row (no checkpoint protects it any more)."""
    if not failing:
        was = any(c.type == ConditionType.CHECKPOINT_FAILING and c.status == "True" for c in conditions)
        if was:
            conditions = set_condition(conditions, ConditionType.CHECKPOINT_FAILING, False, "CheckpointsSaving",
                                       "every saver's last save succeeded", now)
        return conditions, None
    parts = [f"{_saver(name)}: {count} in a row ({message})" for name, (count, message) in sorted(failing.items())]
    conditions = set_condition(conditions, ConditionType.CHECKPOINT_FAILING, True, "SaveFailed",
                               "checkpoint saves fail, training goes on: " + "; ".join(parts), now)
    worst_name, (worst, message) = max(failing.items(), key=lambda item: item[1][0])
    if worst >= limit:
        return conditions, (f"{_saver(worst_name)}: {worst} checkpoint saves in a row failed "
                            f"(recovery.checkpoint.maxConsecutiveFailures {limit}): {message}")
    return conditions, None


def _saver(name: str) -> str:
    return f"embedding-server-{name}" if name.isdigit() else name


def _recent(times: tuple[float, ...], now: float, window: float) -> tuple[float, ...]:
    return tuple(t for t in times if now - t <= window)


def failure_action(spec: TrainingJobSpec, failure: FailureEvent) -> FailureAction:
    """What the failure policy says of this failure: the first matching rule of ``failurePolicy.rules``, else
    the defaults (exit code 78 fails the job, a disruption is ignored unless ``countDisruptions``, the rest
    counts)."""
    policy = spec.recovery.failure_policy
    for rule in policy.rules:
        if rule.on_exit_codes is not None:
            if failure.exit_code is None:
                continue
            inside = failure.exit_code in rule.on_exit_codes.values
            if inside == (rule.on_exit_codes.operator == "In"):
                return rule.action
        elif rule.on_reasons is not None and failure.reason in rule.on_reasons:
            return rule.action
    if failure.exit_code == EXIT_PERMANENT:
        return FailureAction.FAIL_JOB
    if failure.reason in DISRUPTION_REASONS and not policy.count_disruptions:
        return FailureAction.IGNORE
    return FailureAction.COUNT


def _counted_window(spec: TrainingJobSpec) -> float:
    """How long a counted failure is remembered: for the restart budget and for the backoff."""
    return max(spec.recovery.restart_budget.window_seconds, spec.recovery.failure_policy.backoff.window_seconds)


def replacement_delay(spec: TrainingJobSpec, counted: tuple[float, ...], now: float) -> float:
    """Seconds to wait before replacing a replica whose counted failures (this one included) are ``counted``:
    none for the first ``immediateReplacements`` within the backoff window, then ``initialSeconds`` doubling
    to ``maxSeconds``."""
    backoff = spec.recovery.failure_policy.backoff
    if not backoff.enabled:
        return 0.0
    recent = len(_recent(counted, now, backoff.window_seconds))
    beyond = recent - backoff.immediate_replacements
    if beyond <= 0:
        return 0.0
    return min(backoff.max_seconds, backoff.initial_seconds * 2 ** (beyond - 1))


def _fatal(failure: FailureEvent, memory: JobMemory, spec: TrainingJobSpec, now: float) -> tuple[str, str] | None:
    """(reason, message) when this failure must fail the whole job."""
    action = failure_action(spec, failure)
    if action is FailureAction.FAIL_JOB:
        if failure.exit_code == EXIT_PERMANENT and not any(r.action is FailureAction.FAIL_JOB
                                                           for r in spec.recovery.failure_policy.rules):
            return ("PermanentError", f"{failure.id.name} exited with code 78 (configuration error); not retried")
        code = f" (exit code {failure.exit_code})" if failure.exit_code is not None else ""
        return ("FailurePolicy", f"{failure.id.name} failed: {failure.reason}{code}; recovery.failurePolicy says "
                                 "FailJob")
    if action is FailureAction.IGNORE:
        return None
    budget = spec.recovery.restart_budget
    recent = _recent(memory.restart_times.get(failure.id.name, ()), now, budget.window_seconds)
    if len(recent) >= budget.max_restarts:
        return (
            "RestartBudgetExhausted",
            f"{failure.id.name} failed {len(recent) + 1} times within {budget.window_seconds:g}s "
            f"(budget {budget.max_restarts}); last reason {failure.reason}",
        )
    return None


def _stop_everything(
    observed: Mapping[ReplicaId, ObservedReplica], reason: str, clean_finished: bool = False
) -> list[Action]:
    """Stop what still runs; with ``clean_finished`` (a finished job under ``cleanPodPolicy: All``) delete the
    finished replicas too."""
    stop = (ReplicaPhase.PENDING, ReplicaPhase.RUNNING)
    return [
        DeleteReplica(rid, reason, recreate=False)
        for rid, obs in sorted(observed.items())
        if (clean_finished or obs.phase in stop) and not obs.deleting
    ]


def _clean_all(spec: TrainingJobSpec) -> bool:
    return spec.run_policy.clean_pod_policy == "All"


def _replica_status(
    spec: TrainingJobSpec, observed: Mapping[ReplicaId, ObservedReplica], memory: JobMemory
) -> dict[str, RoleReplicaStatus]:
    out = {}
    for role in spec.roles():
        ids = [ReplicaId(role, r) for r in range(spec.replicas.count(role))]
        ready = sum(1 for rid in ids if (o := observed.get(rid)) is not None and o.phase is ReplicaPhase.RUNNING)
        out[role.value] = RoleReplicaStatus(
            desired=len(ids), ready=ready, restarts=sum(memory.restarts.get(rid.name, 0) for rid in ids)
        )
    return out


def reconcile(
    spec: TrainingJobSpec,
    observed: Mapping[ReplicaId, ObservedReplica],
    memory: JobMemory,
    now: float,
    mode: str = "partial",
    heard_since: float | None = None,
    hold: str | None = None,
    checkpoint_failures: Mapping[str, tuple[int, str]] | None = None,
) -> Decision:
    """Decide what to do about one job. ``mode`` is the effective recovery mode: partial or full
    (the caller resolves ``auto`` with the tuning module's benefit test). ``heard_since``: since when the
    shell has read heartbeats without a gap (None: always); see ``_failure_of``. ``hold``: why the shell keeps
    the job suspended besides ``runPolicy.suspend`` (a queue has not admitted it). ``checkpoint_failures``: each
    saver whose last save failed, with its failures in a row and the error (None: unknown, Redis away). The
    steps, in order: a finished job only cleans up; all trainers done ends it; a suspended one has no pods; a
    fatal failure or checkpoints failing too long fail it; otherwise failures are replaced, lost deletes
    repeated, missing replicas created, and the phase follows."""
    mem = memory if memory.start_time is not None else dataclasses.replace(memory, start_time=now)
    if mem.phase.finished:
        # Nothing is restarted after the end; only leftovers are cleaned up.
        return Decision(_stop_everything(observed, f"Job{mem.phase.value}", _clean_all(spec)), mem,
                        _replica_status(spec, observed, mem))
    mem = _note_succeeded_trainers(spec, observed, mem)
    if (done := _succeeded(spec, observed, mem, now)) is not None:
        return done
    if spec.run_policy.suspend or hold is not None:
        return _suspended(spec, observed, mem, hold or "runPolicy.suspend", now)
    if mem.phase is Phase.SUSPENDED:
        mem = _resumed(mem, now)
    failures = [f for rid in desired_replicas(spec)
                if (f := _failure_of(rid, observed.get(rid), mem, spec, now, heard_since)) is not None]
    if (fatal := _fatal_decision(spec, observed, mem, failures, mode, now)) is not None:
        return fatal
    if checkpoint_failures is not None:
        conditions, give_up = checkpoint_condition(mem.conditions, checkpoint_failures,
                                                   spec.recovery.checkpoint.max_consecutive_failures, now)
        mem = dataclasses.replace(mem, conditions=conditions)
        if give_up is not None:
            return _failed(spec, observed, mem, ConditionType.CHECKPOINT_FAILING, give_up, now)
    stuck = stuck_replicas(spec, observed, mem, now)
    mem = dataclasses.replace(mem, conditions=stuck_condition(mem.conditions, stuck, now))
    if (violation := _run_policy_violation(spec, observed, mem, stuck, now)) is not None:
        return _failed(spec, observed, mem, *violation, now)
    plan = _replace_failed(spec, observed, mem, failures, mode, now)
    plan = _repeat_lost_deletes(spec, observed, plan, mode)
    plan = _create_missing(spec, observed, mem, failures, plan, now)
    mem = _next_memory(spec, observed, mem, failures, plan, now)
    return Decision(plan.actions, mem, _replica_status(spec, observed, mem))


@dataclass
class _Plan:
    """What the replacement steps build up for one reconcile pass."""

    actions: list[Action]
    replacing: set[str]
    restart_times: dict[str, tuple[float, ...]]
    restarts: dict[str, int]
    generation: int
    conditions: tuple[Condition, ...]
    created_at: dict[str, float] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    not_before: dict[str, float] = field(default_factory=dict)
    resuming: set[str] = field(default_factory=set)


def _note_succeeded_trainers(spec: TrainingJobSpec, observed: Mapping[ReplicaId, ObservedReplica],
                             mem: JobMemory) -> JobMemory:
    finishing = spec.completing_role()
    succeeded = set(mem.succeeded) | {
        rid.name for rid in desired_replicas(spec)
        if rid.role is finishing and (o := observed.get(rid)) is not None and o.phase is ReplicaPhase.SUCCEEDED
    }
    return dataclasses.replace(mem, succeeded=frozenset(succeeded))


def _succeeded(spec: TrainingJobSpec, observed: Mapping[ReplicaId, ObservedReplica], mem: JobMemory,
               now: float) -> Decision | None:
    """Every trainer (a pytorch workload's every worker) finished: the job Succeeded and the servers are
    stopped."""
    finishing = spec.completing_role()
    trainers = [rid for rid in desired_replicas(spec) if rid.role is finishing]
    if not all(rid.name in mem.succeeded for rid in trainers):
        return None
    reason = "WorkersCompleted" if finishing is Role.WORKER else "TrainersCompleted"
    conditions = set_condition(mem.conditions, ConditionType.SUCCEEDED, True, reason,
                               f"all {len(trainers)} {finishing.value}s finished", now)
    conditions = set_condition(conditions, ConditionType.RECOVERING, False, "Completed", "", now)
    conditions = set_condition(conditions, ConditionType.RUNNING, False, "Completed", "", now)
    mem = dataclasses.replace(mem, phase=Phase.SUCCEEDED, conditions=conditions, completion_time=now,
                              replacing=frozenset())
    return Decision(_stop_everything(observed, reason, _clean_all(spec)), mem,
                    _replica_status(spec, observed, mem))


def _suspended(spec: TrainingJobSpec, observed: Mapping[ReplicaId, ObservedReplica], mem: JobMemory, why: str,
               now: float) -> Decision:
    """Suspended: every pod deleted gracefully (servers flush a checkpoint on SIGTERM), nothing created; each
    replica that existed is recreated on resume and continues its own progress. A pod that exits while
    being stopped is not a failure."""
    ever_created = {rid.name for rid in desired_replicas(spec) if rid.name in mem.created_at}
    resuming = (set(mem.resuming) | ever_created | set(mem.replacing)) - set(mem.succeeded)
    actions: list[Action] = [
        DeleteReplica(rid, "Suspended", recreate=False) for rid, obs in sorted(observed.items())
        if obs.phase in (ReplicaPhase.PENDING, ReplicaPhase.RUNNING) and not obs.deleting]
    conditions = set_condition(mem.conditions, ConditionType.SUSPENDED, True, "Suspended",
                               f"{why}: replicas deleted; progress and checkpoints kept", now)
    conditions = set_condition(conditions, ConditionType.RUNNING, False, "Suspended", "", now)
    if any(c.type == ConditionType.RECOVERING and c.status == "True" for c in conditions):
        conditions = set_condition(conditions, ConditionType.RECOVERING, False, "Suspended", "", now)
    mem = dataclasses.replace(mem, phase=Phase.SUSPENDED, conditions=conditions, resuming=frozenset(resuming),
                              replacing=frozenset(), seen=frozenset(), not_before={}, create_errors={})
    return Decision(actions, mem, _replica_status(spec, observed, mem))


def _resumed(mem: JobMemory, now: float) -> JobMemory:
    """Resume: one generation up; replicas that existed are recreated (``CreateReason.RESUME``), the rest created."""
    conditions = set_condition(mem.conditions, ConditionType.SUSPENDED, False, "Resumed",
                               "replicas recreated; each continues where it stopped", now)
    return dataclasses.replace(mem, phase=Phase.PENDING, generation=mem.generation + 1, conditions=conditions,
                               resumed_at=now)


def _fatal_decision(spec: TrainingJobSpec, observed: Mapping[ReplicaId, ObservedReplica], mem: JobMemory,
                    failures: list[FailureEvent], mode: str, now: float) -> Decision | None:
    """The first failure no restart can fix (exit 78, the restart budget spent) fails the whole job."""
    for failure in failures:
        fatal = _fatal(failure, mem, spec, now)
        if fatal is None:
            continue
        reason, message = fatal
        mem = dataclasses.replace(mem, failures=mem.failures + 1, last_failure=failure)
        return _failed(spec, observed, mem, reason, message, now, RecordFailure(failure, mem.generation, mode))
    return None


def _failed(spec: TrainingJobSpec, observed: Mapping[ReplicaId, ObservedReplica], mem: JobMemory, reason: str,
            message: str, now: float, record: RecordFailure | None = None) -> Decision:
    """The job Failed: Failed=True, Running and Recovering False, and everything still running stopped."""
    conditions = set_condition(mem.conditions, ConditionType.FAILED, True, reason, message, now)
    conditions = set_condition(conditions, ConditionType.RECOVERING, False, reason, "", now)
    conditions = set_condition(conditions, ConditionType.RUNNING, False, reason, "", now)
    mem = dataclasses.replace(mem, phase=Phase.FAILED, conditions=conditions, completion_time=now,
                              replacing=frozenset())
    actions: list[Action] = [record] if record is not None else []
    return Decision([*actions, *_stop_everything(observed, reason, _clean_all(spec))], mem,
                    _replica_status(spec, observed, mem))


def _replace_failed(spec: TrainingJobSpec, observed: Mapping[ReplicaId, ObservedReplica], mem: JobMemory,
                    failures: list[FailureEvent], mode: str, now: float) -> _Plan:
    """Record each failure and delete what it replaces: the failed replicas (partial) or every
    unfinished one (full), one generation up."""
    plan = _Plan(actions=[], replacing=set(mem.replacing), restart_times=dict(mem.restart_times),
                 restarts=dict(mem.restarts), generation=mem.generation, conditions=mem.conditions,
                 not_before={k: t for k, t in mem.not_before.items() if t > now}, resuming=set(mem.resuming))
    if not failures:
        return plan
    plan.generation += 1
    to_replace = ({f.id for f in failures} if mode == "partial"
                  else {rid for rid in desired_replicas(spec) if rid.name not in mem.succeeded})
    waits = []
    for failure in failures:
        if failure_action(spec, failure) is FailureAction.COUNT:
            name = failure.id.name
            plan.restart_times[name] = (*_recent(plan.restart_times.get(name, ()), now, _counted_window(spec)), now)
            delay = replacement_delay(spec, plan.restart_times[name], now)
            if delay > 0:
                plan.not_before[name] = now + delay
                waits.append(f"{name} in {delay:g}s")
        plan.actions.append(RecordFailure(failure, plan.generation, mode))
    for rid in sorted(to_replace):
        if rid.name in plan.replacing:
            continue  # already being replaced (full mode, second failure): one restart, not two
        plan.restarts[rid.name] = plan.restarts.get(rid.name, 0) + 1
        plan.replacing.add(rid.name)
        obs = observed.get(rid)
        if obs is not None and not obs.deleting:
            plan.actions.append(DeleteReplica(rid, f"Replace:{mode}", recreate=True))
    names = ", ".join(f.id.name for f in failures)
    backing_off = f"; backing off: {', '.join(waits)}" if waits else ""
    plan.conditions = set_condition(plan.conditions, ConditionType.RECOVERING, True, failures[-1].reason,
                                    f"replacing {names if mode == 'partial' else 'all replicas'} "
                                    f"({mode} recovery, generation {plan.generation}){backing_off}", now)
    return plan


def _repeat_lost_deletes(spec: TrainingJobSpec, observed: Mapping[ReplicaId, ObservedReplica], plan: _Plan,
                         mode: str) -> _Plan:
    """A replica being replaced that is still there and not going away lost its delete (a failed
    request, or a shell restarted between deleting and persisting memory): ask again. Shells report
    pods they asked to delete as deleting, so nothing repeats while a delete is in flight."""
    asked = {a.id for a in plan.actions if isinstance(a, DeleteReplica)}
    for rid in desired_replicas(spec):
        obs = observed.get(rid)
        if rid.name in plan.replacing and rid not in asked and obs is not None and not obs.deleting:
            plan.actions.append(DeleteReplica(rid, f"Replace:{mode}", recreate=True))
    return plan


def _create_missing(spec: TrainingJobSpec, observed: Mapping[ReplicaId, ObservedReplica], mem: JobMemory,
                    failures: list[FailureEvent], plan: _Plan, now: float) -> _Plan:
    """Create every replica that is gone and being replaced, or was never created. One observed and
    then gone (``seen``) counts as failed at once, so it never waits out the create grace."""
    plan.created_at = dict(mem.created_at)
    plan.seen = {rid.name for rid in desired_replicas(spec) if rid in observed} | \
        (set(mem.seen) - {f.id.name for f in failures})
    for rid in desired_replicas(spec):
        name = rid.name
        if name in mem.succeeded or rid in observed:
            continue
        if name in plan.replacing and plan.not_before.get(name, 0.0) > now:
            continue  # backing off: a replica that keeps failing waits before its next replacement
        if name in plan.resuming:
            plan.actions.append(CreateReplica(rid, plan.generation, CreateReason.RESUME))
            plan.created_at[name] = now
            plan.resuming.discard(name)
            plan.seen.discard(name)
            continue
        if name in plan.replacing or name not in plan.created_at:
            reason = CreateReason.REPLACEMENT if name in plan.replacing else CreateReason.INITIAL
            plan.actions.append(CreateReplica(rid, plan.generation, reason))
            plan.created_at[name] = now
            plan.replacing.discard(name)
            plan.seen.discard(name)
    return plan


def _next_memory(spec: TrainingJobSpec, observed: Mapping[ReplicaId, ObservedReplica], mem: JobMemory,
                 failures: list[FailureEvent], plan: _Plan, now: float) -> JobMemory:
    """The phase and conditions that follow from this pass, and everything the next pass must remember."""
    pending_replacements = bool(plan.replacing) or any(
        isinstance(a, CreateReplica) and a.reason is CreateReason.REPLACEMENT for a in plan.actions
    )
    all_running = all(
        rid.name in mem.succeeded or ((o := observed.get(rid)) is not None and o.phase is ReplicaPhase.RUNNING)
        for rid in desired_replicas(spec)
    )
    conditions = plan.conditions
    if pending_replacements or failures:
        phase = Phase.RECOVERING
    elif all_running:
        phase = Phase.RUNNING
        if any(c.type == ConditionType.RECOVERING and c.status == "True" for c in conditions):
            conditions = set_condition(conditions, ConditionType.RECOVERING, False, "Recovered",
                                       f"all replicas running (generation {plan.generation})", now)
    else:
        phase = Phase.PENDING if mem.phase is Phase.PENDING else Phase.RECOVERING
    if phase is Phase.RUNNING or mem.phase is not Phase.PENDING:
        conditions = set_condition(conditions, ConditionType.RUNNING, phase is Phase.RUNNING,
                                   "AllReplicasRunning" if phase is Phase.RUNNING else phase.value, "", now)
    return dataclasses.replace(
        mem,
        phase=phase,
        generation=plan.generation,
        created_at=plan.created_at,
        seen=frozenset(plan.seen),
        replacing=frozenset(plan.replacing),
        restart_times=plan.restart_times,
        not_before=plan.not_before,
        resuming=frozenset(plan.resuming),
        restarts=plan.restarts,
        failures=mem.failures + len(failures),
        last_failure=failures[-1] if failures else mem.last_failure,
        conditions=conditions,
    )
