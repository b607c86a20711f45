"""TrainingJob spec, v1alpha1.

Every default and every validation rule of the API lives here. The CRD in ``crds/`` is generated
from these models (``trainingjob crd``), the local backend and the operator both parse manifests
with them, and the trainer reads its configuration from the same model (``TJ_SPEC``).
Nothing here imports torch or kopf.
"""

from __future__ import annotations

import enum
import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from trainingjob_operator.api.base import ApiModel
from trainingjob_operator.api.template import PodTemplate

GROUP = "training.cpr.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TrainingJob"
PLURAL = "trainingjobs"
SINGULAR = "trainingjob"
SHORT_NAME = "tj"

DEFAULT_IMAGE = "ghcr.io/trainingjob-operator/dlrm-trainer:0.1.0"

# Pod names are "<job>-<role>-<rank>"; the longest role is "embedding-server" (16) and ranks stay
# under 4 digits, so a 40-character job name keeps pod names within the 63-character label limit.
MAX_JOB_NAME = 40
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class Role(enum.StrEnum):
    """The replica roles of a TrainingJob (ARCHITECTURE.md §2)."""

    TRAINER = "trainer"
    EMBEDDING_SERVER = "embedding-server"
    SYNC_SERVER = "sync-server"
    WORKER = "worker"  # spec.workload: pytorch: one pod of a torch.distributed script


ROLES: tuple[Role, ...] = (Role.EMBEDDING_SERVER, Role.SYNC_SERVER, Role.TRAINER)  # the DLRM workload's
PYTORCH_ROLES: tuple[Role, ...] = (Role.WORKER,)


class Workload(enum.StrEnum):
    DLRM = "dlrm"  # the recommendation model: embedding servers, sync server, trainers (CPR, ShadowSync)
    PYTORCH = "pytorch"  # any torch.distributed script: worker pods, in-place restarts, distributed checkpoints

PositiveInt = Annotated[int, Field(ge=1)]


class ObjectMeta(ApiModel):
    """The part of Kubernetes metadata the job uses; other fields the API server adds are kept."""

    model_config = {**ApiModel.model_config, "extra": "allow"}

    name: str = Field(description="Job name: a DNS-1123 label of at most 40 characters.")
    namespace: str = Field(default="default", description="Namespace of the job and its pods.")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name_is_dns_label(cls, name: str) -> str:
        if len(name) > MAX_JOB_NAME or not _DNS_LABEL.match(name):
            raise ValueError(
                f"must be a DNS-1123 label (lowercase letters, digits, '-') of at most "
                f"{MAX_JOB_NAME} characters, got {name!r}"
            )
        return name


class ModelSpec(ApiModel):
    """The DLRM: 13 dense features through the bottom MLP, one embedding table per sparse feature,
    pairwise dot interactions, then the top MLP (Naumov et al. 2019; torchrec.models.dlrm)."""

    dense_features: int = Field(default=13, ge=1, le=4096, description="Number of dense input features.")
    sparse_features: int = Field(
        default=26, ge=1, le=1024, description="Number of categorical features (one embedding table each)."
    )
    rows_per_table: int = Field(
        default=100_000, ge=2, le=2**31 - 1, description="Rows of every table unless tableRows says otherwise."
    )
    table_rows: list[Annotated[int, Field(ge=2, le=2**31 - 1)]] | None = Field(
        default=None, description="Rows per table, one entry per sparse feature; overrides rowsPerTable."
    )
    embedding_dim: int = Field(default=16, ge=1, le=1024, description="Width of every embedding row.")
    bottom_mlp: list[PositiveInt] = Field(
        default_factory=lambda: [512, 256],
        description="Hidden layer widths of the bottom (dense) MLP; a final layer of embeddingDim is added.",
    )
    top_mlp: list[PositiveInt] = Field(
        default_factory=lambda: [512, 256],
        description="Hidden layer widths of the top (over) MLP; a final layer of width 1 is added.",
    )

    @model_validator(mode="after")
    def _table_rows_match_features(self) -> ModelSpec:
        if self.table_rows is not None and len(self.table_rows) != self.sparse_features:
            raise ValueError(
                f"tableRows must list one entry per sparse feature ({self.sparse_features}), "
                f"got {len(self.table_rows)}"
            )
        return self

    def rows(self) -> list[int]:
        """Rows of each table, in feature order."""
        return list(self.table_rows) if self.table_rows is not None else [self.rows_per_table] * self.sparse_features


class SyntheticDataSpec(ApiModel):
    """Knobs of the synthetic Criteo-like generator (labels from a hidden teacher model)."""

    zipf_exponent: float = Field(default=1.1, gt=0.0, le=4.0, description="Skew of categorical ids (Zipf s).")
    teacher_scale: float = Field(
        default=1.0, gt=0.0, le=10.0, description="Strength of the teacher's logits: higher gives a higher AUC ceiling."
    )
    tail_signal: float = Field(
        default=0.0, ge=0.0, le=10.0,
        description="How much the long tail of each table matters: the per-id signal the rows outside a table's "
        "hottest 1% carry, as a multiple of what its hottest 1% carry. 0: the original teacher (the tail carries "
        "~0.1%, so losing its updates costs nothing); 0.5: the CPR benchmarks' harder teacher.")


class DataSpec(ApiModel):
    """Where training and evaluation samples come from."""

    source: Literal["synthetic", "criteo"] = Field(
        default="synthetic", description="synthetic (deterministic generator) or criteo (Kaggle/Terabyte TSV)."
    )
    path: str | None = Field(
        default=None, description="Criteo TSV file or directory (its files in natural order: day_2 before day_10); "
        "required for criteo.")
    eval_path: str | None = Field(
        default=None, description="Held-out Criteo TSV file or directory, sharing no file with path. Default: the "
        "last file of a path directory, or else the last evalSamples lines of the path file; training never reads "
        "them.")
    seed: int = Field(default=0, ge=0, description="Seed of the generator and of model initialisation.")
    train_samples: int = Field(
        default=2_000_000, ge=1, description="Samples to train on per epoch, all trainers together.")
    epochs: int = Field(
        default=1, ge=1, description="Passes each trainer makes over its part of the training data; every pass "
        "trains on the same samples, so the job trains on trainSamples * epochs samples.")
    eval_samples: int = Field(default=100_000, ge=1, description="Held-out samples for the final evaluation.")
    batch_size: int = Field(default=1024, ge=1, le=1_048_576, description="Samples per mini-batch per worker thread.")
    synthetic: SyntheticDataSpec = Field(default_factory=SyntheticDataSpec)

    @model_validator(mode="after")
    def _criteo_needs_path(self) -> DataSpec:
        if self.source == "criteo" and not self.path:
            raise ValueError("path is required when source is criteo")
        return self

    @property
    def planned_samples(self) -> int:
        """Samples the whole job trains on: trainSamples in each of its epochs."""
        return self.train_samples * self.epochs


class SyncAlgorithm(enum.StrEnum):
    EASGD = "easgd"
    MA = "ma"
    BMUF = "bmuf"


class SyncMode(enum.StrEnum):
    BACKGROUND = "background"  # ShadowSync: a shadow thread syncs off the critical path
    FOREGROUND = "foreground"  # baseline: sync inside the training loop every `everySteps` steps
    NONE = "none"  # no dense synchronisation at all (for experiments only)


class SyncSpec(ApiModel):
    """Dense-parameter synchronisation between trainers (ShadowSync, Zheng et al. 2020)."""

    mode: SyncMode = Field(default=SyncMode.BACKGROUND, description="background (ShadowSync), foreground, or none.")
    algorithm: SyncAlgorithm = Field(default=SyncAlgorithm.EASGD, description="easgd, ma or bmuf.")
    elastic_alpha: float = Field(
        default=0.5, gt=0.0, le=1.0, description="S-EASGD moving rate: the share of the gap closed per exchange."
    )
    every_steps: int = Field(default=1, ge=1, description="Foreground mode: synchronise every this many steps.")
    block_momentum: float | None = Field(
        default=None, ge=0.0, lt=1.0, description="S-BMUF block momentum; default 1 - 1/trainers."
    )
    block_learning_rate: float = Field(default=1.0, gt=0.0, le=10.0, description="S-BMUF block learning rate.")
    min_interval_seconds: float = Field(
        default=0.5, ge=0.0, le=60.0,
        description="Background mode: shortest time between two exchanges. Each exchange costs CPU that "
        "CPU-bound trainers lack: on 2 cores 0.5 s (a sync gap of ~8 steps) trains ~12% faster than 0.05 s at "
        "the same AUC.")


class TrainingSpec(ApiModel):
    """Optimisation: Adagrad on dense parameters, row-wise Adagrad on embedding rows."""

    dense_learning_rate: float = Field(default=0.01, gt=0.0, le=10.0)
    embedding_learning_rate: float = Field(default=0.05, gt=0.0, le=10.0)
    hogwild_threads: int = Field(default=2, ge=1, le=64, description="Worker threads sharing one dense replica.")
    prefetch_batches: int = Field(
        default=1, ge=0, le=8, description="Batches each worker prepares ahead (made, ids deduplicated, rows "
        "requested) while it computes; 0 prepares each batch on the critical path (the unpipelined trainer). A "
        "replacement re-reads at most hogwildThreads x (prefetchBatches + 2) batches its predecessor had in flight.")
    warmup_steps: int | None = Field(
        default=None, ge=0, description="Dense learning rate ramps up linearly over this many steps per trainer: "
        "Adagrad's first steps are sign-like and otherwise kill the bottom MLP's last ReLU units. Unset: half "
        "of each trainer's steps, at most 1000 (a short job would otherwise never leave its warmup).")
    sync: SyncSpec = Field(default_factory=SyncSpec)
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where the dense part runs; auto uses CUDA when a GPU is present."
    )
    progress_every_seconds: float = Field(default=1.0, gt=0.0, le=600.0)
    eval_every_samples: int | None = Field(
        default=None, ge=1, description="Trainer 0 measures held-out AUC this often (for learning curves).")
    eval_curve_samples: int = Field(default=16_384, ge=1, description="Held-out samples per curve point.")
    torch_threads: int = Field(default=1, ge=1, le=256, description="Intra-op threads per process.")


class Toleration(ApiModel):
    model_config = {**ApiModel.model_config, "extra": "allow"}

    key: str | None = None
    operator: str | None = None
    value: str | None = None
    effect: str | None = None
    toleration_seconds: int | None = None


class RoleSpec(ApiModel):
    """How many replicas of a role, and where and how its pods run on Kubernetes."""

    replicas: int = Field(default=1, ge=1, le=1024)
    image: str | None = Field(default=None, description="Container image; default spec.image.")
    resources: dict[str, dict[str, int | str]] = Field(
        default_factory=dict, description="Kubernetes resources (requests/limits), e.g. nvidia.com/gpu."
    )
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables.")
    template: PodTemplate | None = Field(
        default=None, description="Kubernetes only: a PodTemplateSpec fragment (volumes, imagePullSecrets, "
        "serviceAccountName, affinity, envFrom, ...) merged under the operator's own pod fields, which stay protected.")

    @field_validator("resources")
    @classmethod
    def _resources_shape(cls, resources: dict[str, dict[str, int | str]]) -> dict[str, dict[str, int | str]]:
        unknown = set(resources) - {"requests", "limits"}
        if unknown:
            raise ValueError(f"only 'requests' and 'limits' are allowed, got {sorted(unknown)}")
        return resources


class TrainerRoleSpec(RoleSpec):
    replicas: int = Field(default=2, ge=1, le=1024, description="Trainers (data-parallel dense replicas).")


class EmbeddingServerRoleSpec(RoleSpec):
    replicas: int = Field(default=2, ge=1, le=1024, description="Embedding servers (hash shards of every table).")


class SyncServerRoleSpec(RoleSpec):
    replicas: int = Field(default=1, ge=1, le=1, description="Exactly 1: the one central dense copy.")


class WorkerRoleSpec(RoleSpec):
    replicas: int = Field(default=2, ge=1, le=1024, description="Worker pods of a pytorch workload (nodes).")


class ReplicasSpec(ApiModel):
    trainer: TrainerRoleSpec = Field(default_factory=TrainerRoleSpec)
    embedding_server: EmbeddingServerRoleSpec = Field(default_factory=EmbeddingServerRoleSpec)
    sync_server: SyncServerRoleSpec = Field(default_factory=SyncServerRoleSpec)
    worker: WorkerRoleSpec = Field(
        default_factory=WorkerRoleSpec, description="workload pytorch: the worker pods (the DLRM roles are unused).")

    def for_role(self, role: Role) -> RoleSpec:
        return {Role.TRAINER: self.trainer, Role.EMBEDDING_SERVER: self.embedding_server,
                Role.SYNC_SERVER: self.sync_server, Role.WORKER: self.worker}[role]

    def count(self, role: Role) -> int:
        return self.for_role(role).replicas


class RecoveryMode(enum.StrEnum):
    PARTIAL = "partial"  # CPR: replace only the failed replica, reload only its shard
    FULL = "full"  # baseline: restart everything, roll back to the last checkpoint
    AUTO = "auto"  # CPR's benefit test picks partial or full


class CheckpointStrategy(enum.StrEnum):
    FULL = "full"
    MFU = "mfu"  # most frequently used rows first
    SSU = "ssu"  # sub-sampled set of used rows


class CheckpointVolumeKind(enum.StrEnum):
    CLAIM_PER_REPLICA = "claimPerReplica"  # one PVC per server rank, created and owned by the operator
    SHARED_CLAIM = "sharedClaim"  # one existing claim for every server (needs ReadWriteMany)
    EMPTY_DIR = "emptyDir"  # dies with the pod: a replacement loses its shard


class AccessMode(enum.StrEnum):
    READ_WRITE_ONCE = "ReadWriteOnce"
    READ_WRITE_ONCE_POD = "ReadWriteOncePod"
    READ_WRITE_MANY = "ReadWriteMany"


class RetainPolicy(enum.StrEnum):
    DELETE = "Delete"  # claims are owned by the TrainingJob and deleted with it
    RETAIN = "Retain"  # claims outlive the job (no ownerReference)


class CheckpointVolumeSpec(ApiModel):
    """Where servers keep checkpoints on Kubernetes. The default survives pod replacement without
    ReadWriteMany: every embedding-server rank and the sync server get a claim of their own."""

    kind: CheckpointVolumeKind = Field(
        default=CheckpointVolumeKind.CLAIM_PER_REPLICA, description="claimPerReplica, sharedClaim or emptyDir.")
    size: str = Field(default="10Gi", pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$",
                      description="claimPerReplica: requested storage per claim (a Kubernetes quantity).")
    storage_class_name: str | None = Field(
        default=None, description="claimPerReplica: storage class; unset uses the cluster's default class.")
    access_modes: list[AccessMode] = Field(
        default_factory=lambda: [AccessMode.READ_WRITE_ONCE], min_length=1,
        description="claimPerReplica: access modes.")
    claim_name: str | None = Field(default=None, description="sharedClaim: the existing claim's name.")
    retain_policy: RetainPolicy = Field(
        default=RetainPolicy.DELETE, description="claimPerReplica: Delete (with the job) or Retain.")

    @model_validator(mode="after")
    def _shared_needs_name(self) -> CheckpointVolumeSpec:
        if self.kind is CheckpointVolumeKind.SHARED_CLAIM and not self.claim_name:
            raise ValueError("claimName is required when kind is sharedClaim")
        return self


_S3_URL = re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s]*)?$")


class ObjectStoreSpec(ApiModel):
    """Checkpoints in an S3-compatible object store (AWS S3, MinIO, Ceph RGW, ...), reachable from every
    server pod: a replacement restores its shard from there wherever it is scheduled, with no volume to
    attach. Each job keeps its checkpoints under ``<url>/<namespace>/<job>/``."""

    url: str = Field(description="s3://<bucket>[/<prefix>]")
    endpoint: str | None = Field(
        default=None, pattern=r"^https?://[^\s/]+(/[^\s]*)?$",
        description="An S3-compatible store's endpoint (e.g. http://minio.minio:9000); unset: AWS S3.")
    region: str | None = Field(default=None, pattern=r"^[a-z0-9-]+$", description="The bucket's region.")
    credentials_secret: str | None = Field(
        default=None, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="A Secret in the job's namespace with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; unset: "
        "the pod's own identity (IRSA, workload identity). Local runs use the caller's environment.")

    @field_validator("url")
    @classmethod
    def _s3_url(cls, url: str) -> str:
        if not _S3_URL.match(url):
            raise ValueError(f"must be s3://<bucket>[/<prefix>] with a valid bucket name, got {url!r}")
        return url.rstrip("/")


class CheckpointSpec(ApiModel):
    strategy: CheckpointStrategy = Field(default=CheckpointStrategy.FULL, description="full, mfu or ssu.")
    interval_seconds: float | None = Field(
        default=None, gt=0.0, description="Fixed interval; unset lets the coordinator tune it."
    )
    initial_interval_seconds: float = Field(default=60.0, gt=0.0, description="Interval before any tuning.")
    min_interval_seconds: float = Field(default=5.0, gt=0.0)
    max_interval_seconds: float = Field(
        default=86_400.0, gt=0.0, description="Longest interval the tuner may choose. CPR-scale jobs want hours: a "
        "1-hour cap made partial recovery cost 10% instead of 1.1% at 1,000 nodes (trainingjob simulate).")
    hot_fraction: float = Field(default=0.25, gt=0.0, le=1.0, description="MFU: share of rows saved, hottest first.")
    sample_fraction: float = Field(default=0.25, gt=0.0, le=1.0, description="SSU: share of accessed rows sampled.")
    full_every: int = Field(default=4, ge=1, description="MFU/SSU: every this many saves is a full save.")
    max_consecutive_failures: int = Field(
        default=10, ge=1, le=10_000, description="A replica whose checkpoint saves fail this many times in a row "
        "(storage full, unwritable, unreachable) fails the job (CheckpointFailing); before that training goes on "
        "and the CheckpointFailing condition says which saves fail and why.")
    storage: str | None = Field(
        default=None, description="Local runs: checkpoint directory, default runs/<job>/checkpoints. "
        "'pvc:<claim>' is the short form of volume {kind: sharedClaim, claimName: <claim>}; 's3://<bucket>/<prefix>' "
        "of objectStore {url: ...}.")
    volume: CheckpointVolumeSpec = Field(default_factory=CheckpointVolumeSpec)
    object_store: ObjectStoreSpec | None = Field(
        default=None, description="Keep checkpoints in an S3-compatible object store instead of a volume.")

    @model_validator(mode="after")
    def _storage_shorthand(self) -> CheckpointSpec:
        if self.storage and self.storage.startswith("pvc:"):
            claim = self.storage.removeprefix("pvc:")
            if not claim:
                raise ValueError("storage 'pvc:' needs a claim name ('pvc:<claim>')")
            self.volume = CheckpointVolumeSpec(kind=CheckpointVolumeKind.SHARED_CLAIM, claim_name=claim)
            self.storage = None
        elif self.storage and self.storage.startswith("s3://"):
            if self.object_store is not None:
                raise ValueError("storage 's3://...' and objectStore both name an object store: keep one")
            if not _S3_URL.match(self.storage.rstrip("/")):
                raise ValueError(f"storage must be s3://<bucket>[/<prefix>] with a valid bucket name, got "
                                 f"{self.storage!r}")
            self.object_store = ObjectStoreSpec(url=self.storage)
            self.storage = None
        # (A volume equal to the default is what a serialised spec carries: not a second choice.)
        if self.object_store is not None and self.volume != CheckpointVolumeSpec():
            raise ValueError("objectStore and volume both say where checkpoints live: keep one")
        return self

    @model_validator(mode="after")
    def _interval_bounds(self) -> CheckpointSpec:
        if self.min_interval_seconds > self.max_interval_seconds:
            raise ValueError("minIntervalSeconds must not exceed maxIntervalSeconds")
        return self


class RestartBudget(ApiModel):
    max_restarts: int = Field(default=5, ge=0, description="Restarts allowed per replica inside the window.")
    window_seconds: float = Field(default=600.0, gt=0.0)


class FailureAction(enum.StrEnum):
    FAIL_JOB = "FailJob"  # no replacement can help: fail the whole job
    COUNT = "Count"  # replace it; counts against the restart budget and the backoff
    IGNORE = "Ignore"  # replace it at once; counts against neither (a disruption, not the replica's fault)


# Failures that are the cluster's doing, not the replica's: by default they count against neither the
# restart budget nor the backoff (a node drain must not fail a job in a minute). The pod's own reason
# (Evicted, Preempting), the DisruptionTarget condition's reasons, and a pod that was deleted.
DISRUPTION_REASONS = frozenset({
    "Deleted", "Evicted", "Preempting", "Preempted", "Shutdown", "NodeShutdown", "Terminated", "NodeLost",
    "DisruptionTarget", "PreemptionByScheduler", "PreemptionByKubeScheduler", "DeletionByTaintManager",
    "EvictionByEvictionAPI", "DeletionByPodGC", "TerminationByKubelet",
})


class ExitCodeMatch(ApiModel):
    operator: Literal["In", "NotIn"] = Field(description="In: the exit code is one of values; NotIn: it is none.")
    values: list[Annotated[int, Field(ge=0, le=255)]] = Field(min_length=1, max_length=255)


class FailureRule(ApiModel):
    """One rule of a failure policy, like a Job's podFailurePolicy: the first rule that matches decides."""

    action: FailureAction = Field(description="FailJob, Count or Ignore.")
    on_exit_codes: ExitCodeMatch | None = Field(default=None, description="Match the replica's exit code.")
    on_reasons: list[str] | None = Field(
        default=None, min_length=1, description="Match the failure's reason: Evicted, OOMKilled, Deleted, "
        "HeartbeatTimeout, NoHeartbeat, ServerExited, a DisruptionTarget reason, ExitCode<N>, ...")

    @model_validator(mode="after")
    def _one_match(self) -> FailureRule:
        if (self.on_exit_codes is None) == (self.on_reasons is None):
            raise ValueError("a rule needs exactly one of onExitCodes and onReasons")
        return self


class BackoffSpec(ApiModel):
    """Backoff for a replica that keeps failing: its first ``immediateReplacements`` counted failures within
    ``windowSeconds`` are replaced at once, later ones after ``initialSeconds`` doubling to ``maxSeconds``;
    a replica that stays healthy for a window starts over."""

    enabled: bool = Field(default=True, description="false: every replacement is immediate (chaos benchmarks).")
    immediate_replacements: int = Field(default=2, ge=0, le=100)
    window_seconds: float = Field(default=600.0, gt=0.0)
    initial_seconds: float = Field(default=10.0, gt=0.0, le=3600.0)
    max_seconds: float = Field(default=300.0, gt=0.0, le=86_400.0)

    @model_validator(mode="after")
    def _bounds(self) -> BackoffSpec:
        if self.initial_seconds > self.max_seconds:
            raise ValueError("initialSeconds must not exceed maxSeconds")
        return self


class FailurePolicySpec(ApiModel):
    rules: list[FailureRule] = Field(
        default_factory=list, description="Checked in order before the defaults: exit code 78 fails the job, a "
        "disruption is ignored (unless countDisruptions), anything else counts.")
    count_disruptions: bool = Field(
        default=False, description="Count evictions, preemptions, drains and deleted pods against the restart "
        "budget like crashes.")
    backoff: BackoffSpec = Field(default_factory=BackoffSpec)


class StandbySpec(ApiModel):
    """Warm standby replicas per role: processes (pods on Kubernetes) that have imported torch and connected to
    Redis, waiting for a failed rank to take over. A replacement then skips scheduling, the image pull and the
    imports while the survivors wait for it."""

    trainer: int = Field(default=0, ge=0, le=16, description="Warm trainers: they work with any checkpoint storage.")
    embedding_server: int = Field(
        default=0, ge=0, le=16, description="Warm embedding servers. Kubernetes: needs checkpoints a standby pod can "
        "reach for any rank (volume sharedClaim with ReadWriteMany, or objectStore); a ReadWriteOnce claim per rank "
        "cannot be mounted by a pod that is already running.")
    sync_server: int = Field(default=0, ge=0, le=16, description="Warm sync servers (same storage rule).")

    def count(self, role: Role) -> int:
        return {Role.TRAINER: self.trainer, Role.EMBEDDING_SERVER: self.embedding_server,
                Role.SYNC_SERVER: self.sync_server}.get(role, 0)


class RecoverySpec(ApiModel):
    """What happens when a replica fails (ARCHITECTURE.md §4-5)."""

    mode: RecoveryMode = Field(default=RecoveryMode.PARTIAL, description="partial (CPR), full or auto.")
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    mtbf_prior_hours: float = Field(
        default=24.0, gt=0.0, description="Prior mean time between failures of one replica, in hours."
    )
    pls_target: float = Field(
        default=0.02, gt=0.0, lt=1.0, description="Partial recovery: target portion of lost samples (PLS)."
    )
    restart_budget: RestartBudget = Field(default_factory=RestartBudget)
    failure_policy: FailurePolicySpec = Field(default_factory=FailurePolicySpec)
    heartbeat_timeout_seconds: float = Field(
        default=15.0, gt=0.0, description="A replica silent this long is treated as failed (hung)."
    )
    startup_timeout_seconds: float = Field(
        default=600.0, ge=10.0, le=86_400.0,
        description="A started replica may take this long to heartbeat for the first time, and a server this "
        "long to serve (its startup probe's budget): importing torch and loading a large shard take minutes.")
    peer_wait_seconds: float = Field(
        default=1800.0, ge=10.0, le=86_400.0,
        description="Trainers wait this long for a lost server's replacement (scheduling, image pull, shard "
        "load) before giving up; they show 'waiting for <replica>' meanwhile.")
    standby: StandbySpec = Field(
        default_factory=StandbySpec, description="Warm standby replicas per role, taking over failed ranks.")


class RedisSpec(ApiModel):
    url: str | None = Field(
        default=None, description="Coordination Redis; unset: an embedded server (local) or the chart's Redis."
    )

    @field_validator("url")
    @classmethod
    def _redis_scheme(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"must start with redis://, rediss:// or unix://, got {url!r}")
        return url


class GangSpec(ApiModel):
    """All replicas placed at once or none: a PodGroup of every replica for a gang scheduler, so GPUs taken by
    the first pods do not sit idle while the rest are unschedulable."""

    scheduler: Literal["volcano", "coscheduling"] = Field(
        description="volcano (PodGroup scheduling.volcano.sh/v1beta1) or coscheduling (the scheduler-plugins "
        "PodGroup scheduling.x-k8s.io/v1alpha1).")
    scheduler_name: str | None = Field(
        default=None, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="The pods' schedulerName; default volcano, or scheduler-plugins-scheduler for coscheduling.")
    queue: str | None = Field(default=None, description="volcano: the Volcano queue of the PodGroup.")
    schedule_timeout_seconds: int = Field(
        default=300, ge=1, le=86_400, description="coscheduling: how long a partly placed gang may wait.")

    def pod_scheduler(self) -> str:
        return self.scheduler_name or ("volcano" if self.scheduler == "volcano" else "scheduler-plugins-scheduler")


class RunPolicySpec(ApiModel):
    """How long a job may wait and run, like a Kubernetes Job's (and Kubeflow's runPolicy)."""

    suspend: bool = Field(
        default=False, description="true deletes every pod and keeps the job's progress and checkpoints; false "
        "again recreates them, and each resumes where it stopped (trainers from their cursors, servers from their "
        "latest checkpoints). A job created suspended starts nothing until resumed (how a queue such as Kueue "
        "admits it).")
    pending_timeout_seconds: float | None = Field(
        default=None, gt=0.0, le=604_800.0,
        description="Fail the job when a replica has not started this long after it was created (stuck on an "
        "image pull, unschedulable, a refused create), with that reason. Unset: wait; the Stuck condition and "
        "a Warning event say why.")
    active_deadline_seconds: float | None = Field(
        default=None, gt=0.0, description="Fail the job (DeadlineExceeded) once it has run this long.")
    gang: GangSpec | None = Field(
        default=None, description="Kubernetes: place every replica at once (Volcano or scheduler-plugins "
        "coscheduling); a replacement joins the running gang.")
    clean_pod_policy: Literal["Running", "All"] = Field(
        default="Running", description="When the job finishes: Running stops what still runs and keeps finished "
        "pods (their logs); All deletes those too.")
    ttl_seconds_after_finished: float | None = Field(
        default=None, ge=0.0, description="Kubernetes: delete the TrainingJob (and its children) this long after "
        "it Succeeded or Failed. Unset: keep it.")


class PyTorchSpec(ApiModel):
    """workload pytorch: any torch.distributed script (torchrun-style), run by an agent in each worker pod that
    starts ``procsPerWorker`` processes with the env torch.distributed expects (RANK, WORLD_SIZE, LOCAL_RANK,
    LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and restarts them in place when a peer pod is replaced. The
    script loads and saves its state with the ``trainingjob_torch`` helpers (the newest complete distributed
    checkpoint, saves when the tuned interval says so, progress to the coordination store)."""

    command: list[Annotated[str, Field(min_length=1)]] = Field(
        min_length=1, description="The script's command line, e.g. [python, -m, llama_sft] or [python, train.py, "
        "--lr, '3e-4']; run once per process, in the image's working directory.")
    procs_per_worker: int = Field(
        default=1, ge=1, le=64, description="Processes per worker pod (torchrun's --nproc-per-node: one per GPU).")
    backend: Literal["auto", "gloo", "nccl"] = Field(
        default="auto", description="torch.distributed backend the helpers initialise: auto is nccl with a GPU, "
        "else gloo.")
    master_port: int = Field(
        default=29500, ge=1024, le=65535, description="Kubernetes: the port the rendezvous store (c10d TCPStore) "
        "listens on in the pod of rank 0; locally a free port is picked.")
    peer_failure_grace_seconds: float = Field(
        default=30.0, ge=1.0, le=3600.0, description="When a worker's process fails first (the others' then "
        "fail in their collectives), the coordinator gets this long to announce a new generation (the pod itself "
        "is being replaced: the survivors restart in place); without one, the pod fails with the process's exit "
        "code and is replaced. Keep it above recovery.heartbeatTimeoutSeconds.")
    rendezvous_timeout_seconds: float = Field(
        default=1800.0, ge=10.0, le=86_400.0, description="How long a worker waits for every peer to join a "
        "generation (a replacement's scheduling and image pull) before its pod fails.")


def _camel(role: Role) -> str:
    head, *rest = role.value.split("-")
    return head + "".join(part.title() for part in rest)


def warmup_steps(spec: TrainingJobSpec) -> int:
    """The dense learning rate's warmup, in steps of one trainer: ``training.warmupSteps``, or half of a
    trainer's steps (its worker threads' batches of all epochs), at most 1000."""
    if spec.training.warmup_steps is not None:
        return spec.training.warmup_steps
    steps = spec.data.planned_samples // (spec.replicas.trainer.replicas * spec.data.batch_size)
    return min(1000, steps // 2)


class TrainingJobSpec(ApiModel):
    workload: Workload = Field(
        default=Workload.DLRM, description="dlrm (the recommendation model, the default) or pytorch (any "
        "torch.distributed script, spec.pytorch).")
    pytorch: PyTorchSpec | None = Field(default=None, description="workload pytorch: the script and its processes.")
    image: str | None = Field(
        default=None, description="Trainer image for every role unless a role overrides it; default: the operator's.")
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    replicas: ReplicasSpec = Field(default_factory=ReplicasSpec)
    recovery: RecoverySpec = Field(default_factory=RecoverySpec)
    redis: RedisSpec = Field(default_factory=RedisSpec)
    run_policy: RunPolicySpec = Field(default_factory=RunPolicySpec)
    network_policy: bool = Field(
        default=True, description="Kubernetes: a NetworkPolicy lets only this job's pods reach its servers (gRPC "
        "port 50051); any other ingress to the server pods (a sidecar's port too) is refused where the network "
        "plugin enforces policies.")

    @model_validator(mode="after")
    def _workload_fields(self) -> TrainingJobSpec:
        if self.workload is Workload.PYTORCH:
            if self.pytorch is None:
                raise ValueError("pytorch is required when workload is pytorch (pytorch.command: the script to run)")
            checkpoint = self.recovery.checkpoint
            if checkpoint.volume.kind is CheckpointVolumeKind.CLAIM_PER_REPLICA and checkpoint.object_store is None:
                raise ValueError("recovery.checkpoint.volume.kind: a pytorch workload's ranks save and load one "
                                 "distributed checkpoint together, so it needs sharedClaim (a ReadWriteMany claim "
                                 "when workers run on several nodes) or emptyDir, not claimPerReplica")
            if checkpoint.object_store is not None:
                raise ValueError("recovery.checkpoint.objectStore: a pytorch workload saves distributed "
                                 "checkpoints to a filesystem; use volume sharedClaim")
        elif self.pytorch is not None:
            raise ValueError("pytorch is set but workload is dlrm: set workload: pytorch, or remove pytorch")
        return self

    @model_validator(mode="after")
    def _standby_storage(self) -> TrainingJobSpec:
        standby, checkpoint = self.recovery.standby, self.recovery.checkpoint
        if self.workload is Workload.PYTORCH and standby != StandbySpec():
            raise ValueError("recovery.standby: a pytorch workload restarts its workers in place; standbys are for "
                             "the dlrm roles")
        per_rank_claims = (checkpoint.volume.kind is CheckpointVolumeKind.CLAIM_PER_REPLICA
                           and checkpoint.object_store is None)
        for role in (Role.EMBEDDING_SERVER, Role.SYNC_SERVER):
            if standby.count(role) and per_rank_claims:
                raise ValueError(
                    f"recovery.standby.{_camel(role)}: a standby server must reach the checkpoints of whichever rank "
                    "it takes over, and a running pod cannot mount another rank's ReadWriteOnce claim "
                    "(volume kind claimPerReplica); use recovery.checkpoint.volume.kind sharedClaim (ReadWriteMany) "
                    "or recovery.checkpoint.objectStore, or set it to 0")
        return self

    def roles(self) -> tuple[Role, ...]:
        """The replica roles this workload runs, servers first (trainers need them to start)."""
        return PYTORCH_ROLES if self.workload is Workload.PYTORCH else ROLES

    def completing_role(self) -> Role:
        """The role whose replicas all exiting 0 finishes the job."""
        return Role.WORKER if self.workload is Workload.PYTORCH else Role.TRAINER

    @model_validator(mode="after")
    def _one_scheduler(self) -> TrainingJobSpec:
        if self.run_policy.gang is not None:
            for role in self.roles():
                template = self.replicas.for_role(role).template
                if template is not None and template.spec.scheduler_name is not None:
                    raise ValueError(f"replicas.{_camel(role)}.template.spec.schedulerName and runPolicy.gang both "
                                     "choose the scheduler: keep one (runPolicy.gang.schedulerName)")
        return self


# What cannot change once a job runs: replicas started with the old spec would train beside replacements
# started with the new one (two models, two learning rates, another data shard). The number of embedding
# servers (or trainers) would re-shard the tables (or the data); checkpoints would be looked for elsewhere.
# Everything else (images, resources, templates, env, the recovery and run policies, the checkpoint cadence)
# applies to replacements from then on.
FROZEN_WHILE_RUNNING: tuple[tuple[str, ...], ...] = (
    ("workload",), ("pytorch",), ("replicas", "worker", "replicas"),
    ("model",), ("data",), ("redis",),
    ("training", "denseLearningRate"), ("training", "embeddingLearningRate"), ("training", "hogwildThreads"),
    ("training", "prefetchBatches"), ("training", "warmupSteps"), ("training", "sync"), ("training", "device"),
    ("training", "torchThreads"),
    ("replicas", "trainer", "replicas"), ("replicas", "embeddingServer", "replicas"),
    ("replicas", "syncServer", "replicas"),
    ("recovery", "checkpoint", "storage"), ("recovery", "checkpoint", "volume"),
    ("recovery", "checkpoint", "objectStore"),
)


def frozen_change(old: TrainingJobSpec, new: TrainingJobSpec) -> tuple[str, str] | None:
    """(field, why) of the first field a running job cannot change that ``new`` changes; else None."""
    before, after = old.to_wire(), new.to_wire()
    for path in FROZEN_WHILE_RUNNING:
        a: object = before
        b: object = after
        for key in path:
            a = a.get(key) if isinstance(a, dict) else None
            b = b.get(key) if isinstance(b, dict) else None
        if a != b:
            return (f"spec.{'.'.join(path)}", "cannot change while the job runs (replicas started with the old value "
                    "would train beside replacements started with the new one); delete and recreate the job")
    return None


def default_image() -> str:
    """The operator's default trainer image (the chart sets TJ_DEFAULT_IMAGE), else the release's."""
    import os

    return os.environ.get("TJ_DEFAULT_IMAGE") or DEFAULT_IMAGE


class TrainingJob(ApiModel):
    """A TrainingJob manifest as the user writes it (the status is optional and written by coordinators)."""

    model_config = {**ApiModel.model_config, "extra": "ignore"}

    api_version: Literal["training.cpr.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["TrainingJob"]
    metadata: ObjectMeta
    spec: TrainingJobSpec = Field(default_factory=TrainingJobSpec)

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace

    def spec_json(self) -> str:
        """The spec as the JSON string passed to every replica (TJ_SPEC)."""
        return self.spec.model_dump_json(by_alias=True)


def spec_from_json(text: str) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate_json(text)
