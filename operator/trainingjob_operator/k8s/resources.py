"""Kubernetes objects of a TrainingJob, rendered as plain dicts. Pure: no API calls, no clock.

One pod per replica with a stable name ``<job>-<role>-<rank>`` (a replacement reuses the name, so
DNS names and Redis member keys stay put), a headless Service that gives every pod a DNS name
``<pod>.<job>.<namespace>.svc``, and a ConfigMap holding the spec as JSON (``TJ_SPEC``).

Labels (all values are DNS labels):

- ``training.cpr.dev/job``: the TrainingJob's name;
- ``training.cpr.dev/role``: ``embedding-server``, ``sync-server`` or ``trainer``;
- ``training.cpr.dev/rank``: ``0`` .. ``replicas - 1`` within the role;
- ``training.cpr.dev/standby``: ``true`` on a warm standby pod (``<job>-<role>-standby-<suffix>``), which has
  no rank until the operator assigns it one: it then takes the rank label and keeps its own name;
- ``app.kubernetes.io/{name,instance,component,part-of,managed-by}``.

Every child carries a controller ownerReference to the TrainingJob, so a real cluster's garbage
collector removes them with the job (the operator also deletes them itself, see handlers.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from trainingjob_operator.api.loading import ManifestError, parse_manifest
from trainingjob_operator.api.spec import (
    API_VERSION,
    GROUP,
    KIND,
    CheckpointVolumeKind,
    RetainPolicy,
    Role,
    RoleSpec,
    TrainingJob,
    Workload,
    default_image,
)
from trainingjob_operator.api.template import TMP_VOLUME, PodTemplate
from trainingjob_operator.core import contract
from trainingjob_operator.reconcile import ReplicaId

LABEL_JOB = f"{GROUP}/job"
LABEL_ROLE = f"{GROUP}/role"
LABEL_RANK = f"{GROUP}/rank"
ANNOTATION_GENERATION = f"{GROUP}/generation"  # the recovery generation the pod was created in
LABEL_STANDBY = f"{GROUP}/standby"  # "true" on a warm standby pod (no rank label until it takes one over)
ANNOTATION_ASSIGNED_AT = f"{GROUP}/assigned-at"  # when a standby took its rank over (epoch seconds)
STANDBY_INFIX = "-standby-"

APP_NAME = "dlrm-trainer"
MANAGED_BY = "trainingjob-operator"
CONTAINER = "dlrm"
GRPC_PORT = contract.GRPC_PORT  # every server role serves gRPC (and grpc.health.v1) here
CHECKPOINT_MOUNT = contract.CHECKPOINT_MOUNT
CHECKPOINT_VOLUME = "checkpoints"
SPEC_KEY = "spec.json"
GPU_RESOURCE = "nvidia.com/gpu"
TERMINATION_GRACE_S = 30  # servers flush and exit on SIGTERM; a dead pod is deleted with grace 0
IMAGE_UID = 10001  # the trainer image's USER (trainer_image/Dockerfile)
PROBE_PERIOD_S = 5

CONTRACT_ENV = contract.CONTRACT_ENV
SERVER_ROLES = frozenset({Role.EMBEDDING_SERVER, Role.SYNC_SERVER})


@dataclass(frozen=True)
class Owner:
    """The TrainingJob as an owner of its children (from the object's metadata)."""

    name: str
    uid: str
    api_version: str = API_VERSION
    kind: str = KIND

    @classmethod
    def of(cls, body: Any) -> Owner:
        meta = body["metadata"]
        return cls(name=meta["name"], uid=meta.get("uid", ""))

    def reference(self) -> dict[str, Any]:
        return {"apiVersion": self.api_version, "kind": self.kind, "name": self.name, "uid": self.uid,
                "controller": True, "blockOwnerDeletion": True}


# --- admission ---------------------------------------------------------------------------------


def parse_job(body: Any) -> TrainingJob:
    """The TrainingJob model of a kopf body (or any mapping); raises ManifestError."""
    document = {key: body[key] for key in ("apiVersion", "kind", "metadata", "spec") if key in body}
    document["metadata"] = dict(document.get("metadata", {}))
    return parse_manifest(document)


def redis_url_of(job: TrainingJob, default: str | None) -> str:
    """The coordination Redis of a job: its own, else the operator's default; raises ManifestError."""
    url = job.spec.redis.url or default
    if not url:
        raise ManifestError("spec.redis.url", "is required: this operator has no default Redis "
                            "(set spec.redis.url, or run the operator with TJ_DEFAULT_REDIS_URL)")
    return url


# The RoleSpec fields an operator-wide default may fill (the chart's trainer.resources, .gpu, .nodeSelector,
# .tolerations, rendered into TJ_DEFAULT_TRAINER_ROLE).
DEFAULTABLE_ROLE_FIELDS = ("resources", "node_selector", "tolerations")


def with_trainer_defaults(job: TrainingJob, defaults: RoleSpec | None) -> TrainingJob:
    """The job with the operator's trainer defaults in every field its own spec leaves unset: a field the
    manifest sets (even to ``{}``) is the manifest's, whole."""
    if defaults is None:
        return job
    trainer = job.spec.replicas.trainer
    filled = {f: getattr(defaults, f) for f in DEFAULTABLE_ROLE_FIELDS
              if f not in trainer.model_fields_set and f in defaults.model_fields_set}
    if not filled:
        return job
    replicas = job.spec.replicas.model_copy(update={"trainer": trainer.model_copy(update=filled)})
    return job.model_copy(update={"spec": job.spec.model_copy(update={"replicas": replicas})})


def admit(body: Any, default_redis_url: str | None,
          trainer_defaults: RoleSpec | None = None) -> tuple[TrainingJob, str]:
    """Parse and check everything the operator needs to run a job; raises ManifestError."""
    job = with_trainer_defaults(parse_job(body), trainer_defaults)
    return job, redis_url_of(job, default_redis_url)


# --- names and labels --------------------------------------------------------------------------


def pod_name(job: str, rid: ReplicaId) -> str:
    return f"{job}-{rid.role.value}-{rid.rank}"


def service_name(job: str) -> str:
    return job


def config_map_name(job: str) -> str:
    return f"{job}-spec"


def job_labels(job: str) -> dict[str, str]:
    return {LABEL_JOB: job, "app.kubernetes.io/name": APP_NAME, "app.kubernetes.io/instance": job,
            "app.kubernetes.io/part-of": "trainingjob", "app.kubernetes.io/managed-by": MANAGED_BY}


def pod_labels(job: str, rid: ReplicaId) -> dict[str, str]:
    return {**job_labels(job), LABEL_ROLE: rid.role.value, LABEL_RANK: str(rid.rank),
            "app.kubernetes.io/component": rid.role.value}


def replica_of(labels: Any) -> ReplicaId | None:
    """The replica a pod's labels name, or None when they are not ours or malformed."""
    try:
        return ReplicaId(Role(labels[LABEL_ROLE]), int(labels[LABEL_RANK]))
    except (KeyError, ValueError, TypeError):
        return None


def standby_pod_name(job: str, role: Role, suffix: str) -> str:
    return f"{job}-{role.value}{STANDBY_INFIX}{suffix}"


def is_standby_name(job: str, role: Role, name: str) -> bool:
    return name.startswith(f"{job}-{role.value}{STANDBY_INFIX}")


def standby_of(labels: Any) -> Role | None:
    """The role of a standby pod still waiting for an assignment (labelled standby, no rank)."""
    try:
        if labels.get(LABEL_STANDBY) != "true" or LABEL_RANK in labels:
            return None
        return Role(labels[LABEL_ROLE])
    except (KeyError, ValueError, TypeError, AttributeError):
        return None


def _metadata(name: str, namespace: str, labels: dict[str, str], owner: Owner) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": labels, "ownerReferences": [owner.reference()]}


# --- the pod -----------------------------------------------------------------------------------


def _env_var(name: str, value: contract.EnvValue) -> dict[str, Any]:
    if isinstance(value, contract.FieldRef):
        return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": value.path}}}
    if isinstance(value, contract.ConfigMapKey):
        return {"name": name, "valueFrom": {"configMapKeyRef": {"name": value.name, "key": value.key}}}
    if isinstance(value, contract.SecretKey):
        return {"name": name, "valueFrom": {"secretKeyRef": {"name": value.name, "key": value.key}}}
    return {"name": name, "value": value}


def _env(job: TrainingJob, rid: ReplicaId, redis_url: str, generation: int,
         redis_secret: str | None) -> list[dict[str, Any]]:
    placement = contract.pod_placement(config_map_name(job.name), SPEC_KEY)
    env = contract.replica_env(job, rid, redis_url=redis_url, generation=generation, placement=placement,
                               redis_secret=redis_secret)
    return [_env_var(name, value) for name, value in env]


def _resources(raw: dict[str, dict[str, int | str]]) -> dict[str, dict[str, int | str]]:
    """Requests/limits as given; a GPU request without a limit gets one (extended resources need both)."""
    out = {kind: dict(values) for kind, values in raw.items()}
    gpu = out.get("requests", {}).get(GPU_RESOURCE)
    if gpu is not None and GPU_RESOURCE not in out.get("limits", {}):
        out.setdefault("limits", {})[GPU_RESOURCE] = gpu
    return out


def _grpc_probes(job: TrainingJob) -> dict[str, Any]:
    """Probes of a server. It serves only once its shard is loaded, so a started server is a ready one;
    the startup probe allows ``recovery.startupTimeoutSeconds`` for imports and a large shard's load."""
    grpc = {"port": GRPC_PORT, "service": ""}  # grpc.health.v1, overall server health
    startup_failures = max(1, math.ceil(job.spec.recovery.startup_timeout_seconds / PROBE_PERIOD_S))
    return {
        "startupProbe": {"grpc": grpc, "periodSeconds": PROBE_PERIOD_S, "timeoutSeconds": 2,
                         "failureThreshold": startup_failures},
        "readinessProbe": {"grpc": grpc, "periodSeconds": PROBE_PERIOD_S, "timeoutSeconds": 2, "failureThreshold": 3},
        "livenessProbe": {"grpc": grpc, "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 6},
    }


def checkpoint_claim_name(job: str, rid: ReplicaId) -> str:
    """The claim of one server rank, named as a StatefulSet would (``<volume>-<pod>``)."""
    return f"{CHECKPOINT_VOLUME}-{pod_name(job, rid)}"


def checkpoint_volume(job: TrainingJob, rid: ReplicaId) -> dict[str, Any]:
    """The volume a server keeps its checkpoints on (``recovery.checkpoint.volume``)."""
    volume = job.spec.recovery.checkpoint.volume
    if volume.kind is CheckpointVolumeKind.EMPTY_DIR:
        return {"name": CHECKPOINT_VOLUME, "emptyDir": {}}
    claim = volume.claim_name if volume.kind is CheckpointVolumeKind.SHARED_CLAIM else None
    return {"name": CHECKPOINT_VOLUME,
            "persistentVolumeClaim": {"claimName": claim or checkpoint_claim_name(job.name, rid)}}


def render_checkpoint_claims(job: TrainingJob, *, owner: Owner) -> list[dict[str, Any]]:
    """One claim per server rank for ``claimPerReplica`` (none otherwise). A replacement pod mounts
    its predecessor's claim, so ReadWriteOnce is enough; with ``retainPolicy: Retain`` the claims carry
    no ownerReference and outlive the job."""
    volume = job.spec.recovery.checkpoint.volume
    if volume.kind is not CheckpointVolumeKind.CLAIM_PER_REPLICA or job.spec.recovery.checkpoint.object_store:
        return []
    claims = []
    for rid in server_replicas(job):
        metadata = _metadata(checkpoint_claim_name(job.name, rid), job.namespace, pod_labels(job.name, rid), owner)
        if volume.retain_policy is RetainPolicy.RETAIN:
            del metadata["ownerReferences"]
        spec: dict[str, Any] = {"accessModes": [m.value for m in volume.access_modes],
                                "resources": {"requests": {"storage": volume.size}}}
        if volume.storage_class_name:
            spec["storageClassName"] = volume.storage_class_name
        claims.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": metadata, "spec": spec})
    return claims


def server_replicas(job: TrainingJob) -> list[ReplicaId]:
    if job.spec.workload is Workload.PYTORCH:
        return []
    return [ReplicaId(role, rank) for role in (Role.EMBEDDING_SERVER, Role.SYNC_SERVER)
            for rank in range(job.spec.replicas.count(role))]


def ephemeral_checkpoints(job: TrainingJob) -> bool:
    """True when a replaced server loses its checkpoints with its pod (``emptyDir``)."""
    checkpoints = job.spec.recovery.checkpoint
    return checkpoints.object_store is None and checkpoints.volume.kind is CheckpointVolumeKind.EMPTY_DIR


def checkpoint_durability(job: TrainingJob) -> tuple[bool, str, str]:
    """(durable, reason, message) for the CheckpointsDurable condition."""
    if (location := contract.object_store_location(job)) is not None:
        return (True, "ObjectStore", f"checkpoints in {location}")
    volume = job.spec.recovery.checkpoint.volume
    if volume.kind is CheckpointVolumeKind.EMPTY_DIR:
        return (False, "EmptyDir", "checkpoints live in each server pod's emptyDir: a replaced embedding server "
                "restarts its shard from initial weights and loses every update it had (set "
                "recovery.checkpoint.volume.kind: claimPerReplica or sharedClaim)")
    if volume.kind is CheckpointVolumeKind.SHARED_CLAIM:
        return (True, "SharedClaim", f"checkpoints on claim {volume.claim_name} (must be ReadWriteMany when "
                "servers run on several nodes)")
    modes = ", ".join(m.value for m in volume.access_modes)
    return (True, "ClaimPerReplica", f"one {volume.size} claim per server rank ({modes})")


def _pod_security() -> dict[str, Any]:
    """Pod Security ``restricted``; fsGroup makes a fresh (root-owned) volume writable by the image's user."""
    return {"runAsNonRoot": True, "runAsUser": IMAGE_UID, "runAsGroup": IMAGE_UID, "fsGroup": IMAGE_UID,
            "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"}}


def _container_security() -> dict[str, Any]:
    """Restricted, and a read-only root filesystem: a replica writes only to its mounts (checkpoints, /tmp)."""
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": True}


def _apply_template(pod: dict[str, Any], template: PodTemplate | None) -> dict[str, Any]:
    """Merge a role's pod template under the operator's fields (``api.template`` rejects what would
    override them): lists are appended, maps merged with the operator's keys winning, except the
    security contexts, whose fields the template overrides on purpose."""
    if template is None:
        return pod
    meta, spec, t = pod["metadata"], pod["spec"], template.spec
    meta["labels"] = {**template.metadata.labels, **meta["labels"]}
    meta["annotations"] = {**template.metadata.annotations, **meta.get("annotations", {})}
    (main,) = (c for c in spec["containers"] if c["name"] == CONTAINER)
    extra = template.main_container()
    main["env"] = [*extra.get("env", []), *main["env"]]
    if extra.get("envFrom"):
        main["envFrom"] = list(extra["envFrom"])
    if extra.get("volumeMounts"):
        main["volumeMounts"] = [*main.get("volumeMounts", []), *extra["volumeMounts"]]
    main["securityContext"] = {**main["securityContext"], **extra.get("securityContext", {})}
    spec["securityContext"] = {**spec["securityContext"], **t.security_context}
    spec["containers"] = [*spec["containers"], *template.sidecars()]
    if t.init_containers:
        spec["initContainers"] = list(t.init_containers)
    if t.volumes:
        spec["volumes"] = [*spec.get("volumes", []), *t.volumes]
    if t.node_selector:
        spec["nodeSelector"] = {**t.node_selector, **spec.get("nodeSelector", {})}
    if t.tolerations:
        spec["tolerations"] = [*spec.get("tolerations", []), *t.tolerations]
    if t.image_pull_secrets:
        spec["imagePullSecrets"] = [s.to_wire() for s in t.image_pull_secrets]
    if t.automount_service_account_token is not None:
        spec["automountServiceAccountToken"] = t.automount_service_account_token
    for key, value in (("serviceAccountName", t.service_account_name), ("priorityClassName", t.priority_class_name),
                       ("schedulerName", t.scheduler_name), ("runtimeClassName", t.runtime_class_name),
                       ("affinity", t.affinity)):
        if value is not None:
            spec[key] = value
    if t.topology_spread_constraints:
        spec["topologySpreadConstraints"] = list(t.topology_spread_constraints)
    return pod


def render_pod(job: TrainingJob, rid: ReplicaId, *, owner: Owner, redis_url: str, generation: int,
               redis_secret: str | None = None) -> dict[str, Any]:
    """The pod of one replica. ``redis_secret``: the job's Redis credentials (``render_redis_secret``); the
    pod then gets a URL without credentials and the job's own user from that Secret."""
    role = job.spec.replicas.for_role(rid.role)
    name = pod_name(job.name, rid)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": role.image or job.spec.image or default_image(),
        "command": contract.replica_command(rid.role),
        "env": _env(job, rid, redis_url, generation, redis_secret),
        "resources": _resources(role.resources),
    }
    container["securityContext"] = _container_security()
    spec: dict[str, Any] = {
        "restartPolicy": "Never",  # the operator replaces pods; the kubelet must not restart in place
        "hostname": name,
        "subdomain": service_name(job.name),
        "terminationGracePeriodSeconds": TERMINATION_GRACE_S,
        "securityContext": _pod_security(),
        "automountServiceAccountToken": False,  # the trainer never calls the Kubernetes API
        "containers": [container],
    }
    # The root filesystem is read-only; /tmp is an emptyDir (torch, matplotlib and grpc write there).
    container["volumeMounts"] = [{"name": TMP_VOLUME, "mountPath": "/tmp"}]
    spec["volumes"] = [{"name": TMP_VOLUME, "emptyDir": {}}]
    if rid.role in SERVER_ROLES:
        container["ports"] = [{"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"}]
        container.update(_grpc_probes(job))
        if job.spec.recovery.checkpoint.object_store is None:
            container["volumeMounts"].append({"name": CHECKPOINT_VOLUME, "mountPath": CHECKPOINT_MOUNT})
            spec["volumes"].append(checkpoint_volume(job, rid))
    if rid.role is Role.WORKER and job.spec.pytorch is not None:
        # The rendezvous store of each generation listens here in the pod of rank 0; every worker mounts the one
        # shared checkpoint volume (a distributed checkpoint is read by every rank).
        container["ports"] = [{"name": "c10d", "containerPort": job.spec.pytorch.master_port, "protocol": "TCP"}]
        container["volumeMounts"].append({"name": CHECKPOINT_VOLUME, "mountPath": CHECKPOINT_MOUNT})
        spec["volumes"].append(checkpoint_volume(job, rid))
    if role.node_selector:
        spec["nodeSelector"] = dict(role.node_selector)
    if role.tolerations:
        spec["tolerations"] = [t.to_wire() for t in role.tolerations]
    metadata = _metadata(name, job.namespace, pod_labels(job.name, rid), owner)
    metadata["annotations"] = {ANNOTATION_GENERATION: str(generation)}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}
    return _apply_gang(_apply_template(pod, role.template), job)


def render_standby_pod(job: TrainingJob, role: Role, suffix: str, *, owner: Owner, redis_url: str,
                       redis_secret: str | None = None) -> dict[str, Any]:
    """A warm standby of ``role``: the pod of the role's replicas (image, resources, volumes, ports, probes,
    user), without a rank. Probes and volumes cannot change once a pod exists, so the standby carries a server's
    from the start: it answers the gRPC health checks while it waits, and mounts the one volume every rank's
    checkpoints are on (``recovery.standby`` needs shared checkpoint storage for servers)."""
    pod = render_pod(job, ReplicaId(role, 0), owner=owner, redis_url=redis_url, generation=0,
                     redis_secret=redis_secret)
    name = standby_pod_name(job.name, role, suffix)
    meta, spec = pod["metadata"], pod["spec"]
    meta["name"] = name
    meta["labels"] = {k: v for k, v in meta["labels"].items() if k != LABEL_RANK} | {LABEL_STANDBY: "true"}
    # Never an empty map (the API server drops those, and the takeover's JSON patch adds keys to it).
    meta["annotations"] = {**meta["annotations"], ANNOTATION_GENERATION: "none"}
    spec["hostname"] = f"{role.value}-standby-{suffix}"[:63]  # a DNS label; the pod name may be longer
    (main,) = (c for c in spec["containers"] if c["name"] == CONTAINER)
    placement = contract.pod_placement(config_map_name(job.name), SPEC_KEY)
    env = contract.standby_env(job, role, redis_url=redis_url, placement=placement, redis_secret=redis_secret)
    ours = {name for name, _ in env}
    main["env"] = [*(e for e in main["env"] if e["name"] not in ours and e["name"] not in contract.ASSIGNED_ENV),
                   *(_env_var(k, v) for k, v in env)]
    return pod


def assignment_patch(uid: str, rank: int, generation: int, assigned_at: float) -> list[dict[str, Any]]:
    """The JSON patch that turns a standby pod into replica ``rank``: only that incarnation (uid) and only
    while it is still a standby (a second takeover of the same pod fails its test)."""
    def path(key: str, name: str) -> str:
        return f"/metadata/{key}/" + name.replace("~", "~0").replace("/", "~1")

    return [
        {"op": "test", "path": "/metadata/uid", "value": uid},
        {"op": "test", "path": path("labels", LABEL_STANDBY), "value": "true"},
        {"op": "remove", "path": path("labels", LABEL_STANDBY)},
        {"op": "add", "path": path("labels", LABEL_RANK), "value": str(rank)},
        {"op": "add", "path": path("annotations", ANNOTATION_GENERATION), "value": str(generation)},
        {"op": "add", "path": path("annotations", ANNOTATION_ASSIGNED_AT), "value": f"{assigned_at:.3f}"},
    ]


# --- the job's Redis credentials -----------------------------------------------------------------


def redis_secret_name(job: str) -> str:
    return f"{job}-redis"


def render_redis_secret(job: TrainingJob, *, owner: Owner, username: str, password: str) -> dict[str, Any]:
    """The job's own Redis user (an ACL user limited to the job's keys), for its pods' secretKeyRefs."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": _metadata(redis_secret_name(job.name), job.namespace, job_labels(job.name), owner),
            "stringData": {"username": username, "password": password}}


# --- network policy -----------------------------------------------------------------------------


def render_network_policy(job: TrainingJob, *, owner: Owner) -> dict[str, Any] | None:
    """Only this job's pods reach its servers' gRPC port (``spec.networkPolicy``): the embedding and sync servers
    accept no RPC from another job's trainer, or from anything else in the cluster. Kubelet probes come from the
    node and are not subject to it."""
    if not job.spec.network_policy:
        return None
    if job.spec.workload is Workload.PYTORCH:
        # Workers talk to each other on ports the collectives pick (gloo, NCCL): only the job's own pods may.
        workers = {"matchLabels": {LABEL_JOB: job.name, LABEL_ROLE: Role.WORKER.value}}
        return {
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": _metadata(f"{job.name}-workers", job.namespace, job_labels(job.name), owner),
            "spec": {"podSelector": workers, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {LABEL_JOB: job.name}}}]}]},
        }
    servers = {"matchLabels": {LABEL_JOB: job.name},
               "matchExpressions": [{"key": LABEL_ROLE, "operator": "In",
                                     "values": sorted(r.value for r in SERVER_ROLES)}]}
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": _metadata(f"{job.name}-servers", job.namespace, job_labels(job.name), owner),
        "spec": {"podSelector": servers, "policyTypes": ["Ingress"],
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {LABEL_JOB: job.name}}}],
                              "ports": [{"protocol": "TCP", "port": GRPC_PORT}]}]},
    }


# --- gang placement -----------------------------------------------------------------------------

VOLCANO_GROUP_ANNOTATION = "scheduling.k8s.io/group-name"
COSCHEDULING_GROUP_LABEL = "scheduling.x-k8s.io/pod-group"


def render_pod_group(job: TrainingJob, *, owner: Owner) -> dict[str, Any] | None:
    """The PodGroup of ``runPolicy.gang``: every replica of the job, placed at once or not at all."""
    gang = job.spec.run_policy.gang
    if gang is None:
        return None
    members = sum(job.spec.replicas.count(role) for role in job.spec.roles())
    metadata = _metadata(job.name, job.namespace, job_labels(job.name), owner)
    if gang.scheduler == "volcano":
        spec: dict[str, Any] = {"minMember": members}
        if gang.queue:
            spec["queue"] = gang.queue
        return {"apiVersion": "scheduling.volcano.sh/v1beta1", "kind": "PodGroup", "metadata": metadata, "spec": spec}
    return {"apiVersion": "scheduling.x-k8s.io/v1alpha1", "kind": "PodGroup", "metadata": metadata,
            "spec": {"minMember": members, "scheduleTimeoutSeconds": gang.schedule_timeout_seconds}}


def _apply_gang(pod: dict[str, Any], job: TrainingJob) -> dict[str, Any]:
    gang = job.spec.run_policy.gang
    if gang is None:
        return pod
    pod["spec"]["schedulerName"] = gang.pod_scheduler()
    if gang.scheduler == "volcano":
        pod["metadata"]["annotations"][VOLCANO_GROUP_ANNOTATION] = job.name
    else:
        pod["metadata"]["labels"][COSCHEDULING_GROUP_LABEL] = job.name
    return pod


# --- the Service and the ConfigMap --------------------------------------------------------------


def render_service(job: TrainingJob, *, owner: Owner) -> dict[str, Any]:
    """Headless: DNS records for every pod, ready or not (servers register in Redis anyway)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(service_name(job.name), job.namespace, job_labels(job.name), owner),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {LABEL_JOB: job.name},
            "ports": [{"name": "grpc", "port": GRPC_PORT, "targetPort": GRPC_PORT, "protocol": "TCP"}],
        },
    }


def render_config_map(job: TrainingJob, *, owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(config_map_name(job.name), job.namespace, job_labels(job.name), owner),
        "data": {SPEC_KEY: job.spec_json()},
    }
