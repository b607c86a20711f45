"""The env contract of a replica (ARCHITECTURE.md §7), rendered once for pods and for processes.

A pod gets some values from the API server (its IP, its UID, the spec in a ConfigMap); a local
process gets literals. ``replica_env`` returns the same names in the same order for both, with
``FieldRef`` / ``ConfigMapKey`` where Kubernetes fills a value in, so a manifest tried locally runs
with the environment it will have on a cluster. ``role.env`` adds variables but never overrides one
of the contract's (on either backend).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from trainingjob_operator.api.spec import Role, TrainingJob
from trainingjob_operator.reconcile import ReplicaId

GRPC_PORT = 50051  # servers serve gRPC and grpc.health.v1 here on a pod; the probes name it
LOCAL_PORT = 0  # locally every replica shares one host: the kernel picks a free port
CHECKPOINT_MOUNT = "/checkpoints"


@dataclass(frozen=True)
class FieldRef:
    """A value the kubelet fills in from the pod object (``valueFrom.fieldRef``)."""

    path: str


@dataclass(frozen=True)
class ConfigMapKey:
    """A value read from a ConfigMap key (``valueFrom.configMapKeyRef``)."""

    name: str
    key: str


@dataclass(frozen=True)
class SecretKey:
    """A value read from a Secret key (``valueFrom.secretKeyRef``): never copied into the pod spec."""

    name: str
    key: str


EnvValue = str | FieldRef | ConfigMapKey | SecretKey

# The variables boto3 reads; a Secret named by objectStore.credentialsSecret holds the two keys.
OBJECT_STORE_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")

CONTRACT_ENV = frozenset({"TJ_JOB", "TJ_NAMESPACE", "TJ_ROLE", "TJ_RANK", "TJ_REDIS_URL", "TJ_SPEC", "POD_IP",
                          "TJ_INSTANCE", "TJ_GENERATION", "TJ_CHECKPOINT_DIR", "TJ_GRPC_PORT", "TJ_REDIS_USERNAME",
                          "TJ_REDIS_PASSWORD", "TJ_MASTER_PORT", "TJ_STANDBY"})
# A standby's environment lacks these: they come with its assignment (``standby_env``).
ASSIGNED_ENV = ("TJ_RANK", "TJ_GENERATION")
REDIS_SECRET_KEYS = ("username", "password")  # of the job's Redis Secret (``<job>-redis``)


@dataclass(frozen=True)
class Placement:
    """Where a backend runs a replica, as the contract needs it."""

    host: EnvValue  # the address the replica serves on and registers
    instance: EnvValue | None  # what tells this incarnation from the next (pod UID); None: the process id
    spec: EnvValue  # the spec as JSON
    port: int
    checkpoint_dir: str  # where a mounted volume (or a local directory) holds checkpoints
    secrets: bool  # can name Secret keys (a pod); a process gets credentials from its caller's environment


def pod_placement(spec_config_map: str, spec_key: str) -> Placement:
    return Placement(host=FieldRef("status.podIP"), instance=FieldRef("metadata.uid"),
                     spec=ConfigMapKey(spec_config_map, spec_key), port=GRPC_PORT, checkpoint_dir=CHECKPOINT_MOUNT,
                     secrets=True)


def process_placement(job: TrainingJob, checkpoint_dir: str) -> Placement:
    return Placement(host="127.0.0.1", instance=None, spec=job.spec_json(), port=LOCAL_PORT,
                     checkpoint_dir=checkpoint_dir, secrets=False)


def object_store_location(job: TrainingJob) -> str | None:
    """``<url>/<namespace>/<job>``: jobs sharing a bucket and prefix never see each other's checkpoints."""
    store = job.spec.recovery.checkpoint.object_store
    return None if store is None else f"{store.url}/{job.namespace}/{job.name}"


def _object_store_env(job: TrainingJob, placement: Placement) -> list[tuple[str, EnvValue]]:
    store = job.spec.recovery.checkpoint.object_store
    if store is None:
        return []
    env: list[tuple[str, EnvValue]] = []
    if store.endpoint:
        env.append(("AWS_ENDPOINT_URL", store.endpoint))
    if store.region:
        env.append(("AWS_DEFAULT_REGION", store.region))
    if store.credentials_secret and placement.secrets:
        env += [(key, SecretKey(store.credentials_secret, key)) for key in OBJECT_STORE_SECRET_KEYS]
    return env


def url_without_credentials(url: str) -> str:
    """A Redis URL with any user and password removed: what may appear in a pod spec."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def replica_env(job: TrainingJob, rid: ReplicaId, *, redis_url: str, generation: int,
                placement: Placement, redis_secret: str | None = None) -> list[tuple[str, EnvValue]]:
    """The replica's environment: the role's extra variables first, then the contract (which they never
    override), then the object store's client settings when checkpoints live in one."""
    contract: list[tuple[str, EnvValue]] = [
        ("TJ_JOB", job.name),
        ("TJ_NAMESPACE", job.namespace),
        ("TJ_ROLE", rid.role.value),
        ("TJ_RANK", str(rid.rank)),
        ("TJ_REDIS_URL", redis_url),
        ("TJ_SPEC", placement.spec),
        ("POD_IP", placement.host),
        ("TJ_GENERATION", str(generation)),
        ("TJ_CHECKPOINT_DIR", object_store_location(job) or placement.checkpoint_dir),
        ("TJ_GRPC_PORT", str(placement.port)),
    ]
    if placement.instance is not None:
        contract.insert(7, ("TJ_INSTANCE", placement.instance))
    if rid.role is Role.WORKER and job.spec.pytorch is not None:
        # Where rank 0's rendezvous store listens: the spec's port in a pod; a free one on a shared host.
        contract.append(("TJ_MASTER_PORT", str(job.spec.pytorch.master_port if placement.port else 0)))
    if redis_secret is not None and placement.secrets:
        # The job's own Redis user, from its Secret; the URL in the pod spec carries no credentials.
        contract[4] = ("TJ_REDIS_URL", url_without_credentials(redis_url))
        contract += [(f"TJ_REDIS_{key.upper()}", SecretKey(redis_secret, key)) for key in REDIS_SECRET_KEYS]
    contract += _object_store_env(job, placement)
    ours = CONTRACT_ENV | {name for name, _ in contract}
    extra = job.spec.replicas.for_role(rid.role).env
    return [*((k, v) for k, v in sorted(extra.items()) if k not in ours), *contract]


def standby_env(job: TrainingJob, role: Role, *, redis_url: str, placement: Placement,
                redis_secret: str | None = None) -> list[tuple[str, EnvValue]]:
    """A warm standby's environment: its role's replica env without a rank or a generation, which its
    assignment brings, and ``TJ_STANDBY=1``, which makes the entrypoint wait for that assignment."""
    env = replica_env(job, ReplicaId(role, 0), redis_url=redis_url, generation=0, placement=placement,
                      redis_secret=redis_secret)
    return [*((k, v) for k, v in env if k not in ASSIGNED_ENV), ("TJ_STANDBY", "1")]


def literal_env(env: list[tuple[str, EnvValue]]) -> dict[str, str]:
    """A process's environment; raises ValueError when a value needs the API server to resolve it."""
    out = {}
    for name, value in env:
        if not isinstance(value, str):
            raise ValueError(f"{name} is {value!r}: only a pod can resolve it")
        out[name] = value
    return out


def replica_command(role: Role) -> list[str]:
    """What a replica's process (a pod's container) runs: the DLRM trainer image's entrypoint, or a pytorch
    workload's agent, which starts the script's processes."""
    module = "trainingjob_torch.agent" if role is Role.WORKER else "dlrm_trainer"
    return ["python", "-m", module]


def container_exit_code(returncode: int) -> int:
    """A process's return code as a container runtime reports it: killed by signal N is 128 + N, so a
    SIGKILLed replica is ``ExitCode137`` on both backends."""
    return 128 - returncode if returncode < 0 else returncode
