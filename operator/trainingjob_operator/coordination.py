"""The one seam to Redis: the job's coordination state (ARCHITECTURE.md §3).

Redis holds membership, heartbeats, the generation counter, the failure log, progress,
measured costs and pointers, never tensors. Every key lives under ``tj:{namespace}:{job}:``.
Clients retry with exponential backoff so a Redis restart is survived.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

# A Redis restart takes a few seconds; 30 retries capped at 1 s ride it out.
_RETRY = Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=30)


def connect(url: str, patient: bool = True, username: str | None = None,
            password: str | None = None) -> redis.Redis:
    """A client for replicas (``patient``: rides out a Redis restart, retrying for ~20 s) or for a coordinator
    (fails within ~2 s: the coordinator tries again on its next tick instead of stalling every job's loop).
    ``username``/``password``: the job's own Redis user (``job_user``), over whatever the URL carries."""
    credentials = {k: v for k, v in (("username", username), ("password", password)) if v}
    if not patient:
        return redis.Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=1.0, socket_timeout=2.0,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=1),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError], health_check_interval=10, **credentials,
        )
    return redis.Redis.from_url(
        url,
        **credentials,
        decode_responses=True,
        retry=_RETRY,
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        socket_connect_timeout=2.0,
        socket_timeout=10.0,
        health_check_interval=10,
    )


@dataclass(frozen=True)
class Member:
    role: str
    rank: int
    endpoint: str
    instance: str
    generation: int
    heartbeat: float
    started: float


@dataclass(frozen=True)
class Progress:
    rank: int
    samples: int
    cursor: int
    loss: float | None
    samples_per_second: float | None
    updated: float
    done: bool = False
    waiting_for: tuple[str, ...] = ()  # servers this trainer is blocked on (being replaced)

    def __post_init__(self) -> None:
        object.__setattr__(self, "waiting_for", tuple(self.waiting_for))  # a JSON list from Redis


@dataclass(frozen=True)
class StepProgress:
    """A pytorch workload's progress, as its rank 0 reports it (``trainingjob_torch.report``)."""

    step: int
    loss: float | None
    tokens: int  # tokens (or samples) trained so far, all ranks together, counting only new steps
    tokens_per_second: float | None
    updated: float
    generation: int = 0
    resumed_from: int | None = None  # the checkpoint step this generation loaded (None: started fresh)
    total_steps: int | None = None  # what the script plans, when it says


def waiting_for(progress: Iterable[Progress]) -> list[str]:
    """The servers any unfinished trainer is blocked on ("embedding-server-1" while it is replaced)."""
    return sorted({name for p in progress if not p.done for name in p.waiting_for})


TRACE_POINTS = 4000  # per trainer: ~30 minutes of progress reports at the default 0.5 s


def key_prefix(namespace: str, job: str) -> str:
    """Every key of one job starts with this (and nothing of another job does)."""
    return f"tj:{namespace}:{job}:"


def job_user(namespace: str, job: str) -> str:
    """The Redis ACL user of one job's replicas."""
    return f"tj-{namespace}-{job}"


def grant_job_user(r: redis.Redis, namespace: str, job: str, password: str) -> None:
    """Create (or reset) the job's ACL user: its password, its own key prefix only, no admin or dangerous commands
    (FLUSHALL, KEYS, CONFIG, DEBUG...). A replica of one job can neither read nor write another job's keys."""
    r.execute_command("ACL", "SETUSER", job_user(namespace, job), "reset", "on", f">{password}",
                      f"~{key_prefix(namespace, job)}*", "resetchannels", "+@all", "-@admin", "-@dangerous")


def job_user_exists(r: redis.Redis, namespace: str, job: str) -> bool:
    """Whether Redis still knows the job's user: a Redis restarted without an ACL file forgets every user
    (AOF keeps keys, not users), and the job's pods could no longer log in."""
    return r.execute_command("ACL", "GETUSER", job_user(namespace, job)) is not None


def revoke_job_user(r: redis.Redis, namespace: str, job: str) -> None:
    r.execute_command("ACL", "DELUSER", job_user(namespace, job))


class Fenced(RuntimeError):
    """This replica was replaced (the coordinator fenced it, or a replacement registered): its writes are refused."""


# Fenced writes: the member hash (KEYS[1]) must still name this incarnation (ARGV[1]), atomically with the write.
_FENCED_HSET = """
if redis.call('HGET', KEYS[1], 'instance') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], unpack(ARGV, 2))
return 1
"""
_FENCED_PROGRESS = """
if redis.call('HGET', KEYS[1], 'instance') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], unpack(ARGV, 4))
redis.call('RPUSH', KEYS[3], ARGV[2])
redis.call('LTRIM', KEYS[3], -tonumber(ARGV[3]), -1)
return 1
"""
_FENCED_SET = """
if redis.call('HGET', KEYS[1], 'instance') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
return 1
"""
_FENCE = """
if redis.call('HGET', KEYS[1], 'instance') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'instance', 'fenced:' .. ARGV[1])
  return 1
end
return 0
"""


class Coordination:
    """Typed access to one job's coordination keys.

    A replica's client is fenced: once it registers, its heartbeats, progress and checkpoint pointers are written
    only while the member hash still names its incarnation (a Lua check, atomic with the write). The coordinator
    fences a failed incarnation when it records the failure (``fence``), before its pod or process is removed, so
    a replica declared hung that wakes up cannot overwrite its replacement's cursor or shard pointer: its next
    write raises ``Fenced`` (or calls ``on_fenced``: the trainer image exits)."""

    def __init__(self, url: str, namespace: str, job: str, client: redis.Redis | None = None,
                 patient: bool = True, username: str | None = None, password: str | None = None,
                 on_fenced: Callable[[str], None] | None = None) -> None:
        self.url = url
        self.prefix = key_prefix(namespace, job)
        self.r = client if client is not None else connect(url, patient, username, password)
        self.instances: dict[tuple[str, int], str] = {}  # (role, rank) -> incarnation this client registered
        self.identity: tuple[str, int, str] | None = None  # the last one: the process's own
        self.on_fenced = on_fenced

    def _fenced(self, what: str) -> None:
        message = f"{what}: this incarnation was replaced; write refused"
        if self.on_fenced is not None:
            self.on_fenced(message)
        raise Fenced(message)

    def fence(self, role: str, rank: int, instance: str) -> bool:
        """Refuse every later write of this incarnation (the coordinator, on its failure). False: another
        incarnation is registered already."""
        if not instance:
            return False
        return bool(self.r.eval(_FENCE, 1, self.key("members", role, rank), instance))

    def holds(self) -> bool:
        """Whether this replica is still the registered incarnation (checked before a checkpoint commit)."""
        if self.identity is None:
            return True
        role, rank, instance = self.identity
        if self.r.hget(self.key("members", role, rank), "instance") == instance:
            return True
        self._fenced(f"{role}-{rank}")
        return False

    def key(self, *parts: object) -> str:
        return self.prefix + ":".join(str(p) for p in parts)

    # --- membership and heartbeats ---------------------------------------------------------
    def register(self, role: str, rank: int, endpoint: str, instance: str, generation: int | None = None) -> None:
        now = time.time()
        gen = self.generation() if generation is None else generation
        self.r.hset(self.key("members", role, rank), mapping={
            "endpoint": endpoint, "instance": instance, "generation": gen, "heartbeat": now, "started": now,
        })
        self.instances[(role, rank)] = instance
        self.identity = (role, rank, instance)

    def heartbeat(self, role: str, rank: int) -> None:
        member = self.key("members", role, rank)
        instance = self.instances.get((role, rank))
        if instance is None:
            self.r.hset(member, "heartbeat", time.time())
        elif not self.r.eval(_FENCED_HSET, 2, member, member, instance, "heartbeat", time.time()):
            self._fenced(f"{role}-{rank} heartbeat")

    def member(self, role: str, rank: int) -> Member | None:
        raw: dict[str, str] = self.r.hgetall(self.key("members", role, rank))  # type: ignore[assignment]
        if not raw:
            return None
        return Member(role, rank, raw["endpoint"], raw["instance"], int(raw["generation"]),
                      float(raw["heartbeat"]), float(raw["started"]))

    def members(self, role: str, count: int) -> dict[int, Member]:
        return {rank: m for rank in range(count) if (m := self.member(role, rank)) is not None}

    def unregister(self, role: str, rank: int) -> None:
        self.r.delete(self.key("members", role, rank))

    # --- warm standbys ------------------------------------------------------------------------
    # A standby offers itself in the ``standbys`` hash (its instance -> role and the time it last said so); the
    # coordinator picks a fresh one and pushes the assignment (a rank, a generation) onto its own list, which the
    # standby blocks on. Blocking on a list costs nothing while waiting and wakes the standby at once.
    ASSIGNMENT_TTL_S = 86_400

    def offer_standby(self, role: str, instance: str, endpoint: str = "") -> None:
        self.r.hset(self.key("standbys"), instance,
                    json.dumps({"role": role, "endpoint": endpoint, "seen": time.time()}))

    def standbys(self) -> dict[str, dict[str, Any]]:
        raw: dict[str, str] = self.r.hgetall(self.key("standbys"))  # type: ignore[assignment]
        return {str(instance): json.loads(value) for instance, value in raw.items()}

    def withdraw_standby(self, instance: str) -> None:
        self.r.hdel(self.key("standbys"), instance)

    def assign_standby(self, instance: str, assignment: dict[str, Any]) -> None:
        key = self.key("assignment", instance)
        pipe = self.r.pipeline(transaction=True)
        pipe.rpush(key, json.dumps(assignment))
        pipe.expire(key, self.ASSIGNMENT_TTL_S)
        pipe.execute()

    def pending_assignment(self, instance: str) -> bool:
        """Whether an assignment waits, not yet taken by its standby."""
        return bool(self.r.llen(self.key("assignment", instance)))

    def await_assignment(self, instance: str, timeout_s: float) -> dict[str, Any] | None:
        """The standby's side: the next assignment, or None after ``timeout_s``."""
        got = self.r.blpop([self.key("assignment", instance)], timeout=timeout_s)
        if got is None:
            return None
        assignment: dict[str, Any] = json.loads(got[1])
        return assignment

    # --- generation and failures -----------------------------------------------------------
    def generation(self) -> int:
        value = self.r.get(self.key("generation"))
        return int(value) if value else 0

    def set_generation(self, generation: int) -> None:
        self.r.set(self.key("generation"), generation)

    def log_failure(self, **fields: Any) -> None:
        self.r.xadd(self.key("failures"), {k: json.dumps(v) for k, v in fields.items()}, maxlen=10_000)

    def failures(self) -> list[dict[str, Any]]:
        entries: list[tuple[str, dict[str, str]]] = self.r.xrange(self.key("failures"))  # type: ignore[assignment]
        return [{k: json.loads(v) for k, v in entry.items()} for _, entry in entries]

    # --- progress ---------------------------------------------------------------------------
    def report_progress(self, progress: Progress) -> None:
        trace = self.key("trace", progress.rank)
        fields = {k: json.dumps(v) for k, v in asdict(progress).items()}
        instance = self.instances.get(("trainer", progress.rank))
        if instance is not None:  # a trainer's own report: fenced
            args: list[str | int | float | bytes] = [
                instance, f"{progress.updated:.3f} {progress.samples}", TRACE_POINTS,
                *(item for pair in fields.items() for item in pair)]  # type: ignore[misc]
            if not self.r.eval(_FENCED_PROGRESS, 3, self.key("members", "trainer", progress.rank),
                               self.key("progress", progress.rank), trace, *args):
                self._fenced(f"trainer-{progress.rank} progress")
            return
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(self.key("progress", progress.rank), mapping={k: v for k, v in fields.items()})
        # Each trainer's throughput trace (time, samples), bounded: what measures the slowdown a background
        # checkpoint write causes (core.costs), the same way for both backends.
        pipe.rpush(trace, f"{progress.updated:.3f} {progress.samples}")
        pipe.ltrim(trace, -TRACE_POINTS, -1)
        pipe.execute()

    def throughput_traces(self, trainers: int) -> dict[int, list[tuple[float, int]]]:
        out: dict[int, list[tuple[float, int]]] = {}
        for rank in range(trainers):
            points = []
            for raw in self.r.lrange(self.key("trace", rank), 0, -1):  # type: ignore[union-attr]
                t, samples = str(raw).split()
                points.append((float(t), int(samples)))
            out[rank] = points
        return out

    def progress(self, rank: int) -> Progress | None:
        raw: dict[str, str] = self.r.hgetall(self.key("progress", rank))  # type: ignore[assignment]
        if not raw:
            return None
        return Progress(**{str(k): json.loads(v) for k, v in raw.items()})

    def all_progress(self, trainers: int) -> dict[int, Progress]:
        return {rank: p for rank in range(trainers) if (p := self.progress(rank)) is not None}

    def set_result(self, rank: int, result: dict[str, Any]) -> None:
        self.r.set(self.key("result", rank), json.dumps(result))

    def result(self, rank: int) -> dict[str, Any] | None:
        raw = self.r.get(self.key("result", rank))
        return json.loads(raw) if raw else None

    # --- a pytorch workload: rendezvous and progress ------------------------------------------
    def join_world(self, generation: int, rank: int, address: str, instance: str) -> None:
        """Worker ``rank`` (its agent) is ready for ``generation``; rank 0's address is the generation's store."""
        key = self.key("world", generation)
        self.r.hset(key, str(rank), json.dumps({"address": address, "instance": instance, "time": time.time()}))
        self.r.expire(key, 7 * 86_400)

    def report_fault(self, generation: int, rank: int, exited_at: float) -> None:
        """One of worker ``rank``'s processes failed at ``exited_at`` in ``generation``."""
        key = self.key("world_faults", generation)
        self.r.zadd(key, {str(rank): exited_at}, nx=True)
        self.r.expire(key, 7 * 86_400)

    def first_fault(self, generation: int) -> int | None:
        """The worker whose process failed first in ``generation``: the others' failures are collateral (their
        processes lost a peer in a collective)."""
        first: list[str] = self.r.zrange(self.key("world_faults", generation), 0, 0)  # type: ignore[assignment]
        return int(first[0]) if first else None

    def world(self, generation: int) -> dict[int, dict[str, Any]]:
        raw: dict[str, str] = self.r.hgetall(self.key("world", generation))  # type: ignore[assignment]
        return {int(rank): json.loads(v) for rank, v in raw.items()}

    def report_steps(self, progress: StepProgress) -> None:
        fields = json.dumps(asdict(progress))
        pipe = self.r.pipeline(transaction=False)
        pipe.set(self.key("steps"), fields)
        pipe.rpush(self.key("steps_trace"), f"{progress.updated:.3f} {progress.step} {progress.tokens}")
        pipe.ltrim(self.key("steps_trace"), -TRACE_POINTS, -1)
        pipe.execute()

    def step_progress(self) -> StepProgress | None:
        raw = self.r.get(self.key("steps"))
        return StepProgress(**json.loads(raw)) if raw else None

    def steps_trace(self) -> list[tuple[float, int, int]]:
        """(time, step, tokens) as rank 0 reported them, oldest first."""
        out = []
        for raw in self.r.lrange(self.key("steps_trace"), 0, -1):  # type: ignore[union-attr]
            t, step, tokens = str(raw).split()
            out.append((float(t), int(step), int(tokens)))
        return out

    def record_resume(self, generation: int, **fields: Any) -> None:
        """When a generation's processes trained again, from which checkpoint step (restart timings)."""
        self.r.hsetnx(self.key("resumes"), str(generation), json.dumps({"generation": generation, **fields}))

    def resumes(self) -> list[dict[str, Any]]:
        raw: dict[str, str] = self.r.hgetall(self.key("resumes"))  # type: ignore[assignment]
        return sorted((json.loads(v) for v in raw.values()), key=lambda r: int(r["generation"]))

    # --- measured costs, interval, checkpoints (CPR) ---------------------------------------
    def record_cost(self, name: str, seconds: float) -> None:
        """Append one measurement of o_save / o_load / o_res (bounded history)."""
        key = self.key("costs", name)
        self.r.rpush(key, seconds)
        self.r.ltrim(key, -100, -1)

    def costs(self, name: str) -> list[float]:
        return [float(v) for v in self.r.lrange(self.key("costs", name), 0, -1)]

    def set_interval(self, seconds: float) -> None:
        self.r.set(self.key("interval"), seconds)

    def interval(self) -> float | None:
        value = self.r.get(self.key("interval"))
        return float(value) if value else None

    def set_recovery_mode(self, mode: str) -> None:
        """The effective mode (partial/full) replicas follow: full rolls a restarted server back."""
        self.r.set(self.key("recovery_mode"), mode)

    def recovery_mode(self) -> str | None:
        value = self.r.get(self.key("recovery_mode"))
        return str(value) if value else None

    def set_checkpoint_pointer(self, shard: int, pointer: dict[str, Any]) -> None:
        if self.identity is None:
            self.r.set(self.key("checkpoint", shard), json.dumps(pointer))
            return
        role, rank, instance = self.identity
        if not self.r.eval(_FENCED_SET, 2, self.key("members", role, rank), self.key("checkpoint", shard), instance,
                           json.dumps(pointer)):
            self._fenced(f"{role}-{rank} checkpoint pointer")

    def checkpoint_pointer(self, shard: int) -> dict[str, Any] | None:
        raw = self.r.get(self.key("checkpoint", shard))
        return json.loads(raw) if raw else None

    def total_samples(self, trainers: int) -> int:
        """Samples trained by all trainers so far (the progress marker of checkpoints and PLS)."""
        return sum(p.samples for p in self.all_progress(trainers).values())

    def set_trainer_cursor(self, rank: int, cursor: int, samples: int) -> None:
        """Roll a trainer's resume point (full recovery rolls every trainer back to the checkpoint)."""
        self.report_progress(Progress(rank, samples, cursor, None, None, time.time(), False))

    # --- coordinated checkpoint rounds (full recovery's consistent cut) -------------------
    def announce_round(self, round_id: int, cursor: int) -> None:
        """Every trainer pauses before batch ``cursor`` of its shard; servers then save round ``round_id``."""
        self.r.set(self.key("round"), json.dumps({"round": round_id, "cursor": cursor, "time": time.time()}))

    def announced_round(self) -> dict[str, Any] | None:
        raw = self.r.get(self.key("round"))
        return json.loads(raw) if raw else None

    def round_saved(self, round_id: int, member: str, checkpoint_id: str, cursor: int) -> None:
        """``member`` (embedding-server-0, sync-server-0) durably saved its part of round ``round_id``."""
        self.r.hset(self.key("rounds"), f"{round_id}:{member}", json.dumps({"id": checkpoint_id, "cursor": cursor}))

    def saved_rounds(self) -> dict[int, dict[str, dict[str, Any]]]:
        """round -> member -> {"id": checkpoint id, "cursor": the round's trainer cursor}."""
        raw: dict[str, str] = self.r.hgetall(self.key("rounds"))  # type: ignore[assignment]
        out: dict[int, dict[str, dict[str, Any]]] = {}
        for field_name, value in raw.items():
            round_id, _, member = field_name.partition(":")
            out.setdefault(int(round_id), {})[member] = json.loads(value)
        return out

    def set_restore_round(self, restore: dict[str, Any] | None) -> None:
        """What a full recovery restores: {"round", "cursor", "ids": member -> checkpoint id}; None: nothing
        (every replica starts from initial weights at cursor 0)."""
        self.r.set(self.key("restore_round"), json.dumps(restore))

    def restore_round(self) -> dict[str, Any] | None:
        raw = self.r.get(self.key("restore_round"))
        return json.loads(raw) if raw else None

    # --- recovery records, checkpoint log, learning curve ----------------------------------
    def record_recovery(self, name: str, instance: str, **fields: Any) -> None:
        """What a replacement restored (checkpoint loaded, fallbacks, samples lost)."""
        self.r.hset(self.key("recovery", name), instance, json.dumps({"time": time.time(), **fields}))

    def recoveries(self, name: str) -> dict[str, dict[str, Any]]:
        raw: dict[str, str] = self.r.hgetall(self.key("recovery", name))  # type: ignore[assignment]
        return {k: json.loads(v) for k, v in raw.items()}

    def shard_recoveries(self, shards: int) -> dict[int, dict[str, dict[str, Any]]]:
        """Every embedding server's recovery records (shard -> instance -> record): what lost-sample
        accounting (``core.accounting``) counts from."""
        return {shard: self.recoveries(f"embedding-server-{shard}") for shard in range(shards)}

    def set_checkpoint_error(self, shard: int | str, message: str | None) -> None:
        """A save of ``shard`` (an embedding server's rank, or a member's name) failed with ``message``, counted
        as one more failure in a row; None: it saved, which ends the run of failures."""
        if message is None:
            pipe = self.r.pipeline(transaction=True)
            pipe.hdel(self.key("checkpoint_errors"), str(shard))
            pipe.hdel(self.key("checkpoint_failures"), str(shard))
            pipe.execute()
        else:
            pipe = self.r.pipeline(transaction=True)
            pipe.hset(self.key("checkpoint_errors"), str(shard), message)
            pipe.hincrby(self.key("checkpoint_failures"), str(shard), 1)
            pipe.execute()

    def checkpoint_health(self) -> dict[str, tuple[int, str]]:
        """Every saver whose last save failed: its failures in a row and the last error."""
        errors = self.checkpoint_errors()
        counts: dict[str, str] = self.r.hgetall(self.key("checkpoint_failures"))  # type: ignore[assignment]
        return {shard: (int(counts.get(shard, 1)), message) for shard, message in errors.items()}

    def checkpoint_errors(self) -> dict[str, str]:
        return self.r.hgetall(self.key("checkpoint_errors"))  # type: ignore[return-value]

    def log_checkpoint(self, **fields: Any) -> None:
        self.r.rpush(self.key("checkpoints"), json.dumps(fields))

    def checkpoints(self) -> list[dict[str, Any]]:
        return [json.loads(v) for v in self.r.lrange(self.key("checkpoints"), 0, -1)]  # type: ignore[union-attr]

    def log_curve_point(self, **fields: Any) -> None:
        self.r.rpush(self.key("curve"), json.dumps(fields))

    def curve(self) -> list[dict[str, Any]]:
        return [json.loads(v) for v in self.r.lrange(self.key("curve"), 0, -1)]  # type: ignore[union-attr]

    def clear(self) -> None:
        """Remove every key of this job (a fresh run of the same job name)."""
        for key in self.r.scan_iter(match=self.prefix + "*", count=1000):
            self.r.delete(key)
