"""The discrete-event simulation of one TrainingJob in simulated time, driven by the product's own core.

A heap of events (node failures, replacements becoming ready, checkpoint saves) advances a simulated
clock. The simulator is a third shell beside the local supervisor and the kopf operator: it observes the
simulated replicas as :class:`~trainingjob_operator.reconcile.ObservedReplica`, calls
:func:`~trainingjob_operator.reconcile.reconcile` with the effective mode, and applies the actions it
returns (``RecordFailure``, ``DeleteReplica``, ``CreateReplica``) to the simulated cluster. After every
failure and every save it re-plans with :func:`~trainingjob_operator.core.recovery.tuning_inputs` and
:func:`~trainingjob_operator.tuning.plan`, and the job saves at the interval (and, under ``auto``,
recovers in the mode) the plan says. Lost samples are counted with :mod:`~trainingjob_operator.core.accounting`'s
spans and union, as the replacements of the product record them.

The model of time (``docs/simulate.md`` says why each rule is what it is):

- Progress ``P`` is failure-free training seconds; samples are ``P`` times the job's throughput. The job
  trains at full rate when every replica runs; under partial recovery a missing embedding server stalls
  every trainer (each batch touches every shard), a missing trainer removes its share of throughput, a
  missing sync server costs nothing (ShadowSync trains on while it is replaced). Under full recovery the
  job trains only when every replica runs.
- A replacement is ready ``o_res`` after it is created (``o_res + o_load`` for an embedding server, which
  loads its shard); detection is part of ``o_res``. A full recovery deletes and recreates every replica,
  so the job waits ``o_res + o_load`` and rolls back to the last complete checkpoint round: the progress
  since that round is computed again.
- Saves follow the product: under partial recovery each shard saves one interval after its last save
  began (a replacement at once if that is past), full or MFU/SSU per ``full_every`` (the first save of a
  new process is full), and only while the job trains (a shard with no new update does not save). A save
  costs the job its stall times the share of shards saving (all shards together: ``o_save``), as the
  summary's ``checkpoint.overhead_fraction`` counts it. Under full recovery checkpoints are rounds: every
  shard and the dense copy, one interval apart from the last round or restart, each stalling the job
  ``o_save``; a round is complete ``o_save`` after it began.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import time
from collections.abc import Sequence
from typing import Any

from trainingjob_operator.api.spec import CheckpointStrategy, Role
from trainingjob_operator.api.status import Phase
from trainingjob_operator.core import accounting
from trainingjob_operator.core.recovery import resolve_mode, tuning_inputs
from trainingjob_operator.reconcile import (
    CreateReason,
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
from trainingjob_operator.simulate.config import SimConfig
from trainingjob_operator.simulate.failures import NodeLifetimes, replay
from trainingjob_operator.tuning import (
    IntervalDecision,
    SaveSchedule,
    TuningInputs,
    expected_overhead_full,
    expected_overhead_partial,
    expected_pls,
    plan,
)

_EPS = 1e-9
FAILURE_REASON = "NodeFailure"

# Event kinds; at equal times they run in this order (then in the order they were scheduled).
_FAIL, _LOGFAIL, _READY, _SAVE, _ROUND, _WAKE = range(6)


@dataclasses.dataclass
class RunResult:
    """What one simulated run measured. Times in seconds, overheads as fractions of ``useful_s``."""

    label: str
    seed: int
    status: str  # Succeeded, Failed (the core failed the job), TimedOut (wall cap reached)
    fixed_interval_s: float | None
    useful_s: float
    wall_s: float
    overhead: float
    save_s: float
    lost_s: float  # computation redone after full recoveries
    res_s: float  # waiting for replacements, less their loads
    load_s: float
    degraded_s: float  # throughput lost to missing trainers (partial recovery)
    checkpoint_overhead: float  # (save + load + lost) / useful: CPR's checkpoint-related overhead
    pls: float
    lost_samples: float
    samples: int
    failures: int
    failures_by_role: dict[str, int]
    replacements: int
    full_recoveries: int
    save_events: int
    shard_saves: dict[str, int]
    rounds: int
    interval_final_s: float
    interval_mean_s: float  # time-weighted over the run
    mode_final: str
    full_share: float  # share of wall time the effective mode was full
    expected_overhead: float | None  # closed form at the mode's first interval, true MTBF
    expected_pls: float | None
    schedule_o_save_s: float | None  # SaveSchedule's mean save cost (partial)
    schedule_loss_factor: float
    mean_save_cost_s: float | None  # simulated mean cost of one shard's save
    phase_final: str
    events: int
    reconcile_calls: int
    reconcile_s: float  # CPU seconds (process time), as are observe_s, plan_s and cpu_s
    observe_s: float
    plan_calls: int
    plan_s: float
    cpu_s: float
    timeline: dict[str, list[Any]] = dataclasses.field(default_factory=dict)

    def to_json(self, timeline: bool = False) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if not timeline:
            data.pop("timeline")
        return data


@dataclasses.dataclass
class _Shard:
    key: float  # start of its last save (its group in the save schedule); -inf: never saved
    saved_at: float = -math.inf  # start of its last complete save
    last_samples: int | None = None  # progress marker of its last complete save
    base_samples: int | None = None  # ... of its last complete full save
    partials: int | None = None  # partial saves since the last full one; None: the next is full
    pending: tuple[float, int, str] | None = None  # (complete at, samples, kind) of a save in flight
    spans: list[accounting.LostSpan] = dataclasses.field(default_factory=list)  # every span, for the result
    live: list[accounting.LostSpan] = dataclasses.field(default_factory=list)  # spans a new one may overlap
    retired: float = 0.0  # union of the spans no later span can overlap
    union: float = 0.0  # retired + union(live)


class Simulation:
    """One run; ``Simulation(config).run()`` returns a :class:`RunResult`."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.spec = spec = config.spec
        self.ids: list[ReplicaId] = desired_replicas(spec)
        self.index = {rid: i for i, rid in enumerate(self.ids)}
        self.n_all = len(self.ids)
        self.n_emb = spec.replicas.count(Role.EMBEDDING_SERVER)
        self.n_tr = spec.replicas.count(Role.TRAINER)
        self.useful = config.useful_s
        self.sps = config.rate
        self.wall_cap = config.useful_s * config.max_wall_factor
        self.strategy = spec.recovery.checkpoint.strategy.value
        self.full_every = spec.recovery.checkpoint.full_every
        self.hb_refresh = spec.recovery.heartbeat_timeout_seconds / 3.0

        costs = config.costs
        fraction = {"mfu": spec.recovery.checkpoint.hot_fraction, "ssu": spec.recovery.checkpoint.sample_fraction}
        partial_cost = costs.o_save_partial_s
        if partial_cost is None:
            partial_cost = costs.o_save_s * fraction.get(self.strategy, 1.0)
        # What the product's coordinator would have measured (core.recovery.measurements reads these lists).
        self.cost_lists: dict[str, list[float]] = {"stall_full": [costs.o_save_s], "o_load": [costs.o_load_s],
                                                   "o_res": [costs.o_res_s]}
        self.checkpoint_log: list[dict[str, Any]] = []
        if self.strategy != CheckpointStrategy.FULL.value:
            self.cost_lists["stall_partial"] = [partial_cost]
            if costs.uncovered is not None:
                self.checkpoint_log.append({"kind": self.strategy, "uncovered": costs.uncovered})

        self.lifetimes = NodeLifetimes(config.failures, config.seed)
        self.heap: list[tuple[float, int, int, Any, Any]] = []
        self.wakes: set[float] = set()  # times a core pass is already scheduled for a held-back replacement
        self.seq = 0

        # replicas
        self.phase: list[ReplicaPhase | None] = [None] * self.n_all
        self.instance = [0] * self.n_all
        self.created = [0.0] * self.n_all
        self.machine = [0] * self.n_all  # serial of the node the slot runs on; 0: none yet
        self.machine_alive = [False] * self.n_all
        self.machines = 0
        self.up = {Role.EMBEDDING_SERVER: 0, Role.TRAINER: 0, Role.SYNC_SERVER: 0}
        self.obs: dict[ReplicaId, ObservedReplica] = {}
        self.hb_at = -math.inf
        self.memory = JobMemory()

        # progress and its accounting
        self.t_last = 0.0
        self.progress = 0.0
        self.stall_left = 0.0
        self.rate = 0.0
        self.save_s = self.lost_s = self.down_s = self.load_s = self.degraded_s = 0.0
        self.down_since: float | None = 0.0
        self.last_emb_replacement = -math.inf
        self.finished = False
        self.status = "Running"

        # checkpoints
        self.shards = [_Shard(key=-math.inf) for _ in range(self.n_emb)]
        self.groups: dict[float, set[int]] = {-math.inf: set(range(self.n_emb))}
        self.group_token: dict[float, int] = {}
        self.deferred: set[float] = set()
        self.round_anchor = 0.0
        self.round_token = 0
        self.pending_round: tuple[float, float, int, float] | None = None  # complete at, progress, samples, start
        self.last_round: tuple[float, int, float] | None = None  # progress, samples, start
        self.save_events = self.rounds = 0
        self.shard_saves = {"full": 0, "partial": 0}
        self.shard_save_cost = 0.0
        self.rolled_back = False
        self.lost_total = 0.0  # sum over shards of their span unions (samples, before / N_emb)

        # failures, tuning
        self.failure_log: list[dict[str, Any]] = []
        self.failures_by_role: dict[str, int] = {}
        self.replacements = 0
        self.full_recoveries = 0
        self.mode = "partial"
        self.interval = spec.recovery.checkpoint.initial_interval_seconds
        self.decision: IntervalDecision | None = None
        self.inputs: TuningInputs | None = None
        self.first_decision: IntervalDecision | None = None
        self.last_plan_t = 0.0
        self.static_plan = (spec.recovery.checkpoint.interval_seconds is not None
                            and spec.recovery.mode.value != "auto")
        self.interval_area = 0.0
        self.full_time = 0.0
        self.uncovered = 0.0
        self.schedule: SaveSchedule | None = None

        # profile and timeline
        self.events = self.reconcile_calls = self.plan_calls = 0
        self.reconcile_s = self.observe_s = self.plan_s = 0.0
        self.tl_failures: list[tuple[float, str, int, str]] = []
        self.tl_intervals: list[tuple[float, float, str]] = []
        self.tl_down: list[tuple[float, float]] = []

    # -- the event heap ------------------------------------------------------------------------------------

    def _push(self, t: float, kind: int, a: Any = None, b: Any = None) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, kind, self.seq, a, b))

    def _push_group(self, key: float, t: float) -> None:
        token = self.group_token.get(key, 0) + 1
        self.group_token[key] = token
        self._push(max(t, key + self.interval), _SAVE, key, token)

    def _push_round(self, t: float) -> None:
        self.round_token += 1
        self._push(max(t, self.round_anchor + self.interval), _ROUND, self.round_token)

    # -- progress ------------------------------------------------------------------------------------------

    def _job_rate(self) -> float:
        if self.finished:
            return 0.0
        if self.mode == "full":
            return 1.0 if sum(self.up.values()) == self.n_all else 0.0
        if self.up[Role.EMBEDDING_SERVER] < self.n_emb or self.up[Role.TRAINER] == 0:
            return 0.0
        return self.up[Role.TRAINER] / self.n_tr

    def _advance(self, t: float) -> None:
        dt = t - self.t_last
        if dt <= 0.0:
            return
        self.interval_area += self.interval * dt
        if self.mode == "full":
            self.full_time += dt
        if self.rate > 0.0:
            pay = min(self.stall_left, dt)
            self.stall_left -= pay
            self.save_s += pay
            self.progress += (dt - pay) * self.rate
            self.degraded_s += (dt - pay) * (1.0 - self.rate)
        else:
            self.down_s += dt
        self.t_last = t

    def _samples(self) -> int:
        return round(self.progress * self.sps)

    def _update_rate(self, t: float) -> None:
        """After a state change: the new training rate; closes or opens a down episode."""
        rate = self._job_rate()
        if self.rate == 0.0 and rate > 0.0 and self.down_since is not None:
            if self.down_since > 0.0 or self.failure_log:
                length = t - self.down_since
                if self.last_emb_replacement >= self.down_since:
                    self.load_s += min(self.config.costs.o_load_s, length)
                if self.config.timeline:
                    self.tl_down.append((self.down_since, t))
            self.down_since = None
            self._on_training_resumed(t)
        elif self.rate > 0.0 and rate == 0.0:
            self.down_since = t
        self.rate = rate

    def _on_training_resumed(self, t: float) -> None:
        if self.mode == "full":
            self.round_anchor = t  # every trainer restarted: trainer 0 counts the interval from here
            self._push_round(t)
        for key in sorted(self.deferred):
            if key in self.groups:
                self._push_group(key, t)
        self.deferred.clear()

    # -- observing and reconciling -------------------------------------------------------------------------

    def _set_obs(self, slot: int, t: float) -> None:
        rid = self.ids[slot]
        phase = self.phase[slot]
        if phase is None:
            self.obs.pop(rid, None)
            return
        self.obs[rid] = ObservedReplica(
            rid, phase, instance=f"{rid.name}#{self.instance[slot]}",
            reason=FAILURE_REASON if phase is ReplicaPhase.FAILED else None,
            started_at=self.created[slot], heartbeat_at=t if phase is ReplicaPhase.RUNNING else None)

    def _observed(self, t: float) -> dict[ReplicaId, ObservedReplica]:
        """What a shell sees: every replica with its phase; running ones heartbeat (refreshed as a real
        heartbeat would be, every third of the timeout)."""
        if t - self.hb_at >= self.hb_refresh:
            started = time.process_time()
            for slot in range(self.n_all):
                if self.phase[slot] is ReplicaPhase.RUNNING:
                    self._set_obs(slot, t)
            self.hb_at = t
            self.observe_s += time.process_time() - started
        return self.obs

    def _reconcile(self, t: float) -> None:
        for _ in range(8):
            observed = self._observed(t)
            started = time.process_time()
            decision = reconcile(self.spec, observed, self.memory, t, self.mode)
            self.reconcile_s += time.process_time() - started
            self.reconcile_calls += 1
            self.memory = decision.memory
            # A replacement the core holds back (backoff for a replica that keeps failing) is created by a later
            # pass: wake the core then, as a shell's tick would.
            for not_before in decision.memory.not_before.values():
                if not_before > t and not_before not in self.wakes:
                    self.wakes.add(not_before)
                    self._push(not_before, _WAKE)
            if decision.memory.phase is Phase.FAILED and not self.finished:
                self._apply(decision.actions, t)
                self.status = "Failed"
                self.finished = True
                return
            if not decision.actions:
                return
            if not self._apply(decision.actions, t):
                return

    def _apply(self, actions: Sequence[object], t: float) -> bool:
        """Apply the core's actions; True when something was deleted (the core creates it next pass)."""
        failures = [a for a in actions if isinstance(a, RecordFailure)]
        for failure in failures:
            self._record_failure(failure, t)
        deleted = False
        ready: dict[float, list[tuple[int, int]]] = {}
        for action in actions:
            if isinstance(action, DeleteReplica):
                slot = self.index[action.id]
                self._set_phase(slot, None, t)
                deleted = True
            elif isinstance(action, CreateReplica):
                slot, delay = self._create(action, t)
                ready.setdefault(t + delay, []).append((slot, self.instance[slot]))
        for when in sorted(ready):
            self._push(when, _READY, tuple(ready[when]))
        if failures and not self.finished:
            self._replan(t, force=True)
        return deleted

    def _set_phase(self, slot: int, phase: ReplicaPhase | None, t: float) -> None:
        role = self.ids[slot].role
        was = self.phase[slot]
        if was is ReplicaPhase.RUNNING:
            self.up[role] -= 1
        if phase is ReplicaPhase.RUNNING:
            self.up[role] += 1
        self.phase[slot] = phase
        self._set_obs(slot, t)

    def _create(self, action: CreateReplica, t: float) -> tuple[int, float]:
        slot = self.index[action.id]
        if not self.machine_alive[slot]:
            self.machines += 1
            self.machine[slot] = self.machines
            self.machine_alive[slot] = True
            life = self.lifetimes.lifetime(action.id.role.value, action.id.rank)
            if math.isfinite(life):
                self._push(t + life, _FAIL, slot, self.machines)
        self.instance[slot] += 1
        self.created[slot] = t
        self._set_phase(slot, ReplicaPhase.PENDING, t)
        if action.reason is not CreateReason.REPLACEMENT:
            return slot, 0.0
        self.replacements += 1
        costs = self.config.costs
        if action.id.role is Role.EMBEDDING_SERVER:
            self.last_emb_replacement = t
            return slot, costs.o_res_s + costs.o_load_s
        return slot, costs.o_res_s

    # -- failures and what they lose -----------------------------------------------------------------------

    def _record_failure(self, action: RecordFailure, t: float) -> None:
        rid = action.failure.id
        self.failure_log.append({"role": rid.role.value, "rank": rid.rank, "time": t})
        self.failures_by_role[rid.role.value] = self.failures_by_role.get(rid.role.value, 0) + 1
        if self.config.timeline:
            self.tl_failures.append((t, rid.role.value, rid.rank, str(action.mode)))
        if action.mode == "full":
            self._rollback(t)
        elif rid.role is Role.EMBEDDING_SERVER:
            self._lose_shard(rid.rank, t)

    def _settle(self, shard: _Shard, index: int, t: float) -> None:
        """A save in flight: complete by ``t`` (it becomes the shard's checkpoint) or lost with the process."""
        if shard.pending is None:
            return
        done_at, samples, kind = shard.pending
        shard.pending = None
        if done_at <= t + _EPS:
            shard.saved_at = shard.key
            shard.last_samples = samples
            if kind == "full":
                shard.base_samples = samples
                shard.partials = 0
            else:
                shard.partials = (shard.partials or 0) + 1
        else:
            self._regroup(shard, index, shard.saved_at)

    def _regroup(self, shard: _Shard, index: int, key: float) -> None:
        members = self.groups.get(shard.key)
        if members is not None:
            members.discard(index)
            if not members:
                del self.groups[shard.key]
                self.group_token.pop(shard.key, None)
        shard.key = key
        self.groups.setdefault(key, set()).add(index)

    def _lose_shard(self, rank: int, t: float) -> None:
        """Partial recovery of one shard: it restores its newest complete checkpoint; the updates since
        (and, for rows MFU/SSU left out, since the last full save) are lost: core.accounting's spans."""
        shard = self.shards[rank]
        self._settle(shard, rank, t)
        spans = accounting.lost_spans(self._samples(), shard.last_samples, shard.base_samples, self.uncovered)
        if spans:
            shard.spans.extend(spans)
            # accounting.union_samples is quadratic in the spans: only those a new span can overlap are kept
            # live. Without a rollback (full recovery) since, no later span starts before this one's start.
            if not self.rolled_back:
                start = min(span.start for span in spans)
                done = [span for span in shard.live if span.end <= start]
                if done:
                    shard.retired += accounting.union_samples(done)
                    shard.live = [span for span in shard.live if span.end > start]
            shard.live.extend(spans)
            union = shard.retired + accounting.union_samples(shard.live)
            self.lost_total += union - shard.union
            shard.union = union
        shard.partials = None  # the replacement's first save is full

    def _settle_round(self, t: float) -> None:
        if self.pending_round is not None:
            done_at, progress, samples, start = self.pending_round
            if done_at <= t + _EPS:
                self.last_round = (progress, samples, start)
            self.pending_round = None

    def _rollback(self, t: float) -> None:
        """Full recovery: every replica restarts from the last complete round (none: from the start)."""
        self._settle_round(t)
        progress, samples, start = self.last_round if self.last_round is not None else (0.0, None, -math.inf)
        if self.progress > progress:
            self.lost_s += self.progress - progress
            self.progress = progress
        self.full_recoveries += 1
        self.rolled_back = True
        for index, shard in enumerate(self.shards):
            shard.pending = None
            shard.last_samples = shard.base_samples = samples
            shard.partials = 0 if samples is not None else None
            shard.saved_at = start
            if shard.key != start:
                self._regroup(shard, index, start)

    # -- saves ---------------------------------------------------------------------------------------------

    def _kind(self, shard: _Shard) -> str:
        # The product's rule (dlrm_trainer.checkpoint.selection.choose_kind): the first save of a process,
        # and every full_every-th after it, is full.
        if self.strategy == "full" or shard.partials is None or shard.partials + 1 >= self.full_every:
            return "full"
        return "partial"

    def _on_save_due(self, t: float, key: float, token: int) -> None:
        if self.group_token.get(key) != token or self.mode != "partial":
            return
        members = self.groups.get(key)
        if not members:
            return
        due = key + self.interval
        if due > t + _EPS:
            self._push_group(key, due)  # the interval grew since this was scheduled
            return
        if self.rate == 0.0:
            self.deferred.add(key)  # no update while the job stalls: saved once it trains again
            return
        running = sorted(s for s in members if self.phase[self._emb_slot(s)] is ReplicaPhase.RUNNING)
        if not running:
            return
        samples = self._samples()
        costs = self.config.costs
        stall = 0.0
        for index in running:
            shard = self.shards[index]
            self._settle(shard, index, t)
            kind = self._kind(shard)
            cost = costs.o_save_s if kind == "full" else self._partial_cost
            shard.pending = (t + cost, samples, kind)
            self._regroup(shard, index, t)
            self.shard_saves[kind] += 1
            self.shard_save_cost += cost
            stall += cost
        self.stall_left += stall / self.n_emb
        self.save_events += 1
        self._push_group(t, t)
        self._replan(t, force=False)

    def _emb_slot(self, rank: int) -> int:
        return self.index[ReplicaId(Role.EMBEDDING_SERVER, rank)]

    def _on_round_due(self, t: float, token: int) -> None:
        if token != self.round_token or self.mode != "full":
            return
        due = self.round_anchor + self.interval
        if due > t + _EPS:
            self._push_round(due)
            return
        if self.rate == 0.0:
            return  # the job is down: the restart starts the next interval
        self._settle_round(t)
        samples = self._samples()
        cost = self.config.costs.o_save_s
        self.pending_round = (t + cost, self.progress, samples, t)
        for index, shard in enumerate(self.shards):
            self._settle(shard, index, t)
            shard.pending = (t + cost, samples, "full")
            self._regroup(shard, index, t)
        self.shard_saves["full"] += self.n_emb
        self.shard_save_cost += cost * self.n_emb
        self.stall_left += cost
        self.rounds += 1
        self.save_events += 1
        self.round_anchor = t
        self._push_round(t)
        self._replan(t, force=False)

    # -- tuning --------------------------------------------------------------------------------------------

    def _replan(self, t: float, *, force: bool) -> None:
        if self.decision is not None:
            if self.static_plan:
                return  # a fixed interval and a fixed mode: the plan cannot change
            if not force and t < self.last_plan_t * (1.0 + self.config.replan_tolerance):
                return
        started = time.process_time()
        inputs = tuning_inputs(self.spec, costs=self.cost_lists, failure_log=self.failure_log, started=0.0, now=t,
                               lost_samples=self.lost_total / self.n_emb, samples=self._samples(),
                               samples_per_second=self.sps, checkpoint_log=self.checkpoint_log)
        decision = plan(inputs)
        self.plan_s += time.process_time() - started
        self.plan_calls += 1
        self.last_plan_t = t
        first = self.decision is None
        self.decision, self.inputs = decision, inputs
        if first:
            self.first_decision = decision
            schedule = inputs.save_schedule()
            k = inputs.full_every
            self.uncovered = (schedule.loss_factor - 1.0) / (k - 1) if k > 1 else 0.0
            self.schedule = schedule
        mode = resolve_mode(self.spec.recovery.mode, decision.mode_chosen).value
        old_interval, old_mode = self.interval, self.mode
        self.interval = decision.interval_s
        if not first and mode == old_mode and abs(self.interval - old_interval) <= 1e-9 * old_interval:
            return
        self.mode = mode
        if self.config.timeline and (first or mode != old_mode or abs(self.interval / old_interval - 1.0) > 0.01):
            self.tl_intervals.append((t, self.interval, mode))
        if first:
            return
        if mode != old_mode or self.interval < old_interval:
            if mode == "full":
                self._push_round(t)
            else:
                for key in sorted(self.groups):
                    self._push_group(key, t)

    @property
    def _partial_cost(self) -> float:
        return self.cost_lists.get("stall_partial", [self.config.costs.o_save_s])[0]

    # -- the run -------------------------------------------------------------------------------------------

    def _done_at(self) -> float:
        if self.rate <= 0.0:
            return math.inf
        return self.t_last + self.stall_left + (self.useful - self.progress) / self.rate

    def _finish(self, t: float) -> None:
        self._advance(t)
        self.progress = self.useful
        self.finished = True
        self.status = "Succeeded"
        # The trainers finish: the core declares the job Succeeded and stops the servers.
        for slot, rid in enumerate(self.ids):
            if rid.role is Role.TRAINER and self.phase[slot] is ReplicaPhase.RUNNING:
                self.phase[slot] = ReplicaPhase.SUCCEEDED
                self._set_obs(slot, t)
        decision = reconcile(self.spec, self._observed(t), self.memory, t, self.mode)
        self.reconcile_calls += 1
        self.memory = decision.memory

    def run(self) -> RunResult:
        wall_start = time.process_time()
        self._replan(0.0, force=True)
        if self.config.failures.log is not None:
            counts = {rid.role.value: self.spec.replicas.count(rid.role) for rid in self.ids}
            for when, role, rank in replay(self.config.failures.log, counts):
                self._push(when, _LOGFAIL, self.index[ReplicaId(Role(role), rank)])
        self._reconcile(0.0)
        if self.mode == "partial":
            self._push_group(-math.inf, 0.0)  # a shard's first save: as soon as it has taken updates
        now = 0.0
        while self.heap and not self.finished:
            t, kind, _, a, b = self.heap[0]
            done = self._done_at()
            if done <= t:
                self._finish(done)
                now = done
                break
            if t > self.wall_cap:
                break
            heapq.heappop(self.heap)
            self.events += 1
            now = t
            self._advance(t)
            if kind == _FAIL:
                if self.machine[a] != b or not self.machine_alive[a]:
                    continue
                self.machine_alive[a] = False
                self._fail(a, t)
            elif kind == _LOGFAIL:
                self.machine_alive[a] = False
                self._fail(a, t)
            elif kind == _READY:
                for slot, instance in a:
                    if self.phase[slot] is ReplicaPhase.PENDING and self.instance[slot] == instance:
                        self._set_phase(slot, ReplicaPhase.RUNNING, t)
                        self._on_ready(slot, t)
                if sum(self.up.values()) == self.n_all and self.memory.phase is not Phase.RUNNING:
                    self._reconcile(t)
            elif kind == _WAKE:
                self.wakes.discard(t)
                self._reconcile(t)
            elif kind == _SAVE:
                self._on_save_due(t, a, b)
            elif kind == _ROUND:
                self._on_round_due(t, a)
            if not self.finished:
                self._update_rate(t)
        if not self.finished:
            done = self._done_at()
            if math.isfinite(done) and done <= self.wall_cap:
                self._finish(done)
                now = done
            else:
                now = max(now, min(done, self.wall_cap))
                self._advance(now)
                self.status = "TimedOut"
        return self._result(now, time.process_time() - wall_start)

    def _fail(self, slot: int, t: float) -> None:
        if self.phase[slot] not in (ReplicaPhase.PENDING, ReplicaPhase.RUNNING):
            return  # nothing runs there: the node is simply replaced when the replica is created
        self._set_phase(slot, ReplicaPhase.FAILED, t)
        self._reconcile(t)

    def _on_ready(self, slot: int, t: float) -> None:
        rid = self.ids[slot]
        if rid.role is Role.TRAINER and rid.rank == 0 and self.mode != "full":
            self.round_anchor = t  # a new trainer 0 counts the rounds' interval from its start
        if rid.role is Role.EMBEDDING_SERVER and self.mode == "partial":
            shard = self.shards[rid.rank]
            self._push_group(shard.key, t)  # a replacement whose checkpoint is older than the interval: now

    # -- results -------------------------------------------------------------------------------------------

    def _result(self, wall: float, cpu_s: float) -> RunResult:
        useful = self.useful
        samples = round(useful * self.sps)
        spans = {i: s.spans for i, s in enumerate(self.shards) if s.spans}
        lost = accounting.lost_samples(spans, self.n_emb) if spans else 0.0
        pls = accounting.pls(spans, self.n_emb, samples) or 0.0
        res_s = max(0.0, self.down_s - self.load_s)
        first = self.first_decision
        expected = expected_pls_ = None
        schedule = self.schedule
        if first is not None:
            expected, expected_pls_ = self._closed_form(first.interval_s, first.mode_chosen)
        saves = self.shard_saves["full"] + self.shard_saves["partial"]
        return RunResult(
            label=self.config.label, seed=self.config.seed, status=self.status,
            fixed_interval_s=self.spec.recovery.checkpoint.interval_seconds, useful_s=useful, wall_s=wall,
            overhead=(wall - self.progress) / useful if self.status == "Succeeded" else (wall - self.progress) /
            max(self.progress, 1e-9),
            save_s=self.save_s, lost_s=self.lost_s, res_s=res_s, load_s=self.load_s, degraded_s=self.degraded_s,
            checkpoint_overhead=(self.save_s + self.load_s + self.lost_s) / useful,
            pls=pls, lost_samples=lost, samples=samples, failures=len(self.failure_log),
            failures_by_role=dict(sorted(self.failures_by_role.items())), replacements=self.replacements,
            full_recoveries=self.full_recoveries, save_events=self.save_events, shard_saves=dict(self.shard_saves),
            rounds=self.rounds, interval_final_s=self.interval,
            interval_mean_s=self.interval_area / wall if wall > 0 else self.interval, mode_final=self.mode,
            full_share=self.full_time / wall if wall > 0 else 0.0, expected_overhead=expected,
            expected_pls=expected_pls_, schedule_o_save_s=schedule.o_save_s if schedule else None,
            schedule_loss_factor=schedule.loss_factor if schedule else 1.0,
            mean_save_cost_s=self.shard_save_cost / saves if saves else None, phase_final=self.memory.phase.value,
            events=self.events, reconcile_calls=self.reconcile_calls, reconcile_s=self.reconcile_s,
            observe_s=self.observe_s, plan_calls=self.plan_calls, plan_s=self.plan_s, cpu_s=cpu_s,
            timeline={"failures": self.tl_failures, "intervals": self.tl_intervals, "down": self.tl_down}
            if self.config.timeline else {},
        )

    def _closed_form(self, interval: float, mode: str) -> tuple[float | None, float | None]:
        return closed_form(self.config, interval, mode, self.schedule)


def true_failure_times(config: SimConfig) -> tuple[float, float]:
    """The true (T_fail_job, T_fail_emb) in seconds of a generated failure process (inf: that never fails)."""
    spec = config.spec
    failures = config.failures
    if failures.log is not None or math.isinf(failures.mtbf_node_s):
        return math.inf, math.inf
    nodes = sum(spec.replicas.count(Role(r)) for r in failures.roles)
    n_emb = spec.replicas.count(Role.EMBEDDING_SERVER)
    t_job = failures.mtbf_node_s / nodes if nodes else math.inf
    t_emb = failures.mtbf_node_s / n_emb if Role.EMBEDDING_SERVER.value in failures.roles else math.inf
    return t_job, t_emb


def closed_form(config: SimConfig, interval: float, mode: str,
                schedule: SaveSchedule | None) -> tuple[float | None, float | None]:
    """``tuning.py``'s expected overhead and PLS of ``mode`` at ``interval`` with the true failure rates
    (the numbers the simulation is checked against); None where undefined (nothing fails, no log)."""
    t_job, t_emb = true_failure_times(config)
    if not math.isfinite(t_job):
        return None, None
    costs = config.costs
    if mode == "full":
        return expected_overhead_full(interval, costs.o_save_s, costs.o_load_s, costs.o_res_s, t_job), 0.0
    if not math.isfinite(t_emb):
        return None, None
    o_save = schedule.o_save_s if schedule is not None and schedule.o_save_s is not None else costs.o_save_s
    factor = schedule.loss_factor if schedule is not None else 1.0
    n_emb = config.spec.replicas.count(Role.EMBEDDING_SERVER)
    return (expected_overhead_partial(interval, o_save, costs.o_load_s, costs.o_res_s, t_job, t_emb),
            expected_pls(interval, n_emb, t_emb, factor))


def simulate(config: SimConfig) -> RunResult:
    return Simulation(config).run()
