"""The agent of one worker pod of a pytorch workload (``python -m trainingjob_torch.agent``).

It registers the pod in the coordination store and heartbeats for it, joins each generation's rendezvous
(every worker's agent, in Redis: outside the worker pods, so any of them may fail), starts
``pytorch.procsPerWorker`` processes of ``pytorch.command`` with the env torch.distributed expects, and
watches them and the generation. When the coordinator replaces a failed peer it moves the generation
(``failure_log.write_failure``, both backends): the agent stops its processes and starts new ones in the
same pod, which resume from the newest complete checkpoint. Decisions are ``decisions.next_step``.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from types import FrameType

import redis

from trainingjob_operator.api.exits import record_exit
from trainingjob_operator.api.spec import PyTorchSpec, TrainingJobSpec, spec_from_json
from trainingjob_operator.coordination import Coordination, Fenced
from trainingjob_torch import decisions
from trainingjob_torch.decisions import LocalState, Next

log = logging.getLogger("trainingjob.agent")

EXIT_FENCED = 75  # EX_TEMPFAIL: replaced by the coordinator; the same code the DLRM trainer uses
EXIT_RENDEZVOUS = 76  # the peers never all joined within rendezvousTimeoutSeconds
EXIT_PERMANENT = 78  # EX_CONFIG: the reconcile core fails the job at once (PermanentError)
STOP_GRACE_S = 5.0  # SIGTERM -> SIGKILL for a generation's processes
POLL_S = 0.1
FAULT_SETTLE_S = 1.0  # how long the workers' fault reports may take to arrive before the first is judged


def _die_with_parent() -> None:
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Agent:
    spec: TrainingJobSpec
    coord: Coordination
    rank: int
    instance: str
    host: str
    master_port: int  # 0: pick a free one (processes on one host)
    restarts: int = 0
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    stopped_at: float = 0.0

    @property
    def pt(self) -> PyTorchSpec:
        assert self.spec.pytorch is not None
        return self.spec.pytorch

    @property
    def workers(self) -> int:
        return self.spec.replicas.worker.replicas

    def run(self) -> int:
        self.coord.register("worker", self.rank, self.host, self.instance)
        threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True).start()
        generation = self._generation()
        while not self.stopping.is_set():
            master = self._rendezvous(generation)
            if master is None:
                if self.stopping.is_set():
                    break
                moved = self._generation()
                if moved != generation:
                    generation = moved
                    continue
                log.error("worker-%d: not every worker joined generation %d within %.0fs", self.rank, generation,
                          self.pt.rendezvous_timeout_seconds)
                return EXIT_RENDEZVOUS
            try:
                self._start(generation, master)
            except OSError as e:  # the command is not in the image: no restart can help
                log.error("worker-%d: pytorch.command %s cannot be started: %s", self.rank, list(self.pt.command), e)
                self._stop_processes()
                return EXIT_PERMANENT
            outcome, code = self._watch(generation)
            if self.stopping.is_set():
                # The pod is being deleted: its peers' scripts are about to fail in a collective with ours. Being
                # the first fault of the generation makes theirs collateral: they wait for the replacement.
                self._redis(lambda g=generation: self.coord.report_fault(g, self.rank, self.stopped_at))
            self._stop_processes()
            self.procs = []
            if self.stopping.is_set():
                break
            if outcome is Next.DONE:
                log.info("worker-%d: every process finished", self.rank)
                return 0
            if outcome is Next.FAIL_POD:
                log.error("worker-%d: a process failed (exit %s) and no peer did: the pod fails", self.rank, code)
                return code
            generation = self._generation()
            self.restarts += 1
            log.warning("worker-%d: generation %d: restarting its processes in place (restart %d)", self.rank,
                        generation, self.restarts)
        return 128 + signal.SIGTERM

    # --- the generation's rendezvous ----------------------------------------------------------
    def _rendezvous(self, generation: int) -> tuple[str, int] | None:
        """(MASTER_ADDR, MASTER_PORT) once every worker joined ``generation``; None when it moved or timed out."""
        port = self.master_port or _free_port(self.host)
        self._redis(lambda: self.coord.join_world(generation, self.rank, f"{self.host}:{port}", self.instance))
        deadline = time.monotonic() + self.pt.rendezvous_timeout_seconds
        while time.monotonic() < deadline and not self.stopping.is_set():
            try:
                if self.coord.generation() != generation:
                    return None
                world = self.coord.world(generation)
                registered = {rank: m.instance for rank, m in self.coord.members("worker", self.workers).items()}
            except redis.RedisError as e:
                log.warning("rendezvous: Redis unreachable (%s)", e)
                time.sleep(1.0)
                continue
            if decisions.world_complete(world, self.workers, registered):
                return decisions.split_address(world[0]["address"])
            time.sleep(0.05)
        return None

    def _start(self, generation: int, master: tuple[str, int]) -> None:
        pt = self.pt
        for local_rank in range(pt.procs_per_worker):
            env = {**os.environ, **decisions.process_env(
                worker_rank=self.rank, workers=self.workers, local_rank=local_rank,
                procs_per_worker=pt.procs_per_worker, master_addr=master[0], master_port=master[1],
                generation=generation, restarts=self.restarts)}
            command = decisions.resolve_command(list(pt.command), sys.executable)
            self.procs.append(subprocess.Popen(command, env=env, preexec_fn=_die_with_parent))
        log.info("worker-%d: generation %d: started %d process(es), store %s:%d", self.rank, generation,
                 len(self.procs), *master)

    def _watch(self, generation: int) -> tuple[Next, int]:
        exited_at: dict[int, float] = {}
        for index, proc in enumerate(self.procs):  # exact exit times: which worker failed first decides
            threading.Thread(target=lambda i=index, p=proc: (p.wait(), exited_at.setdefault(i, time.time())),
                             daemon=True).start()
        failed_since: float | None = None
        ours = False
        last_check = 0.0
        moved = False
        while not self.stopping.is_set():
            codes = tuple(p.poll() for p in self.procs)
            now = time.monotonic()
            failed = decisions.first_failure(codes)
            if failed is not None and failed_since is None:
                failed_since = now
                index = next(i for i, c in enumerate(codes) if c not in (None, 0))
                when = exited_at.get(index, time.time())
                self._redis(lambda at=when: self.coord.report_fault(generation, self.rank, at))
                log.warning("worker-%d: a process exited %d", self.rank, failed)
                self._stop_processes()  # its peers are stuck in a collective with it: no use waiting
                codes = tuple(p.poll() for p in self.procs)
            if now - last_check >= 0.25:
                last_check = now
                current = self._redis(self.coord.generation)
                moved = current is not None and current != generation
                if failed_since is not None and now - failed_since >= FAULT_SETTLE_S:
                    # Every worker whose processes failed has reported by now: the earliest failure is the fault.
                    ours = self._redis(lambda: self.coord.first_fault(generation)) == self.rank
            step = decisions.next_step(LocalState(codes, moved, failed_since, now,
                                                  self.pt.peer_failure_grace_seconds, ours))
            if step is Next.DONE:
                return step, 0
            if step is Next.FAIL_POD:
                return step, _container_code(failed if failed is not None else 1)
            if step is Next.RESTART_IN_PLACE:
                return step, 0
            time.sleep(POLL_S)
        return Next.KEEP_RUNNING, 0

    def _stop_processes(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.0, deadline - time.monotonic()))
            if p.poll() is None:
                p.kill()
                p.wait()

    # --- heartbeats, Redis, signals -----------------------------------------------------------
    def _heartbeats(self) -> None:
        while not self.stopping.wait(1.0):
            try:
                self.coord.heartbeat("worker", self.rank)
            except Fenced:
                log.error("worker-%d: replaced by the coordinator (fenced): stopping", self.rank)
                for p in self.procs:
                    with contextlib.suppress(OSError):
                        p.kill()
                os._exit(EXIT_FENCED)
            except redis.RedisError as e:
                log.warning("heartbeat: Redis unreachable (%s)", e)

    def _generation(self) -> int:
        while True:
            value = self._redis(self.coord.generation)
            if value is not None:
                return int(value)
            time.sleep(1.0)

    def _redis(self, call):  # type: ignore[no-untyped-def]
        try:
            return call()
        except redis.RedisError as e:
            log.warning("Redis unreachable (%s)", e)
            return None

    def on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.stopped_at = time.time()
        self.stopping.set()


def _container_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    env = os.environ
    spec = spec_from_json(env["TJ_SPEC"])
    if spec.pytorch is None:
        log.error("TJ_SPEC has no pytorch section: this agent runs workload pytorch only")
        return EXIT_PERMANENT
    coord = Coordination(env["TJ_REDIS_URL"], env.get("TJ_NAMESPACE", "default"), env["TJ_JOB"],
                         username=env.get("TJ_REDIS_USERNAME"), password=env.get("TJ_REDIS_PASSWORD"))
    agent = Agent(spec, coord, rank=int(env["TJ_RANK"]), instance=env.get("TJ_INSTANCE") or str(os.getpid()),
                  host=env.get("POD_IP") or "127.0.0.1", master_port=int(env.get("TJ_MASTER_PORT", "0")))
    signal.signal(signal.SIGTERM, agent.on_sigterm)
    code = agent.run()
    agent.stopping.set()
    agent._stop_processes()
    return code


if __name__ == "__main__":
    exit_code = main()
    record_exit(exit_code)  # for a local supervisor that adopted this agent (api.exits)
    sys.exit(exit_code)
