"""Replica processes: started with the pod env contract, in sessions of their own.

A terminal's Ctrl-C reaches only the supervisor, which then stops the replicas in order. A
supervisor killed outright leaves its replicas training, as killing the operator leaves pods
running: ``trainingjob run --resume`` adopts them (``AdoptedProcess``), and the run's keeper
(``local.keeper``) stops them if no supervisor comes back within the grace period. Warm standbys
exit by themselves when their supervisor goes (their stdin closes).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import psutil

from trainingjob_operator.api.exits import recorded_exit
from trainingjob_operator.local.keeper import process_of
from trainingjob_operator.local.runstate import ProcessRef


class ProcessHandle(Protocol):
    """What the supervisor needs of a process: ``subprocess.Popen``, or ``AdoptedProcess`` for one it did not start."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...

    def wait(self, timeout: float | None = None) -> int: ...


class AdoptedProcess:
    """A replica started by an earlier supervisor of the run. It is not our child, so its exit code comes
    from the record it writes as it exits (``api.exits``); one that left none was killed by a signal."""

    def __init__(self, pid: int, started_at: float, exit_dir: Path) -> None:
        self._pid = pid
        self.started_at = started_at
        self.exit_dir = exit_dir
        self.returncode: int | None = None

    @property
    def pid(self) -> int:
        return self._pid

    def _process(self) -> psutil.Process | None:
        return process_of(ProcessRef(self._pid, self.started_at))

    def poll(self) -> int | None:
        if self.returncode is None and self._process() is None:
            recorded = recorded_exit(self.exit_dir, self._pid, self.started_at)
            self.returncode = recorded if recorded is not None else -signal.SIGKILL
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if (process := self._process()) is not None:
            with contextlib.suppress(psutil.Error):
                process.send_signal(sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"pid {self._pid}", timeout or 0.0)
            time.sleep(0.05)
        return code


@dataclass
class Incarnation:
    """One process of a replica (a replica has several after restarts)."""

    pid: int
    started_at: float
    ended_at: float | None = None
    exit_code: int | None = None
    peak_rss_mb: float = 0.0
    warm: bool = False  # started from a warm standby (imports already done)


@dataclass
class ReplicaProcess:
    name: str
    popen: ProcessHandle
    incarnation: Incarnation
    kill_deadline: float | None = None  # SIGTERM sent; SIGKILL after this
    log_path: Path | None = None
    history: list[Incarnation] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        code = self.popen.poll()
        if code is not None and self.incarnation.exit_code is None:
            self.incarnation.exit_code = code
            self.incarnation.ended_at = time.time()
        return code

    def terminate(self, grace_s: float) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            self.kill_deadline = time.monotonic() + grace_s

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()

    def enforce_deadline(self) -> None:
        if self.kill_deadline is not None and time.monotonic() > self.kill_deadline:
            self.kill()


def spawn(name: str, env: dict[str, str], log_path: Path, cwd: Path | None = None,
          standby: subprocess.Popen[bytes] | None = None, module: str = "dlrm_trainer") -> ReplicaProcess:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if standby is not None and standby.stdin is not None:
        try:
            standby.stdin.write((json.dumps({"env": env, "log": str(log_path)}) + "\n").encode())
            standby.stdin.close()
            return ReplicaProcess(name, standby, Incarnation(standby.pid, time.time(), warm=True), log_path=log_path)
        except OSError:
            standby.kill()  # it died meanwhile: fall back to a cold start
    log = log_path.open("ab")
    popen = subprocess.Popen(
        [sys.executable, "-m", module], env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, cwd=cwd, start_new_session=True,
    )
    log.close()
    return ReplicaProcess(name, popen, Incarnation(popen.pid, time.time()), log_path=log_path)


class StandbyPool:
    """Warm standby processes per role (``recovery.standby.<role>``, at least one), each handed to the next
    replacement of its role, oldest first."""

    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.env = env
        self._ready: dict[str, list[subprocess.Popen[bytes]]] = {}
        self._count = 0

    def prime(self, role: str, want: int = 1) -> None:
        """Start one more standby of ``role`` if fewer than ``want`` are alive (one per call: priming costs CPU)."""
        alive = [p for p in self._ready.get(role, []) if p.poll() is None]
        self._ready[role] = alive
        if len(alive) >= want:
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._count += 1
        with (self.log_dir / f"standby-{role}-{self._count}.log").open("ab") as log:
            alive.append(subprocess.Popen(
                [sys.executable, "-m", "dlrm_trainer.standby", role], env={**os.environ, **self.env},
                stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def take(self, role: str) -> subprocess.Popen[bytes] | None:
        ready = self._ready.get(role, [])
        while ready:
            process = ready.pop(0)
            if process.poll() is None:
                return process
        return None

    def stop(self) -> None:
        for process in (p for ready in self._ready.values() for p in ready):
            if process.poll() is None:
                process.kill()
                process.wait()
        self._ready.clear()
