"""One TrainingJob's coordinator on Kubernetes: the imperative shell around ``reconcile()``.

A ``JobCoordinator`` runs as the job's kopf daemon. Every step it

1. observes the job's pods from kopf's in-memory pod index (no LIST), with the heartbeats last
   read from Redis (``observe.py``);
2. asks the pure core what to do (``reconcile.reconcile``);
3. applies the actions in an order that keeps the latency of a replacement low and the Redis
   state consistent: deletes first, then failure records (generation bump before any
   replacement exists), then creates;
4. writes the status once, as a merge patch against what it wrote last, with the core's memory
   in ``status.coordinator``, then emits Events for phase transitions.

Steps run one at a time per job (no locks needed). A pod event wakes the loop at once
(``poke``); otherwise it wakes every ``tick_s`` to refresh heartbeats and progress from Redis.
Redis is read and written in a thread pool with short timeouts, and never sits between a failed
pod and the delete of that pod: a Redis outage delays status and tuning, not recovery.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import dataclasses
import functools
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import kopf
import redis
import structlog
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from trainingjob_operator import tuning
from trainingjob_operator.api.loading import ManifestError
from trainingjob_operator.api.spec import (
    RecoveryMode,
    Role,
    TrainingJob,
    TrainingJobSpec,
    Workload,
    frozen_change,
)
from trainingjob_operator.api.status import Phase, ProgressStatus
from trainingjob_operator.coordination import Coordination, grant_job_user, job_user, job_user_exists
from trainingjob_operator.core.recovery import RollbackPoint, effective_mode, trainer_rollbacks
from trainingjob_operator.core.standby import (
    StandbyView,
    pick_standby,
    plan_standbys,
    standby_counts,
    stuck_standbys,
)
from trainingjob_operator.failure_log import publish_resumed_generation, write_failure
from trainingjob_operator.k8s import kueue, resources
from trainingjob_operator.k8s.config import OperatorConfig
from trainingjob_operator.k8s.kube import Kube, KubeError, NotFound
from trainingjob_operator.k8s.metrics import Metrics
from trainingjob_operator.k8s.observe import (
    HeartbeatSnapshot,
    mark_deleting,
    stuck_terminating,
    with_heartbeats,
)
from trainingjob_operator.k8s.reporting import (
    OWNED_KEYS,
    RecoveryFacts,
    merge_patch,
    phase_event,
    render_status,
    save_cost_status,
    summarize_progress,
    summarize_steps,
)
from trainingjob_operator.memory_codec import memory_from_status
from trainingjob_operator.reconcile import (
    CREATE_GRACE_S,
    HUNG_REASONS,
    ConditionType,
    CreateReason,
    CreateReplica,
    Decision,
    DeleteReplica,
    JobMemory,
    ObservedReplica,
    RecordFailure,
    ReplicaId,
    ReplicaPhase,
    Stuck,
    iso,
    reconcile,
    set_condition,
    stuck_replicas,
)
from trainingjob_operator.tuner import lost_samples, plan_interval

JobKey = tuple[str, str]  # (namespace, name)
T = TypeVar("T")



# --- shared by every job of one operator ----------------------------------------------------------


def _redis_client(url: str, timeout_s: float) -> redis.Redis:
    """A client that fails fast: the operator retries on its next tick instead of blocking."""
    return redis.Redis.from_url(
        url, decode_responses=True, socket_connect_timeout=timeout_s, socket_timeout=timeout_s,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=1),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError], health_check_interval=10,
    )


@dataclass
class OperatorContext:
    """What every handler of one operator shares; lives in kopf's memo as ``memo.tj``."""

    config: OperatorConfig
    kube: Kube
    metrics: Metrics
    jobs: dict[JobKey, JobCoordinator] = field(default_factory=dict)
    executor: concurrent.futures.ThreadPoolExecutor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="tj-redis"))
    _clients: dict[str, redis.Redis] = field(default_factory=dict)
    stop_metrics: Callable[[], None] | None = None

    def coordination(self, url: str, namespace: str, job: str) -> Coordination:
        if url not in self._clients:
            self._clients[url] = _redis_client(url, self.config.redis_timeout_s)
        return Coordination(url, namespace, job, client=self._clients[url])

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def close(self) -> None:
        if self.stop_metrics is not None:
            self.stop_metrics()
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                client.close()
        self.executor.shutdown(wait=False, cancel_futures=True)


# --- what the operator reads from Redis (in a worker thread) ----------------------------------------


@dataclass(frozen=True)
class RedisView:
    progress: ProgressStatus
    pls: float | None
    last_checkpoint: str | None


def read_heartbeats(coord: Coordination, spec: TrainingJobSpec, now: float) -> HeartbeatSnapshot:
    members = {}
    for role in spec.roles():
        for rank, member in coord.members(role.value, spec.replicas.count(role)).items():
            members[ReplicaId(role, rank)] = (member.instance, member.heartbeat)
    return HeartbeatSnapshot(read_at=now, members=members)


def _assign(coord: Coordination, *, instance: str, assignment: dict[str, Any]) -> bool:
    coord.assign_standby(instance, assignment)
    return True


def read_standby_offers(coord: Coordination) -> dict[str, float]:
    return {instance: float(offer.get("seen") or 0.0) for instance, offer in coord.standbys().items()}


def _checkpoint_time(pointer: Mapping[str, Any] | None) -> float | None:
    value = (pointer or {}).get("time")
    return float(value) if isinstance(value, int | float) else None


def read_progress(coord: Coordination, spec: TrainingJobSpec) -> RedisView:
    if spec.workload is Workload.PYTORCH:
        steps = coord.step_progress()
        checkpoints = coord.checkpoints()
        last = iso(float(checkpoints[-1]["time"])) if checkpoints and "time" in checkpoints[-1] else None
        return RedisView(summarize_steps(steps, coord.result(0)), None, last)
    trainers = spec.replicas.count(Role.TRAINER)
    progress = coord.all_progress(trainers)
    results = {rank: r for rank in range(trainers) if (r := coord.result(rank)) is not None}
    curve = sorted(coord.curve(), key=lambda p: p.get("samples", 0))
    summary = summarize_progress(progress, results, spec.data.planned_samples,
                                 float(curve[-1]["auc"]) if curve and "auc" in curve[-1] else None)
    lost = lost_samples(coord, spec)
    shards = [_checkpoint_time(coord.checkpoint_pointer(s)) for s in range(spec.replicas.count(Role.EMBEDDING_SERVER))]
    # The job as a whole is restorable to the oldest of its shards' latest checkpoints.
    last = iso(min(t for t in shards if t is not None)) if shards and all(t is not None for t in shards) else None
    pls = min(1.0, lost / summary.samples) if summary.samples else None
    return RedisView(summary, round(pls, 6) if pls is not None else None, last)


# --- one job --------------------------------------------------------------------------------------


class JobCoordinator:
    """The coordinator loop of one TrainingJob (see the module docstring)."""

    def __init__(self, ctx: OperatorContext, body: Mapping[str, Any], pods: Mapping[JobKey, Any],
                 clock: Callable[[], float] = time.time) -> None:
        meta = body["metadata"]
        self.ctx = ctx
        self.body = body  # kopf's live body: always the latest version of the object
        self.pods = pods  # kopf's pod index: (namespace, job) -> ObservedReplica values
        self.key: JobKey = (meta["namespace"], meta["name"])
        self.clock = clock
        self.owner = resources.Owner.of(body)
        self.log = structlog.get_logger("trainingjob.coordinator").bind(namespace=self.key[0], job=self.key[1])
        self.exited = asyncio.Event()
        self._wake = asyncio.Event()
        self.memory = JobMemory()
        self.done = False
        self.written: dict[str, Any] = {}  # the status as last written
        self.requested_deletes: dict[ReplicaId, str] = {}  # replica -> UID we asked to delete
        self.failed_at: dict[int, float] = {}  # recovery generation -> when its failure was detected
        self.awaiting_ready: dict[ReplicaId, float] = {}  # replaced replica -> failure time (o_res)
        self.create_retry_at: dict[ReplicaId, tuple[int, float]] = {}  # refused creates: (attempts, next try)
        self.reported_stuck: set[tuple[str, str]] = set()  # (pod, reason) already in an Event
        self.forced: dict[ReplicaId, str] = {}  # replica -> UID we force-deleted (once per pod)
        self.redis_secret: str | None = None  # the Secret with the job's own Redis user; None: the operator's URL
        self._redis_password: str | None = None
        self._redis_granted = False
        self.admission: kueue.Admission | None = None  # Kueue's verdict on a queued job; None: not queued
        self.workload: dict[str, Any] | None = None
        self.workload_finished = False
        self.flavor_labels: dict[str, dict[str, str]] = {}  # pod set (role) -> its flavor's node labels
        self.heartbeats: HeartbeatSnapshot | None = None
        self.heard_since: float | None = None  # since when heartbeat reads succeeded without a gap
        self.view: RedisView | None = None
        self.checkpoint_failures: dict[str, tuple[int, str]] | None = None  # None: not read (Redis away)
        self.plan: tuning.IntervalDecision | None = None
        self.rollback: RollbackPoint | None = None  # full recovery: where replaced trainers resume
        self._tuning: asyncio.Task[None] | None = None
        self.next_refresh_at = 0.0
        self.next_progress_at = 0.0
        self.next_tune_at = 0.0
        self.job: TrainingJob
        self.redis_url: str
        self.coord: Coordination
        self._spec_raw: Any = None
        self.standby_offers: dict[str, float] | None = None  # standby pod UID -> when it last offered itself
        self.standby_created: dict[str, StandbyView] = {}  # standby pods created, not yet seen by the watch
        self.standby_deleted: set[str] = set()  # standby pods we asked to delete
        self.standby_taken: set[str] = set()  # standby pod UIDs that took a rank over (the watch may still lag)

    def poke(self) -> None:
        """Something about the job changed (a pod event, deletion): step now."""
        self._wake.set()

    # --- the loop ---------------------------------------------------------------------------------
    async def run(self, stopped: Any) -> None:
        """Until the job is finished and quiet, deleted, or the daemon is stopped."""
        try:
            while not await self.start():
                # Invalid (validate_job reported it): wait for a corrected spec rather than exit, so fixing the
                # manifest starts the job without an operator restart.
                if stopped or self._deleting():
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.ctx.config.tick_s * 5):
                        await self._wake.wait()
                self._wake.clear()
            while not stopped and not self._deleting():
                try:
                    await self.step()
                except (KubeError, redis.RedisError, OSError) as e:
                    self.log.error("reconcile step failed; retrying", error=str(e))
                if self.done:
                    await self._expire_after_ttl(stopped)
                    self.log.info("job finished; coordinator exits", phase=self.memory.phase.value)
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.ctx.config.tick_s):
                        await self._wake.wait()
                self._wake.clear()
        finally:
            if self._tuning is not None:
                self._tuning.cancel()
            self.exited.set()

    async def _expire_after_ttl(self, stopped: Any) -> None:
        """``runPolicy.ttlSecondsAfterFinished``: delete the finished TrainingJob (its children go with it)."""
        ttl = self.job.spec.run_policy.ttl_seconds_after_finished
        finished = self.memory.completion_time
        if ttl is None or finished is None:
            return
        while not stopped and not self._deleting():
            left = finished + ttl - self.clock()
            if left <= 0:
                if await self.ctx.kube.delete_job(*self.key, uid=self.owner.uid):
                    kopf.event(self.body, type="Normal", reason="Expired",  # type: ignore[arg-type]
                               message=f"deleted {ttl:g}s after it finished (runPolicy.ttlSecondsAfterFinished)")
                    self.log.info("job expired; deleted", ttl_s=ttl)
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, self.ctx.config.tick_s * 5)):
                    await self._wake.wait()
            self._wake.clear()

    def _deleting(self) -> bool:
        return bool(self.body["metadata"].get("deletionTimestamp"))

    async def start(self) -> bool:
        """Parse the job, restore memory, make sure the Service and ConfigMap exist."""
        try:
            self.job, self.redis_url = resources.admit(self.body, *self.ctx.config.job_defaults)
        except ManifestError:
            return False  # the validation handler reports it; nothing to coordinate
        self._spec_raw = copy.deepcopy(self.body.get("spec"))
        self.coord = self.ctx.coordination(self.redis_url, *self.key)
        status = self.body.get("status") or {}
        self.written = {k: v for k, v in status.items() if k in OWNED_KEYS}
        restored = memory_from_status(status)
        if restored is not None:
            self.memory = restored
            self.log.info("resumed", phase=restored.phase.value, generation=restored.generation)
        elif not self.pods.get(self.key):
            # A brand-new job: drop what an earlier job of the same name left in Redis.
            await self._redis(lambda c: c.clear())
        await self._ensure_redis_user()
        await self._ensure_children()
        durable, reason, message = resources.checkpoint_durability(self.job)
        self.memory = dataclasses.replace(self.memory, conditions=set_condition(
            self.memory.conditions, ConditionType.CHECKPOINTS_DURABLE, durable, reason, message, self.clock()))
        if not durable:
            kopf.event(self.body, type="Warning", reason="EphemeralCheckpoints", message=message)  # type: ignore[arg-type]
        await self._tune(self.clock())  # before the first step: ``auto`` needs a mode to start with
        self.next_tune_at = self.clock() + self.ctx.config.tune_every_s
        return True

    async def _ensure_redis_user(self) -> None:
        """The job's own Redis ACL user, limited to its keys, its password in the Secret ``<job>-redis`` that its
        pods read (kept across operator restarts: the pods hold it). A Redis that has no ACLs, or refuses them to
        the operator, leaves the job on the operator's connection, with a Warning event saying so; an unreachable
        Redis is granted on a later tick."""
        if not self.ctx.config.job_redis_users:
            return
        ns, job = self.job.namespace, self.job.name
        name = resources.redis_secret_name(job)
        username = job_user(ns, job)
        data = await self.ctx.kube.get_secret_data(ns, name)
        if data is None or data.get("username") != username or not data.get("password"):
            data = {"username": username, "password": secrets.token_urlsafe(32)}
            await self.ctx.kube.create_secret(ns, resources.render_redis_secret(
                self.job, owner=self.owner, username=username, password=data["password"]))
        self._redis_password = data["password"]
        self.redis_secret = name
        await self._grant_redis_user()

    async def _grant_redis_user(self) -> None:
        if self.redis_secret is None or self._redis_password is None:
            return
        ns, job, password = self.job.namespace, self.job.name, self._redis_password
        if self._redis_granted:
            # One small read a tick: a Redis that restarted forgot the user, and every pod of the job would
            # fail to log in (no heartbeats: all judged hung) until it is granted again.
            exists = await self._redis(lambda c: job_user_exists(c.r, ns, job))
            if exists is not False:
                return  # still there, or Redis unreachable (asked again next tick)
            self.log.warning("redis forgot the job's user (restarted without an ACL file?); granting it again")
            self._redis_granted = False
        try:
            await self.ctx.in_thread(lambda: grant_job_user(self.coord.r, ns, job, password))
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            self.log.warning("redis user not granted yet; retrying", error=str(e))
            return
        except redis.RedisError as e:  # no ACLs (Redis < 6) or no right to set them
            self.redis_secret = None
            message = f"Redis refused a per-job user ({e}): the job's pods use the operator's Redis connection"
            kopf.event(self.body, type="Warning", reason="RedisNotIsolated", message=message)  # type: ignore[arg-type]
            self.log.warning("redis user refused", error=str(e))
            return
        self._redis_granted = True
        self.log.info("redis user granted", user=job_user(ns, job))

    async def _ensure_children(self) -> None:
        ns = self.job.namespace
        config_map = resources.render_config_map(self.job, owner=self.owner)
        if not await self.ctx.kube.create_config_map(ns, config_map):
            await self.ctx.kube.patch_config_map(ns, config_map["metadata"]["name"], config_map["data"])
        await self.ctx.kube.create_service(ns, resources.render_service(self.job, owner=self.owner))
        if (policy := resources.render_network_policy(self.job, owner=self.owner)) is not None:
            await self.ctx.kube.create_network_policy(ns, policy)
        if (group := resources.render_pod_group(self.job, owner=self.owner)) is not None:
            await self.ctx.kube.create_pod_group(ns, group)  # before the pods: the gang scheduler waits for it
        await self._ensure_claims()

    async def _ensure_claims(self) -> None:
        """Claims before pods: a server pod whose claim does not exist yet would wait Pending for it."""
        for claim in resources.render_checkpoint_claims(self.job, owner=self.owner):
            await self.ctx.kube.create_claim(self.job.namespace, claim)

    # --- one step ---------------------------------------------------------------------------------
    async def step(self) -> None:
        started = time.perf_counter()
        now = self.clock()
        await self._follow_spec()
        if now >= self.next_refresh_at:
            await self._refresh(now)
        observed = self._observe(now)
        hold = self.admission.reason if self.admission is not None and not self.admission.admitted else None
        decision = reconcile(self.job.spec, observed, self.memory, now, self.effective_mode(),
                             heard_since=self.heard_since if self.heard_since is not None else now, hold=hold,
                             checkpoint_failures=self.checkpoint_failures)
        self.memory = await self._apply(decision, observed)
        # Standbys only once every replica has started (on a full cluster a standby must not take a replica's
        # place), and none while suspended, held by a queue or finished.
        standbys = await self._keep_standbys(now, active=hold is None and self.memory.phase in (Phase.RUNNING,
                                                                                               Phase.RECOVERING))
        if self.memory.phase.finished:
            await self._finish_workload(now)
        await self._force_delete_stuck_terminations(observed, now)
        self._track_replacements(observed)
        self._report_stuck(stuck_replicas(self.job.spec, observed, self.memory, now), stuck_standbys(standbys))
        if any(isinstance(a, RecordFailure) for a in decision.actions) or now >= self.next_tune_at:
            self._start_tuning(now)
        await self._report(dataclasses.replace(decision, memory=self.memory),
                           standby_counts(self.job.spec, standbys, self.standby_offers, now))
        self.done = self.memory.phase.finished and not decision.actions and not standbys and not any(
            o.phase in (ReplicaPhase.PENDING, ReplicaPhase.RUNNING) and not o.deleting for o in observed.values())
        self.ctx.metrics.reconcile.observe(time.perf_counter() - started)

    def effective_mode(self) -> str:
        """partial or full; ``auto`` follows the tuning module's benefit test (partial until it ran)."""
        return effective_mode(self.job.spec, self.plan.mode_chosen if self.plan else None).value

    async def _follow_spec(self) -> None:
        raw = self.body.get("spec")
        if raw == self._spec_raw:
            return
        self._spec_raw = copy.deepcopy(raw)
        try:
            job, url = resources.admit(self.body, *self.ctx.config.job_defaults)
            if (frozen := frozen_change(self.job.spec, job.spec)) is not None:
                raise ManifestError(*frozen)
        except ManifestError as e:
            self.log.warning("spec update rejected; keeping the previous spec", error=str(e))
            return
        self.job, self.redis_url = job, url
        await self.ctx.kube.patch_config_map(job.namespace, resources.config_map_name(job.name),
                                             {resources.SPEC_KEY: job.spec_json()})
        await self._ensure_claims()
        self.next_tune_at = 0.0

    def _observe(self, now: float) -> dict[ReplicaId, ObservedReplica]:
        observed: dict[ReplicaId, ObservedReplica] = {}
        # One pod per replica, except for a moment around a takeover or an operator restart: then the one not
        # being deleted, else the newer, is the replica.
        for pod in sorted((o for o in self.pods.get(self.key, ()) if isinstance(o, ObservedReplica)),
                          key=lambda o: (not o.deleting, o.started_at or 0.0)):
            observed[pod.id] = pod
        self.requested_deletes = {
            rid: uid for rid, uid in self.requested_deletes.items()
            if (obs := observed.get(rid)) is not None and obs.instance == uid
        }
        return with_heartbeats(mark_deleting(observed, self.requested_deletes), self.heartbeats, now)

    # --- applying actions -------------------------------------------------------------------------
    async def _apply(self, decision: Decision, observed: Mapping[ReplicaId, ObservedReplica]) -> JobMemory:
        memory = decision.memory
        records = [a for a in decision.actions if isinstance(a, RecordFailure)]
        hung = {r.failure.id for r in records if r.failure.reason in HUNG_REASONS}
        for action in decision.actions:
            if isinstance(action, DeleteReplica):
                await self._delete(action, observed.get(action.id), hung)
        for record in records:
            await self._record_failure(record, observed.get(record.failure.id))
        rollbacks = trainer_rollbacks(decision.actions, RecoveryMode(self.effective_mode()), self.rollback)
        if rollbacks:
            def roll_back(c: Coordination) -> None:
                for rank, p in rollbacks.items():
                    c.set_trainer_cursor(rank, p.cursor, p.samples)

            await self._redis(roll_back)
        await self._redis(lambda c: publish_resumed_generation(c, decision.actions))
        for action in decision.actions:
            if isinstance(action, CreateReplica):
                memory = await self._create(action, memory)
        return memory

    async def _delete(self, action: DeleteReplica, obs: ObservedReplica | None, hung: set[ReplicaId]) -> None:
        name = obs.handle if obs is not None and obs.handle else resources.pod_name(self.job.name, action.id)
        finished = obs is not None and obs.phase in (ReplicaPhase.FAILED, ReplicaPhase.SUCCEEDED)
        grace = 0 if finished or action.id in hung else None  # nothing to shut down gracefully
        uid = obs.instance if obs is not None else None
        try:
            await self.ctx.kube.delete_pod(self.job.namespace, name, uid=uid, grace_period_s=grace)
        except KubeError as e:
            self.log.error("pod delete failed", pod=name, error=str(e))
            return  # the core asks again while the pod is still there
        if uid:
            self.requested_deletes[action.id] = uid
        self.log.info("pod deleted", pod=name, reason=action.reason, recreate=action.recreate)

    async def _create(self, action: CreateReplica, memory: JobMemory) -> JobMemory:
        name = resources.pod_name(self.job.name, action.id)
        attempts, retry_at = self.create_retry_at.get(action.id, (0, 0.0))
        if self.clock() < retry_at:
            return _forget_create(memory, action)  # backing off: the core asks again next step
        if action.reason is CreateReason.REPLACEMENT and self.job.spec.recovery.standby.count(action.id.role):
            standby = await self._take_over(action)
            if standby is not None:
                self._replaced(action, memory)
                self.log.info("standby took over", pod=standby.name, replica=action.id.name,
                              generation=action.generation)
                return memory
        manifest = resources.render_pod(self.job, action.id, owner=self.owner, redis_url=self.redis_url,
                                        generation=action.generation, redis_secret=self.redis_secret)
        manifest = kueue.with_node_labels(manifest, self.flavor_labels.get(action.id.role.value, {}))
        try:
            created = await self.ctx.kube.create_pod(self.job.namespace, manifest)
        except KubeError as e:
            delay = create_backoff_s(attempts + 1)
            self.create_retry_at[action.id] = (attempts + 1, self.clock() + delay)
            self.log.error("pod create failed; retrying", pod=name, error=str(e), retry_in_s=delay)
            # A refusal shows at once; anything else (a 5xx, the network) once it happened three times running.
            shown = e.code in REFUSALS or attempts + 1 >= 3
            error = create_error(e, self.clock(), memory.create_errors.get(action.id.name)) if shown else None
            return _forget_create(memory, action, error)
        self.create_retry_at.pop(action.id, None)
        if action.id.name in memory.create_errors:
            memory = dataclasses.replace(memory, create_errors={
                k: v for k, v in memory.create_errors.items() if k != action.id.name})
        if action.reason is CreateReason.REPLACEMENT:
            self._replaced(action, memory)
        self.log.info("pod created" if created else "pod exists", pod=name, reason=action.reason,
                      generation=action.generation)
        return memory

    def _replaced(self, action: CreateReplica, memory: JobMemory) -> None:
        failed_at = self.failed_at.get(action.generation)
        if failed_at is not None:
            self.ctx.metrics.failure_to_replacement.observe(max(0.0, self.clock() - failed_at))
            self.awaiting_ready[action.id] = failed_at
        self.ctx.metrics.restarts.labels(action.id.role.value).inc()

    # --- warm standbys ----------------------------------------------------------------------------
    def _standby_views(self) -> list[StandbyView]:
        seen = {v.name: v for v in self.pods.get(self.key, ()) if isinstance(v, StandbyView)}
        # Created but not in the watch yet: count them, or the next step would create them again.
        now = self.clock()
        self.standby_created = {name: v for name, v in self.standby_created.items()
                                if name not in seen and now - (v.created_at or now) < CREATE_GRACE_S}
        self.standby_deleted &= set(seen)
        self.standby_taken &= {v.instance for v in seen.values()}
        views = [*(v for v in seen.values() if v.instance not in self.standby_taken), *self.standby_created.values()]
        return [dataclasses.replace(v, deleting=True) if v.name in self.standby_deleted else v for v in views]

    async def _take_over(self, action: CreateReplica) -> StandbyView | None:
        """Hand the failed rank to a fresh standby: its assignment through Redis first (it starts becoming the
        replica at once), then its labels (the replica's pod from now on). Should the operator die between the
        two, the standby runs the rank unlabelled; the core's create then times out and starts a cold pod, whose
        registration fences the standby (it exits, and its pod is retired as a failed standby)."""
        role, now = action.id.role, self.clock()
        offers = await self._redis(read_standby_offers)
        if offers is None:
            return None
        self.standby_offers = offers
        views = self._standby_views()
        timeout = self.job.spec.recovery.heartbeat_timeout_seconds
        while (standby := pick_standby(role, views, offers, now, timeout)) is not None:
            views.remove(standby)
            assignment = {"rank": action.id.rank, "generation": action.generation, "assigned_at": now}
            if await self._redis(functools.partial(_assign, instance=standby.instance, assignment=assignment)) is None:
                return None  # Redis went away: a cold replacement
            patch = resources.assignment_patch(standby.instance, action.id.rank, action.generation, now)
            try:
                if await self.ctx.kube.patch_pod(self.job.namespace, standby.name, patch):
                    self.standby_taken.add(standby.instance)
                    return standby
            except KubeError as e:
                self.log.error("standby relabel failed", pod=standby.name, error=str(e))
            # Not that pod any more (deleted, taken): retire it, lest it run the rank it was just assigned.
            await self._delete_standby(standby)
        return None

    async def _keep_standbys(self, now: float, *, active: bool) -> list[StandbyView]:
        """``recovery.standby`` live standbys per role while the job runs; none once it is finished, suspended or
        held. Returns the standbys that remain."""
        views = self._standby_views()
        if not views and not any(self.job.spec.recovery.standby.count(r) for r in self.job.spec.roles()):
            return []
        plan = plan_standbys(self.job.spec, views, active=active, offers=self.standby_offers, now=now)
        for view in views:
            if view.name in plan.delete:
                await self._delete_standby(view)
        for role, count in plan.create.items():
            for _ in range(count):
                await self._create_standby(role, now)
        return [v for v in self._standby_views() if not v.deleting]

    async def _create_standby(self, role: Role, now: float) -> None:
        suffix = secrets.token_hex(3)
        manifest = resources.render_standby_pod(self.job, role, suffix, owner=self.owner, redis_url=self.redis_url,
                                                redis_secret=self.redis_secret)
        manifest = kueue.with_node_labels(manifest, self.flavor_labels.get(role.value, {}))
        name = manifest["metadata"]["name"]
        try:
            await self.ctx.kube.create_pod(self.job.namespace, manifest)
        except KubeError as e:
            self.log.error("standby create failed", pod=name, error=str(e))
            return
        self.standby_created[name] = StandbyView(name=name, role=role, instance="", phase=ReplicaPhase.PENDING,
                                                 created_at=now)
        self.log.info("standby created", pod=name, role=role.value)

    async def _delete_standby(self, view: StandbyView) -> None:
        self.standby_created.pop(view.name, None)
        try:
            await self.ctx.kube.delete_pod(self.job.namespace, view.name, uid=view.instance or None, grace_period_s=0)
        except KubeError as e:
            self.log.error("standby delete failed", pod=view.name, error=str(e))
            return
        self.standby_deleted.add(view.name)
        self.log.info("standby deleted", pod=view.name, phase=view.phase.value)

    async def _record_failure(self, record: RecordFailure, obs: ObservedReplica | None) -> None:
        f = record.failure
        # The failed pod's own name: a standby that had taken the rank over keeps its name.
        pod = obs.handle if obs is not None and obs.handle and obs.instance == f.instance else resources.pod_name(
            self.job.name, f.id)
        self.failed_at.setdefault(record.generation, f.time)
        spec = self.job.spec

        def write(c: Coordination) -> RollbackPoint | None:
            return write_failure(c, spec, record, pod)[1]

        point = await self._redis(write)
        if point is not None:
            self.rollback = point
        code = f" (exit code {f.exit_code})" if f.exit_code is not None else ""
        kopf.event(self.body, type="Warning", reason="ReplicaFailed",  # type: ignore[arg-type]
                   message=f"pod {pod} failed: {f.reason}{code}; {record.mode} recovery, "
                           f"generation {record.generation}")
        self.ctx.metrics.failures.labels(f.id.role.value, f.reason).inc()
        self.log.warning("replica failed", pod=pod, reason=f.reason, exit_code=f.exit_code,
                         mode=record.mode, generation=record.generation)

    async def _force_delete_stuck_terminations(self, observed: Mapping[ReplicaId, ObservedReplica],
                                               now: float) -> None:
        """A pod stuck Terminating (its node unreachable) would block its replica forever: force-delete it (grace
        0), with a Warning event."""
        for obs in stuck_terminating(observed, now, self.ctx.config.force_delete_margin_s):
            if self.forced.get(obs.id) == obs.instance:
                continue
            name = obs.handle or resources.pod_name(self.job.name, obs.id)
            try:
                await self.ctx.kube.delete_pod(self.job.namespace, name, uid=obs.instance, grace_period_s=0)
            except KubeError as e:
                self.log.error("force delete failed", pod=name, error=str(e))
                continue
            self.forced[obs.id] = obs.instance
            overdue = now - (obs.deleting_until or now)
            message = (f"pod {name} was still terminating {overdue:.0f}s after its grace period ended (node "
                       "unreachable?): force-deleted so that its replacement can start")
            kopf.event(self.body, type="Warning", reason="ForceDeleted", message=message)  # type: ignore[arg-type]
            self.log.warning("pod force-deleted", pod=name, overdue_s=round(overdue, 1))

    def _report_stuck(self, stuck: list[Stuck], standbys: list[StandbyView]) -> None:
        """A Warning Event and a metric the first time a replica, or a standby pod, is stuck for a reason (the
        Stuck condition carries the replicas' current list). Nothing waits on a standby, so for one this is the
        only word that the standbys asked for are not there: its role's failed ranks start cold meanwhile."""
        found: dict[tuple[str, str], tuple[str, str, str]] = {}  # (pod, reason) -> (event reason, message, role)
        for s in stuck:
            pod = resources.pod_name(self.job.name, s.id)
            found[(pod, s.reason)] = (s.reason, f"pod {pod} cannot start: {s.reason}"
                                      + (f": {s.message}" if s.message else ""), s.id.role.value)
        for v in standbys:
            reason = str(v.waiting_reason)
            found[(v.name, reason)] = (f"Standby{reason}", f"standby pod {v.name} cannot start: {reason}"
                                       + (f": {v.waiting_message}" if v.waiting_message else "")
                                       + f"; until it can, a failed {v.role.value} starts cold (recovery.standby)",
                                       f"{v.role.value}-standby")
        for (pod, reason), (event_reason, message, role) in found.items():
            if (pod, reason) in self.reported_stuck:
                continue
            kopf.event(self.body, type="Warning", reason=event_reason, message=message)  # type: ignore[arg-type]
            self.ctx.metrics.stuck.labels(role, reason).inc()
            self.log.warning("pod stuck", pod=pod, reason=reason, message=message)
        self.reported_stuck = set(found)

    def _track_replacements(self, observed: Mapping[ReplicaId, ObservedReplica]) -> None:
        """A replacement that runs ends its recovery: record o_res (failure -> running)."""
        for rid, failed_at in list(self.awaiting_ready.items()):
            obs = observed.get(rid)
            if obs is not None and obs.phase is ReplicaPhase.RUNNING and not obs.deleting:
                del self.awaiting_ready[rid]
                seconds = max(0.0, self.clock() - failed_at)
                self.ctx.executor.submit(_quietly, self.coord.record_cost, "o_res", seconds)

    # --- Kueue ------------------------------------------------------------------------------------
    async def _follow_admission(self) -> None:
        """A queued job (``kueue.x-k8s.io/queue-name``): make sure its Workload exists and read Kueue's verdict;
        a failed read keeps the last one."""
        queue = kueue.queue_name(self.job)
        if queue is None:
            self.admission = None
            return
        name = kueue.workload_name(self.job.name)
        try:
            workload = await self.ctx.kube.get_workload(self.job.namespace, name)
            if workload is None and not self.memory.phase.finished:
                spec_roles = self.job.spec.roles()
                pods = {role: resources.render_pod(self.job, ReplicaId(role, 0), owner=self.owner,
                                                   redis_url=self.redis_url, generation=0,
                                                   redis_secret=self.redis_secret) for role in spec_roles}
                await self.ctx.kube.create_workload(self.job.namespace, kueue.render_workload(
                    self.job, self.owner.reference(), pods))
                self.log.info("workload created", workload=name, queue=queue)
        except KubeError as e:
            if self.admission is None or not self.admission.admitted:
                self.admission = kueue.Admission(False, {}, f"waiting for Kueue admission (LocalQueue {queue}): "
                                                 f"the Workload cannot be read or created ({e}; is Kueue installed?)")
            self.log.warning("kueue workload unavailable", error=str(e))
            return
        admission = kueue.admission_of(workload, queue)
        if admission.admitted and (self.admission is None or admission.flavors != self.admission.flavors):
            self.flavor_labels = {}
            for pod_set, flavors in admission.flavors.items():
                labels: dict[str, str] = {}
                for flavor in flavors:
                    try:
                        found = await self.ctx.kube.get_resource_flavor(flavor)
                    except KubeError as e:  # e.g. no RBAC for the cluster-scoped flavors: run without its labels
                        self.log.warning("resource flavor unreadable", flavor=flavor, error=str(e))
                        found = None
                    labels.update(((found or {}).get("spec") or {}).get("nodeLabels") or {})
                self.flavor_labels[pod_set] = labels
        if self.admission is None or admission.admitted != self.admission.admitted:
            self.log.info("kueue admission", admitted=admission.admitted, reason=admission.reason)
            self.poke()
        self.admission = admission
        self.workload = workload

    async def _finish_workload(self, now: float) -> None:
        """``Finished=True`` on the Workload once the job is done: Kueue releases its quota."""
        if self.admission is None or self.workload is None or self.workload_finished:
            return
        conditions = (self.workload.get("status") or {}).get("conditions") or []
        failed = next((c for c in self.memory.conditions if c.type == "Failed" and c.status == "True"), None)
        message = failed.message if failed is not None else "all trainers finished"
        await self.ctx.kube.patch_workload_status(self.job.namespace, kueue.workload_name(self.job.name), {
            "conditions": kueue.finished_conditions(conditions, self.memory.phase.value, message, iso(now))})
        self.workload_finished = True

    # --- Redis ------------------------------------------------------------------------------------
    async def _redis(self, fn: Callable[[Coordination], T]) -> T | None:
        try:
            return await self.ctx.in_thread(fn, self.coord)
        except (redis.RedisError, OSError) as e:
            self.log.warning("redis unavailable", error=str(e))
            return None

    async def _refresh(self, now: float) -> None:
        self.next_refresh_at = now + self.ctx.config.tick_s * 0.9
        await self._grant_redis_user()
        await self._follow_admission()
        spec = self.job.spec
        self.heartbeats = await self._redis(lambda c: read_heartbeats(c, spec, now))
        self.checkpoint_failures = await self._redis(lambda c: c.checkpoint_health())
        if any(spec.recovery.standby.count(r) for r in spec.roles()):
            self.standby_offers = await self._redis(read_standby_offers)
        # Silence counts from the first read after a gap (the coordinator's start, or Redis coming back).
        if self.heartbeats is None:
            self.heard_since = None
        elif self.heard_since is None:
            self.heard_since = now
        if now >= self.next_progress_at:
            self.next_progress_at = now + self.ctx.config.progress_every_s
            self.view = await self._redis(lambda c: read_progress(c, spec)) or self.view

    def _start_tuning(self, now: float) -> None:
        """Re-plan in the background: a failure's replacement must not wait for Redis reads."""
        if self._tuning is not None and not self._tuning.done():
            return
        self.next_tune_at = now + self.ctx.config.tune_every_s
        self._tuning = asyncio.get_running_loop().create_task(self._tune(now))

    async def _tune(self, now: float) -> None:
        spec, started, view = self.job.spec, self.memory.start_time or now, self.view
        try:
            sps = view.progress.samples_per_second if view is not None else None
            plan = await self._redis(lambda c: plan_interval(c, spec, started, now, sps))
        except ValueError as e:  # inputs the tuning module rejects: keep the last plan
            self.log.warning("interval tuning failed", error=str(e))
            return
        if plan is not None:
            previous = self.plan
            self.plan = plan
            if previous is None or (plan.interval_s, plan.mode_chosen) != (previous.interval_s, previous.mode_chosen):
                self.log.info("interval planned", interval_s=round(plan.interval_s, 3), mode=plan.mode_chosen,
                              reason=plan.reason)
                self.poke()  # report it

    # --- status -----------------------------------------------------------------------------------
    async def _report(self, decision: Decision, standbys: Mapping[Role, tuple[int, int, int]]) -> None:
        view = self.view
        spec_mode = self.job.spec.recovery.mode
        facts = RecoveryFacts(
            mode=self.plan.mode_chosen if spec_mode is RecoveryMode.AUTO and self.plan else spec_mode.value,
            interval_s=round(self.plan.interval_s, 3) if self.plan is not None else None,
            pls=view.pls if view is not None else None,
            last_checkpoint=view.last_checkpoint if view is not None else None,
            interval_reason=self.plan.reason if self.plan is not None else None,
            save_cost=save_cost_status(self.plan.measurements) if self.plan is not None else None,
        )
        target = self.job.spec.data.planned_samples
        progress = view.progress if view is not None else ProgressStatus(target_samples=target)
        status = render_status(decision, progress=progress, recovery=facts,
                               observed_generation=self.body["metadata"].get("generation"),
                               standbys={role.value: c for role, c in standbys.items()})
        patch = merge_patch(self.written, status, owned=OWNED_KEYS)
        if not patch:
            return
        before = _phase(self.written.get("phase"))
        try:
            await self.ctx.kube.patch_job_status(*self.key, patch)
        except NotFound:
            return  # deleted meanwhile
        self.written = status
        self.ctx.metrics.set_phase(self.key, decision.phase)
        event = phase_event(before, decision.phase, decision)
        if event is not None:
            kind, reason, message = event
            kopf.event(self.body, type=kind, reason=reason, message=message)  # type: ignore[arg-type]


def _phase(value: Any) -> Phase | None:
    try:
        return Phase(value)
    except ValueError:
        return None


def _forget_create(memory: JobMemory, action: CreateReplica,
                   error: tuple[float, str, str] | None = None) -> JobMemory:
    """The create request failed (``error``: since when, why) or waits out its backoff: make the core ask
    to create the replica again on the next step."""
    name = action.id.name
    replacing = memory.replacing | {name} if action.reason == "Replacement" else memory.replacing
    errors = {**memory.create_errors, name: error} if error is not None else memory.create_errors
    return dataclasses.replace(
        memory, created_at={k: v for k, v in memory.created_at.items() if k != name}, replacing=replacing,
        create_errors=errors)


CREATE_BACKOFF_S = (1.0, 60.0)  # first retry, longest wait
REFUSALS = frozenset({400, 403, 422})  # the API server will refuse the same pod again: not transient


def create_backoff_s(attempts: int) -> float:
    """Wait after the ``attempts``-th refused create of a replica: 1 s doubling to a minute (a quota or an
    admission webhook that refuses now refuses a moment later too; the API server need not hear it)."""
    first, longest = CREATE_BACKOFF_S
    return min(longest, first * 2 ** max(0, attempts - 1))


def create_error(error: KubeError, now: float, before: tuple[float, str, str] | None) -> tuple[float, str, str]:
    """(since, reason, message) of a refused create: 403 is an admission or quota refusal, 422 an invalid pod."""
    reason = {403: "Forbidden", 422: "Invalid", 409: "AlreadyExists"}.get(error.code or 0, "CreateFailed")
    return (before[0] if before is not None else now, reason, str(error)[:300])


def _quietly(fn: Callable[..., Any], *args: Any) -> None:
    with contextlib.suppress(redis.RedisError, OSError):
        fn(*args)
