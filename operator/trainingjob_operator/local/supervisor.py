"""The local supervisor: the reconcile core's shell for processes on one machine.

Each tick it observes the replica processes (exit codes, heartbeats in Redis), asks
``reconcile()`` what to do, and applies the actions by spawning or stopping processes. The same
core drives the Kubernetes operator, so what you see locally is what the cluster does.

Like the operator, the supervisor can die without taking the job with it: it keeps its state in
``run-state.json`` (``local.runstate``), the replicas keep training, and ``trainingjob run --resume``
adopts them and goes on; the run's keeper stops them if nobody resumes within the grace period.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis

from trainingjob_operator.api.exits import EXIT_DIR_ENV
from trainingjob_operator.api.spec import ROLES, RecoveryMode, Role, TrainingJob, Workload
from trainingjob_operator.api.status import Phase
from trainingjob_operator.coordination import Coordination, Member, Progress, StepProgress, waiting_for
from trainingjob_operator.core import accounting, contract
from trainingjob_operator.core.recovery import RollbackPoint, effective_mode, failure_record, trainer_rollbacks
from trainingjob_operator.failure_log import publish_resumed_generation, write_failure
from trainingjob_operator.local.injection import Injection, due
from trainingjob_operator.local.keeper import process_of, processes_of_run, ref_of, stop_processes
from trainingjob_operator.local.processes import AdoptedProcess, Incarnation, ReplicaProcess, StandbyPool, spawn
from trainingjob_operator.local.recovery import FailureRecord, RecoveryTracker
from trainingjob_operator.local.redis_server import EmbeddedRedis
from trainingjob_operator.local.runstate import (
    RUN_ID_ENV,
    STATE_FILE,
    ProcessRef,
    RunState,
    StateError,
    manifest_digest,
    read_state,
    resume_problem,
    write_state,
)
from trainingjob_operator.memory_codec import COORDINATOR_KEY, memory_from_status, memory_to_dict
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
from trainingjob_operator.tuner import lost_samples, plan_interval

log = logging.getLogger("trainingjob.local")


@dataclass
class RunOptions:
    workdir: Path | None = None  # default runs/<job>
    redis_url: str | None = None  # default: the spec's, else an embedded server
    poll_s: float = 0.2
    grace_s: float = 5.0  # SIGTERM -> SIGKILL
    extra_env: dict[str, str] = field(default_factory=dict)
    injections: list[Injection] = field(default_factory=list)  # --inject-failures, planned
    replan_every_s: float = 5.0
    warm_standby: bool = True  # keep one pre-imported process per role for replacements
    resume: bool = False  # take over the run in workdir whose supervisor died (``--resume``)
    orphan_grace_s: float = 60.0  # how long replicas keep training without a supervisor before the keeper stops them


@dataclass
class Snapshot:
    """What the progress display shows each tick."""

    phase: Phase
    elapsed_s: float
    samples: int
    target_samples: int
    samples_per_second: float | None
    loss: float | None
    failures: int
    generation: int
    running: int
    desired: int
    waiting_for: list[str] = field(default_factory=list)  # servers a trainer is blocked on
    unit: str = "samples"  # a pytorch workload counts steps (its bar) and tokens (its rate)


class LocalSupervisor:
    def __init__(self, job: TrainingJob, options: RunOptions | None = None,
                 on_tick: Callable[[Snapshot], None] | None = None) -> None:
        self.job = job
        self.spec = job.spec
        self.options = options or RunOptions()
        self.workdir = self.options.workdir or Path("runs") / job.name
        self.on_tick = on_tick
        self.processes: dict[str, ReplicaProcess] = {}
        self.history: dict[str, list[Incarnation]] = {rid.name: [] for rid in desired_replicas(self.spec)}
        self.tracker = RecoveryTracker(injections=sorted(self.options.injections, key=lambda i: i.time_s))
        self.mode = effective_mode(self.spec, None).value
        self._rollback: RollbackPoint | None = None
        self._last_replan = 0.0
        self.heard_since: float | None = None  # since when heartbeat reads succeeded without a gap
        self._progress: dict[int, Progress] = {}
        self.standby = (StandbyPool(self.workdir / "logs", {"PYTHONUNBUFFERED": "1", **self.options.extra_env})
                        if self.options.warm_standby else None)
        self.memory = JobMemory()
        self.started = time.time()
        self.coord: Coordination | None = None
        self.redis_url: str | None = None
        self.pytorch = self.spec.workload is Workload.PYTORCH
        self._steps: StepProgress | None = None
        self._last_rss = 0.0
        self.interrupted = False
        self._stop_requested = False
        self.run_id = secrets.token_hex(8)
        self.state_path = self.workdir / STATE_FILE
        self.exit_dir = self.workdir / "exits"  # exit codes of replicas a resumed supervisor adopted (api.exits)
        self.refs: dict[int, ProcessRef] = {}  # pid -> its start time, for the state file
        self.redis_ref: ProcessRef | None = None  # the embedded Redis this run started (or adopted)
        self.keeper: subprocess.Popen[bytes] | None = None
        self.keeper_ref: ProcessRef | None = None
        self.adopted: list[str] = []  # replicas a resumed run took over alive
        self.embedded: EmbeddedRedis | None = None
        self.redis_restarts = 0
        self.resumes = 0
        self._redis_retry_at = 0.0
        self._state_text = ""
        self._me = ref_of(os.getpid())  # this supervisor, as the state file names it
        self.digest = manifest_digest(job.to_wire())  # the manifest this run was started with

    # --- observing -------------------------------------------------------------------------
    def observe(self) -> dict[ReplicaId, ObservedReplica]:
        """Processes and their heartbeats. Exits need no Redis; with Redis unreachable no heartbeat can be read,
        so no replica is judged silent (as on Kubernetes), and silence counts again from the first read after."""
        assert self.coord is not None
        members = self._heartbeats()
        observed = {}
        for name, proc in self.processes.items():
            rid = ReplicaId.parse(name)
            code = proc.poll()
            heartbeat = None
            if code is None:
                member = members.get(rid) if members is not None else None
                if member is not None and member.instance == str(proc.pid):
                    heartbeat = member.heartbeat  # never a predecessor's heartbeat
                phase = ReplicaPhase.RUNNING
            else:
                phase = ReplicaPhase.SUCCEEDED if code == 0 else ReplicaPhase.FAILED
            exit_code = contract.container_exit_code(code) if code is not None else None
            started_at = proc.incarnation.started_at if members is not None else None
            observed[rid] = ObservedReplica(
                rid, phase, str(proc.pid), exit_code, None, started_at, heartbeat,
                deleting=proc.kill_deadline is not None and code is None,
            )
        return observed

    def _heartbeats(self) -> dict[ReplicaId, Member] | None:
        assert self.coord is not None
        try:
            members = {ReplicaId(role, rank): m for role in self.spec.roles()
                       for rank, m in self.coord.members(role.value, self.spec.replicas.count(role)).items()}
        except redis.RedisError as e:
            if self.heard_since is not None:
                log.warning("Redis unreachable: no heartbeats, no hung-replica verdicts until it is back (%s)", e)
            self.heard_since = None
            return None
        if self.heard_since is None:
            self.heard_since = time.time()
        return members

    def _sample_memory(self) -> None:
        now = time.monotonic()
        if now - self._last_rss < 1.0:
            return
        self._last_rss = now
        for proc in self.processes.values():
            with contextlib.suppress(psutil.Error):
                rss = psutil.Process(proc.pid).memory_info().rss / 2**20
                proc.incarnation.peak_rss_mb = max(proc.incarnation.peak_rss_mb, rss)

    # --- acting ----------------------------------------------------------------------------
    def replica_env(self, rid: ReplicaId, generation: int) -> dict[str, str]:
        """The same contract a pod gets (``core.contract``), with the values a process can have."""
        assert self.redis_url is not None
        checkpoint_dir = str(Path(self.spec.recovery.checkpoint.storage or self.workdir / "checkpoints"))
        placement = contract.process_placement(self.job, checkpoint_dir)
        env = contract.literal_env(contract.replica_env(self.job, rid, redis_url=self.redis_url,
                                                        generation=generation, placement=placement))
        return {"PYTHONUNBUFFERED": "1", **env, **self._local_env(), **self.options.extra_env}

    def _local_env(self) -> dict[str, str]:
        """What every process of this run carries beyond the pod contract: the run it belongs to (so the keeper
        finds it) and where it records its exit code (for a supervisor that adopts it)."""
        return {RUN_ID_ENV: self.run_id, EXIT_DIR_ENV: str(self.exit_dir.resolve())}

    def apply(self, actions: list, now: float) -> None:
        assert self.coord is not None
        for action in actions:
            if isinstance(action, RecordFailure):
                self.record_failure(action)
        with self._redis_best_effort("resumed generation"):
            publish_resumed_generation(self.coord, actions)
        for rank, point in trainer_rollbacks(actions, RecoveryMode(self.mode), self._rollback).items():
            with self._redis_best_effort("trainer rollback"):
                self.coord.set_trainer_cursor(rank, point.cursor, point.samples)
        for action in actions:
            if isinstance(action, CreateReplica):
                name = action.id.name
                standby = None
                if action.reason is CreateReason.REPLACEMENT and self.standby is not None and not self.pytorch:
                    standby = self.standby.take(action.id.role.value)
                proc = spawn(name, self.replica_env(action.id, action.generation),
                             self.workdir / "logs" / f"{name}.log", standby=standby,
                             module=contract.replica_command(action.id.role)[-1])
                self.processes[name] = proc
                self.history[name].append(proc.incarnation)
                with contextlib.suppress(psutil.Error):
                    self.refs[proc.pid] = ref_of(proc.pid)
                log.info("started %s pid %d (%s, generation %d)", name, proc.pid, action.reason, action.generation)
            elif isinstance(action, DeleteReplica):
                proc_ = self.processes.get(action.id.name)
                if proc_ is not None:
                    proc_.terminate(self.options.grace_s)

    def record_failure(self, action: RecordFailure) -> None:
        assert self.coord is not None
        failure, generation, mode = action.failure, action.generation, action.mode
        try:
            record, point = write_failure(self.coord, self.spec, action, replica=failure.id.name)
        except redis.RedisError as e:  # Redis away: the replacement goes ahead, its failure record is lost
            log.error("%s failed (%s) while Redis is unreachable: not in the failure log (%s)", failure.id.name,
                      failure.reason, e)
            record, point = failure_record(action, samples=0, replica=failure.id.name), None
        detected = failure.time - self.started
        injected = self.tracker.injection_for(failure.id.name, detected)
        entry = FailureRecord(
            failure.id.role.value, failure.id.rank, failure.reason, round(detected, 3), failure.exit_code, generation,
            mode, failure.instance, injected_at_s=None if injected is None else round(injected, 3),
            detected_after_s=None if injected is None else round(detected - injected, 3),
            samples_at_failure=record.samples)
        self.tracker.failures.append(entry)
        if point is not None:
            self._rollback = point
            trainers = self.spec.replicas.trainer.replicas
            entry.rolled_back_samples = max(0, record.samples - point.samples * trainers)
        log.warning("%s failed (%s); %s recovery, generation %d", failure.id.name, failure.reason, mode, generation)
        self._last_replan = 0.0  # re-plan after every failure

    def reap(self) -> None:
        """Forget processes that exited after we stopped them: the core then sees them missing."""
        for name, proc in list(self.processes.items()):
            proc.enforce_deadline()
            if proc.kill_deadline is not None and proc.poll() is not None:
                del self.processes[name]

    def stop_all(self) -> None:
        if self.standby is not None:
            self.standby.stop()
        for proc in self.processes.values():
            proc.terminate(self.options.grace_s)
        deadline = time.monotonic() + self.options.grace_s + 2
        while any(p.poll() is None for p in self.processes.values()) and time.monotonic() < deadline:
            for p in self.processes.values():
                p.enforce_deadline()
            time.sleep(0.05)
        for p in self.processes.values():
            p.kill()
            with contextlib.suppress(Exception):
                p.popen.wait(2)
            p.poll()

    # --- failure injection, recovery timings, interval tuning -------------------------------
    def inject_due(self, elapsed: float) -> None:
        for injection in due(self.tracker.injections, elapsed, len(self.tracker.injected)):
            self.tracker.injected.append((elapsed, injection))
            proc = self.processes.get(f"{injection.role}-{injection.rank}")
            if proc is None or proc.poll() is not None:
                log.warning("injection %s: replica not running", injection)
                continue
            os.kill(proc.pid, signal.SIGKILL if injection.signal == "KILL" else signal.SIGSTOP)
            log.warning("injected SIG%s into %s-%d (pid %d)", injection.signal, injection.role, injection.rank,
                        proc.pid)

    def note_recoveries(self, observed: dict[ReplicaId, ObservedReplica], elapsed: float) -> None:
        for record in self.tracker.pending():
            obs = observed.get(ReplicaId.parse(record.name))
            if obs is None or obs.instance == record.failed_instance or obs.heartbeat_at is None:
                continue
            start = record.injected_at_s if record.injected_at_s is not None else record.time_s
            record.recovered_after_s = round(elapsed - start, 3)
            assert self.coord is not None
            with self._redis_best_effort("o_res"):
                self.coord.record_cost("o_res", elapsed - record.time_s)  # failure detected -> replacement serving

    def replan(self, elapsed: float) -> None:
        assert self.coord is not None
        if time.monotonic() - self._last_replan < self.options.replan_every_s:
            return
        self._last_replan = time.monotonic()
        try:
            decision = plan_interval(self.coord, self.spec, self.started, self.started + elapsed)
        except redis.RedisError as e:  # keep the last plan; the replicas keep theirs too
            log.warning("interval not re-planned, Redis unreachable: %s", e)
            return
        self.mode = effective_mode(self.spec, decision.mode_chosen).value
        self.tracker.note_interval(elapsed, decision)

    @contextlib.contextmanager
    def _redis_best_effort(self, what: str) -> Iterator[None]:
        try:
            yield
        except redis.RedisError as e:
            log.warning("%s not written, Redis unreachable: %s", what, e)

    # --- the loop --------------------------------------------------------------------------
    def tick(self) -> None:
        now = time.time()
        elapsed = now - self.started
        self.inject_due(elapsed)
        self.reap()
        observed = self.observe()
        self.note_recoveries(observed, elapsed)
        self.replan(elapsed)
        failing = None
        if self.heard_since is not None:  # Redis answered this tick
            with contextlib.suppress(redis.RedisError):
                failing = self.coord.checkpoint_health()  # type: ignore[union-attr]
        decision = reconcile(self.spec, observed, self.memory, now, self.mode,
                             heard_since=self.heard_since if self.heard_since is not None else now,
                             checkpoint_failures=failing)
        self.memory = decision.memory
        self.apply(decision.actions, now)
        # A replica that exited on its own and is being replaced needs no grace period.
        for action in decision.actions:
            if isinstance(action, DeleteReplica) and (p := self.processes.get(action.id.name)) is not None \
                    and p.poll() is not None:
                del self.processes[action.id.name]
        self._sample_memory()
        if self.standby is not None and not self.pytorch:
            if self.memory.phase is Phase.RUNNING:
                for role in ROLES:  # only while nothing is starting: priming costs CPU
                    self.standby.prime(role.value, max(1, self.spec.recovery.standby.count(role)))
            elif self.memory.phase.finished:
                self.standby.stop()

    def snapshot(self) -> Snapshot:
        assert self.coord is not None
        if self.pytorch:
            return self._pytorch_snapshot()
        with contextlib.suppress(redis.RedisError):  # Redis away: show the last progress read
            self._progress = self.coord.all_progress(self.spec.replicas.trainer.replicas)
        progress = self._progress
        rates = [p.samples_per_second for p in progress.values() if p.samples_per_second]
        losses = [p.loss for p in progress.values() if p.loss is not None]
        return Snapshot(
            phase=self.memory.phase, elapsed_s=time.time() - self.started,
            samples=sum(p.samples for p in progress.values()), target_samples=self.spec.data.planned_samples,
            samples_per_second=sum(rates) if rates else None, loss=sum(losses) / len(losses) if losses else None,
            failures=self.memory.failures, generation=self.memory.generation,
            running=sum(1 for p in self.processes.values() if p.poll() is None),
            desired=len(desired_replicas(self.spec)), waiting_for=waiting_for(progress.values()),
        )

    def _pytorch_snapshot(self) -> Snapshot:
        assert self.coord is not None
        with contextlib.suppress(redis.RedisError):
            self._steps = self.coord.step_progress()
        steps = self._steps
        return Snapshot(
            phase=self.memory.phase, elapsed_s=time.time() - self.started, samples=steps.step if steps else 0,
            target_samples=(steps.total_steps or steps.step) if steps else 0,
            samples_per_second=steps.tokens_per_second if steps else None, loss=steps.loss if steps else None,
            failures=self.memory.failures, generation=self.memory.generation,
            running=sum(1 for p in self.processes.values() if p.poll() is None),
            desired=len(desired_replicas(self.spec)), unit="tokens")

    def run(self) -> dict[str, Any]:
        """Run the job to its end (or take over a run whose supervisor died, with ``options.resume``).
        Raises ``StateError`` before starting anything when there is nothing to resume, or the workdir's run is
        still supervised."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        previous = self._run_to_resume() if self.options.resume else None
        if previous is None:
            self._clear_abandoned_run()
        in_main = threading.current_thread() is threading.main_thread()
        # SIGTERM stops the run like Ctrl-C does (signals can only be handled on the main thread).
        previous_handler = signal.signal(signal.SIGTERM, _raise_interrupt) if in_main else None
        try:
            self.embedded = self._start_fresh() if previous is None else self._take_over(previous)
            if self.standby is not None:
                self.standby.env.update(self._local_env())
            self._save_state()
            self._ensure_keeper(previous)
            last_tick_report = 0.0
            while not (self.memory.phase.finished and not self._alive()):
                if self._stop_requested:
                    raise KeyboardInterrupt
                self._keep_redis()
                self.tick()
                self._save_state()
                if self.on_tick is not None and time.monotonic() - last_tick_report >= 0.5:
                    self.on_tick(self.snapshot())
                    last_tick_report = time.monotonic()
                time.sleep(self.options.poll_s)
            if self.on_tick is not None:
                self.on_tick(self.snapshot())
            return self.summary()
        except KeyboardInterrupt:
            self.interrupted = True
            self.stop_all()
            return self.summary()
        finally:
            self.stop_all()
            if in_main:
                signal.signal(signal.SIGTERM, previous_handler)
            if self.embedded is not None:
                self.embedded.stop()
            if (adopted := process_of(self.redis_ref)) is not None:  # one adopted from the previous supervisor
                stop_processes([adopted], self.options.grace_s)
            self._end_state()

    def _keep_redis(self) -> None:
        """An embedded Redis that died is started again from its AOF on the same port, as a cluster restarts its
        Redis pod: the replicas reconnect to the URL they have, and the job's state is back."""
        if self.redis_ref is None or time.monotonic() < self._redis_retry_at or process_of(self.redis_ref):
            return
        assert self.redis_url is not None
        port = int(self.redis_url.rsplit(":", 1)[1].split("/", 1)[0])
        self.embedded = EmbeddedRedis(self.workdir / "redis", port=port, appendonly=True)
        try:
            self.embedded.start()
        except RuntimeError as e:
            self._redis_retry_at = time.monotonic() + 2.0
            log.error("the run's Redis died and did not start again (retrying): %s", e)
            return
        self.redis_ref = ref_of(self.embedded.process.pid)  # type: ignore[union-attr]
        self.redis_restarts += 1
        log.warning("the run's Redis died: started it again from its append-only file (port %d)", port)

    # --- starting, resuming, and the state file ---------------------------------------------------
    def _start_fresh(self) -> EmbeddedRedis | None:
        shutil.rmtree(self.exit_dir, ignore_errors=True)  # an earlier run's exit records
        url = self.options.redis_url or self.spec.redis.url
        embedded = None
        if not url:
            # AOF, so a Redis that died with its supervisor comes back with the job's state on --resume.
            shutil.rmtree(self.workdir / "redis" / "appendonlydir", ignore_errors=True)  # not an older run's
            embedded = EmbeddedRedis(self.workdir / "redis", appendonly=True)
            url = embedded.start()
            self.redis_ref = ref_of(embedded.process.pid)  # type: ignore[union-attr]
        self.redis_url = url
        # Fails fast: a Redis outage must not stall the loop that watches the processes.
        self.coord = Coordination(self.redis_url, self.job.namespace, self.job.name, patient=False)
        self.coord.clear()
        self.started = time.time()
        return embedded

    def _run_to_resume(self) -> RunState:
        state = read_state(self.state_path)
        problem = resume_problem(state, self.digest, process_of(state.supervisor) is not None)
        if problem is not None:
            raise StateError(f"cannot resume {self.job.name} in {self.workdir}: {problem}")
        if memory_from_status(state.memory) is None:
            raise StateError(f"{self.state_path} holds no readable job memory")
        return state

    def _clear_abandoned_run(self) -> None:
        """A fresh start over a run whose supervisor died: that run is given up, so its processes (which would
        go on writing checkpoints into this workdir) are stopped first."""
        try:
            old = read_state(self.state_path)
        except StateError:
            return
        if old.ended is not None:
            return
        if process_of(old.supervisor) is not None:
            raise StateError(f"a supervisor (pid {old.supervisor.pid}) is already running {self.job.name} in "
                             f"{self.workdir}; stop it, or resume there once it is gone")
        left = {p.pid: p for ref in [*old.processes.values(), old.redis] if (p := process_of(ref)) is not None}
        left.update({p.pid: p for p in processes_of_run(old.run_id)})
        if left:
            log.warning("stopping %d processes of the earlier run in %s, which was not resumed", len(left),
                        self.workdir)
            stop_processes(left.values(), self.options.grace_s)

    def _take_over(self, state: RunState) -> EmbeddedRedis | None:
        """Become the supervisor of a run whose supervisor died: its memory, its Redis, its processes."""
        self.run_id = state.run_id
        self.started = state.started
        self.mode = state.mode
        self.resumes = state.resumes + 1
        self.redis_restarts = state.redis_restarts
        self.memory = memory_from_status(state.memory) or JobMemory()
        for name, incarnations in state.history.items():
            self.history[name] = [Incarnation(**i) for i in incarnations]
        self.tracker.failures = [FailureRecord(**f) for f in state.failures]
        self.tracker.injected = [(i["at_s"], Injection(i["time_s"], i["role"], i["rank"], i["signal"]))
                                 for i in state.injected]
        self.redis_url = state.redis_url
        self.redis_ref = state.redis
        self._save_state()  # claim the run first: the keeper now watches this supervisor
        self._keep_redis()  # our embedded Redis died too: from its AOF
        self.coord = Coordination(self.redis_url, self.job.namespace, self.job.name, patient=False)
        for name, ref in state.processes.items():
            history = self.history.setdefault(name, [])
            incarnation = next((i for i in reversed(history) if i.pid == ref.pid), None)
            if incarnation is None:
                incarnation = Incarnation(ref.pid, ref.started_at)
                history.append(incarnation)
            proc = ReplicaProcess(name, AdoptedProcess(ref.pid, ref.started_at, self.exit_dir), incarnation,
                                  log_path=self.workdir / "logs" / f"{name}.log")
            self.processes[name] = proc
            self.refs[ref.pid] = ref
            if proc.poll() is None:
                self.adopted.append(name)
                if name in self.memory.replacing:  # its predecessor had asked it to stop: ask again
                    proc.terminate(self.options.grace_s)
            # One that exited meanwhile is observed with its recorded exit code (or as killed) and handled as
            # any exit is: a finished trainer succeeded, a dead replica is replaced.
        log.warning("resumed %s: adopted %d running replicas (%s), %d gone", self.job.name, len(self.adopted),
                    ", ".join(self.adopted) or "none", len(state.processes) - len(self.adopted))
        return self.embedded

    def _ensure_keeper(self, previous: RunState | None) -> None:
        if previous is not None and process_of(previous.keeper) is not None:
            self.keeper_ref = previous.keeper  # it reads the state file: it watches this supervisor now
            return
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        with (self.workdir / "logs" / "keeper.log").open("ab") as out:
            self.keeper = subprocess.Popen(
                [sys.executable, "-m", "trainingjob_operator.local.keeper", str(self.state_path.resolve()),
                 self.run_id], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        self.keeper_ref = ref_of(self.keeper.pid)
        self._save_state()

    def _state(self, ended: str | None = None) -> RunState:
        return RunState(
            run_id=self.run_id, manifest_digest=self.digest, started=self.started,
            orphan_grace_s=self.options.orphan_grace_s, redis_url=self.redis_url or "",
            supervisor=self._me, keeper=self.keeper_ref, redis=self.redis_ref,
            ended=ended,
            memory={COORDINATOR_KEY: memory_to_dict(self.memory),
                    "conditions": [c.to_wire() for c in self.memory.conditions]},
            mode=self.mode,
            processes={name: self.refs[p.pid] for name, p in self.processes.items() if p.pid in self.refs},
            history={name: [vars(i) for i in incarnations] for name, incarnations in self.history.items()},
            failures=[vars(f) for f in self.tracker.failures],
            injected=[{"at_s": t, "time_s": i.time_s, "role": i.role, "rank": i.rank, "signal": i.signal}
                      for t, i in self.tracker.injected],
            resumes=self.resumes, redis_restarts=self.redis_restarts)

    def _save_state(self, ended: str | None = None) -> None:
        state = self._state(ended)
        text = state.to_json()
        if text != self._state_text:
            write_state(self.state_path, state)
            self._state_text = text

    def _end_state(self) -> None:
        """The run ended on purpose (finished, interrupted, or failed to start): nothing to resume or keep."""
        if not self._state_text:
            return
        self._save_state(ended="Interrupted" if self.interrupted else self.memory.phase.value)
        if self.keeper is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.keeper.wait(5)

    def request_stop(self) -> None:
        """Stop the run from another thread, as Ctrl-C would."""
        self._stop_requested = True

    def _alive(self) -> bool:
        return any(p.poll() is None for p in self.processes.values())

    # --- the summary -----------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        result = self._job_summary()
        # The coordinator's own failures: supervisors that took the run over, and restarts of its Redis.
        result["supervisor"] = {"resumes": self.resumes, "adopted": self.adopted,
                                "redis_restarts": self.redis_restarts}
        return result

    def _job_summary(self) -> dict[str, Any]:
        from trainingjob_operator.local.summary import build_pytorch_summary, build_summary

        if self.pytorch:
            return build_pytorch_summary(self._pytorch_facts())

        results: dict[int, dict[str, Any]] = {}
        progress: dict[int, int] = {}
        lost = 0.0
        recovery: dict[str, Any] = self.tracker.to_summary()
        if self.coord is not None:
            with contextlib.suppress(Exception):
                for rank in range(self.spec.replicas.trainer.replicas):
                    if (r := self.coord.result(rank)) is not None:
                        results[rank] = r
                progress = {rank: p.samples for rank, p in
                            self.coord.all_progress(self.spec.replicas.trainer.replicas).items()}
                lost = lost_samples(self.coord, self.spec)
                shards = self.spec.replicas.embedding_server.replicas
                for record in self.tracker.failures:
                    replacements = {k: v for k, v in self.coord.recoveries(record.name).items()
                                    if k != record.failed_instance}
                    if replacements:
                        latest = max(replacements.values(), key=lambda v: v["time"])
                        spans = accounting.spans_of(latest)
                        record.lost_samples = round(sum(s.samples for s in spans) / shards)
                        record.restored = latest.get("description")
                    elif record.role != Role.EMBEDDING_SERVER.value and record.mode == "partial":
                        record.lost_samples = 0  # trainers re-read in-flight batches; the sync server re-seeds
                recovery.update(checkpoints=self.coord.checkpoints(),
                                o_save_s=self.coord.costs("stall_full") + self.coord.costs("stall_partial"),
                                o_load_s=self.coord.costs("o_load"), checkpoint_errors=self.coord.checkpoint_errors(),
                                curve=self.coord.curve(), mode=self.mode)
        status = "Interrupted" if self.interrupted else self.memory.phase.value
        return build_summary(
            job=self.job, status=status, started=self.started, ended=time.time(), results=results,
            history=self.history, restarts=dict(self.memory.restarts), failures=self.tracker.failures,
            conditions=[c.to_wire() for c in self.memory.conditions], lost_samples=lost, recovery=recovery,
            progress=progress,
        )


    def _pytorch_facts(self) -> dict[str, Any]:
        facts: dict[str, Any] = {
            "job": self.job, "status": "Interrupted" if self.interrupted else self.memory.phase.value,
            "started": self.started, "ended": time.time(), "history": self.history,
            "restarts": dict(self.memory.restarts), "failures": self.tracker.failures,
            "conditions": [c.to_wire() for c in self.memory.conditions], "recovery": self.tracker.to_summary(),
            "steps": self._steps, "result": None, "resumes": [], "checkpoints": [], "save_costs": [],
            "load_costs": []}
        if self.coord is not None:
            with contextlib.suppress(redis.RedisError):
                facts.update(steps=self.coord.step_progress() or self._steps, result=self.coord.result(0),
                             resumes=self.coord.resumes(), checkpoints=self.coord.checkpoints(),
                             save_costs=self.coord.costs("pt_save"), load_costs=self.coord.costs("pt_load"),
                             trace=self.coord.steps_trace())
        return facts


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
