"""What every replica process shares: the pod env contract, Redis registration and heartbeats.

Env contract (ARCHITECTURE.md §7): TJ_JOB, TJ_NAMESPACE, TJ_ROLE, TJ_RANK, TJ_REDIS_URL,
TJ_SPEC (JSON) or TJ_SPEC_FILE, POD_IP, TJ_INSTANCE (pod UID; the pid locally), TJ_GENERATION,
TJ_CHECKPOINT_DIR, TJ_GRPC_PORT (the port a server serves on: the one its pod declares and probes;
0 picks a free one), TJ_REDIS_USERNAME and TJ_REDIS_PASSWORD (on Kubernetes from the job's Secret: the URL
carries no credentials). The operator and the local supervisor render it with the same function
(``trainingjob_operator.core.contract``). Exit code 78 means a configuration error that no restart can fix.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from pydantic import ValidationError

from trainingjob_operator.api.spec import Role, TrainingJobSpec, spec_from_json
from trainingjob_operator.coordination import Coordination

EXIT_CONFIG = 78

log = logging.getLogger(__name__)


class ConfigError(Exception):
    """Bad configuration: the process exits with 78 so the coordinator does not retry it."""


@dataclass(frozen=True)
class ReplicaEnv:
    job: str
    namespace: str
    role: Role
    rank: int
    redis_url: str
    spec: TrainingJobSpec
    host: str
    instance: str
    generation: int
    checkpoint_location: str  # a directory (a mounted volume) or an s3:// URL
    port: int = 0
    redis_username: str | None = None  # the job's own Redis user (a Secret on Kubernetes); None: the URL's
    redis_password: str | None = None

    @property
    def name(self) -> str:
        return f"{self.role.value}-{self.rank}"


def _require(env: dict[str, str], key: str) -> str:
    value = env.get(key)
    if not value:
        raise ConfigError(f"environment variable {key} is required")
    return value


def replica_env(env: dict[str, str] | None = None) -> ReplicaEnv:
    env = dict(os.environ if env is None else env)
    try:
        role = Role(_require(env, "TJ_ROLE"))
    except ValueError:
        raise ConfigError(f"TJ_ROLE must be one of {[r.value for r in Role]}, got {env.get('TJ_ROLE')!r}") from None
    try:
        rank = int(_require(env, "TJ_RANK"))
    except ValueError:
        raise ConfigError(f"TJ_RANK must be an integer, got {env.get('TJ_RANK')!r}") from None
    spec_text = env.get("TJ_SPEC")
    if not spec_text and env.get("TJ_SPEC_FILE"):
        spec_text = Path(env["TJ_SPEC_FILE"]).read_text()
    if not spec_text:
        raise ConfigError("TJ_SPEC (JSON) or TJ_SPEC_FILE is required")
    try:
        spec = spec_from_json(spec_text)
    except ValidationError as exc:
        raise ConfigError(f"TJ_SPEC is not a valid TrainingJob spec: {exc.errors()[0]}") from None
    count = spec.replicas.count(role)
    if not 0 <= rank < count:
        raise ConfigError(f"TJ_RANK={rank} is out of range for {count} {role.value} replicas")
    job = _require(env, "TJ_JOB")
    try:
        port = int(env.get("TJ_GRPC_PORT") or 0)
    except ValueError:
        raise ConfigError(f"TJ_GRPC_PORT must be an integer, got {env.get('TJ_GRPC_PORT')!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"TJ_GRPC_PORT must be a port number (0-65535), got {port}")
    return ReplicaEnv(
        job=job,
        namespace=env.get("TJ_NAMESPACE", "default"),
        role=role,
        rank=rank,
        redis_url=_require(env, "TJ_REDIS_URL"),
        redis_username=env.get("TJ_REDIS_USERNAME") or None,
        redis_password=env.get("TJ_REDIS_PASSWORD") or None,
        spec=spec,
        host=env.get("POD_IP") or "127.0.0.1",
        instance=env.get("TJ_INSTANCE") or str(os.getpid()),
        generation=int(env.get("TJ_GENERATION", "0") or 0),
        checkpoint_location=(
            env.get("TJ_CHECKPOINT_DIR") or spec.recovery.checkpoint.storage or f"runs/{job}/checkpoints"),
        port=port,
    )


EXIT_FENCED = 75  # EX_TEMPFAIL: this incarnation was replaced while it was away (hung, partitioned)


def exit_fenced(message: str) -> None:
    """A replaced incarnation stops at once: whatever it would write next belongs to its replacement now."""
    log.error("fenced, exiting: %s", message)
    logging.shutdown()
    os._exit(EXIT_FENCED)


def coordination(renv: ReplicaEnv) -> Coordination:
    return Coordination(renv.redis_url, renv.namespace, renv.job, username=renv.redis_username,
                        password=renv.redis_password, on_fenced=exit_fenced)


class Heartbeat(threading.Thread):
    """Writes this replica's heartbeat to Redis every ``period`` seconds; a hung process stops it."""

    def __init__(self, coord: Coordination, renv: ReplicaEnv, period: float = 1.0) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.coord, self.renv, self.period = coord, renv, period
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.period):
            try:
                self.coord.heartbeat(self.renv.role.value, self.renv.rank)
            except Exception:  # Redis down: keep trying, the client retries too
                continue

    def stop(self) -> None:
        self.stopped.set()


def stop_event_on_signals() -> threading.Event:
    """SIGTERM/SIGINT set an event so servers shut down cleanly (exit 0)."""
    stop = threading.Event()

    def _handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    return stop


def endpoint(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6 pod IPs
    return f"{host}:{port}"
