"""Kubernetes objects of a TrainingJob, rendered as plain dicts. Pure: no API calls, no clock.

One pod per replica with a stable name ``<job>-<role>-<rank>`` (a replacement reuses the name, so
DNS names and Redis member keys stay put), a headless Service that gives every pod a DNS name
``<pod>.<job>.<namespace>.svc``, and a ConfigMap holding the spec as JSON (``TJ_SPEC``).

Labels (all values are DNS labels):

- ``training.cpr.dev/job``: the TrainingJob's name;
- ``training.cpr.dev/role``: ``embedding-server``, ``sync-server`` or ``trainer``;
- ``training.cpr.dev/rank``: ``0`` .. ``replicas - 1`` within the role;
- ``app.kubernetes.io/{name,instance,component,part-of,managed-by}``.

Every child carries a controller ownerReference to the TrainingJob, so a real cluster's garbage
collector removes them with the job (the operator also deletes them itself, see handlers.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainingjob_operator.api.loading import ManifestError, parse_manifest
from trainingjob_operator.api.spec import API_VERSION, GROUP, KIND, Role, TrainingJob, default_image
from trainingjob_operator.reconcile import ReplicaId

LABEL_JOB = f"{GROUP}/job"
LABEL_ROLE = f"{GROUP}/role"
LABEL_RANK = f"{GROUP}/rank"
ANNOTATION_GENERATION = f"{GROUP}/generation"  # the recovery generation the pod was created in

APP_NAME = "dlrm-trainer"
MANAGED_BY = "trainingjob-operator"
CONTAINER = "dlrm"
GRPC_PORT = 50051  # every server role serves gRPC (and grpc.health.v1) here
CHECKPOINT_MOUNT = "/checkpoints"
SPEC_KEY = "spec.json"
PVC_PREFIX = "pvc:"
GPU_RESOURCE = "nvidia.com/gpu"
TERMINATION_GRACE_S = 30  # servers flush and exit on SIGTERM; a dead pod is deleted with grace 0

# The pod env contract (ARCHITECTURE.md §7); role.env may not override these.
CONTRACT_ENV = frozenset({"TJ_JOB", "TJ_NAMESPACE", "TJ_ROLE", "TJ_RANK", "TJ_REDIS_URL", "TJ_SPEC",
                          "POD_IP", "TJ_INSTANCE", "TJ_GENERATION", "TJ_CHECKPOINT_DIR"})
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


def admit(body: Any, default_redis_url: str | None) -> tuple[TrainingJob, str]:
    """Parse and check everything the operator needs to run a job; raises ManifestError."""
    job = parse_job(body)
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


def _metadata(name: str, namespace: str, labels: dict[str, str], owner: Owner) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": labels, "ownerReferences": [owner.reference()]}


# --- the pod -----------------------------------------------------------------------------------


def _env(job: TrainingJob, rid: ReplicaId, redis_url: str, generation: int) -> list[dict[str, Any]]:
    contract: list[dict[str, Any]] = [
        {"name": "TJ_JOB", "value": job.name},
        {"name": "TJ_NAMESPACE", "value": job.namespace},
        {"name": "TJ_ROLE", "value": rid.role.value},
        {"name": "TJ_RANK", "value": str(rid.rank)},
        {"name": "TJ_REDIS_URL", "value": redis_url},
        {"name": "TJ_SPEC", "valueFrom": {"configMapKeyRef": {"name": config_map_name(job.name), "key": SPEC_KEY}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "TJ_INSTANCE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
        {"name": "TJ_GENERATION", "value": str(generation)},
        {"name": "TJ_CHECKPOINT_DIR", "value": CHECKPOINT_MOUNT},
    ]
    extra = job.spec.replicas.for_role(rid.role).env
    return [*({"name": k, "value": v} for k, v in sorted(extra.items()) if k not in CONTRACT_ENV), *contract]


def _resources(raw: dict[str, dict[str, int | str]]) -> dict[str, dict[str, int | str]]:
    """Requests/limits as given; a GPU request without a limit gets one (extended resources need both)."""
    out = {kind: dict(values) for kind, values in raw.items()}
    gpu = out.get("requests", {}).get(GPU_RESOURCE)
    if gpu is not None and GPU_RESOURCE not in out.get("limits", {}):
        out.setdefault("limits", {})[GPU_RESOURCE] = gpu
    return out


def _grpc_probes() -> dict[str, Any]:
    grpc = {"port": GRPC_PORT, "service": ""}  # grpc.health.v1, overall server health
    return {
        # Loading a shard's checkpoint can take minutes: liveness starts once startup succeeds.
        "startupProbe": {"grpc": grpc, "periodSeconds": 5, "failureThreshold": 120},
        "readinessProbe": {"grpc": grpc, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {"grpc": grpc, "periodSeconds": 10, "failureThreshold": 6},
    }


def checkpoint_volume(storage: str | None) -> dict[str, Any]:
    """emptyDir by default (dies with the pod: fine for tests only), or ``pvc:<claimName>``."""
    if storage and storage.startswith(PVC_PREFIX):
        return {"name": "checkpoints", "persistentVolumeClaim": {"claimName": storage.removeprefix(PVC_PREFIX)}}
    return {"name": "checkpoints", "emptyDir": {}}


def render_pod(job: TrainingJob, rid: ReplicaId, *, owner: Owner, redis_url: str, generation: int) -> dict[str, Any]:
    """The pod of one replica."""
    role = job.spec.replicas.for_role(rid.role)
    name = pod_name(job.name, rid)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": role.image or job.spec.image or default_image(),
        "command": ["python", "-m", "dlrm_trainer"],
        "env": _env(job, rid, redis_url, generation),
        "resources": _resources(role.resources),
    }
    spec: dict[str, Any] = {
        "restartPolicy": "Never",  # the operator replaces pods; the kubelet must not restart in place
        "hostname": name,
        "subdomain": service_name(job.name),
        "terminationGracePeriodSeconds": TERMINATION_GRACE_S,
        "containers": [container],
    }
    if rid.role in SERVER_ROLES:
        container["ports"] = [{"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"}]
        container.update(_grpc_probes())
    if rid.role is Role.EMBEDDING_SERVER:
        container["volumeMounts"] = [{"name": "checkpoints", "mountPath": CHECKPOINT_MOUNT}]
        spec["volumes"] = [checkpoint_volume(job.spec.recovery.checkpoint.storage)]
    if role.node_selector:
        spec["nodeSelector"] = dict(role.node_selector)
    if role.tolerations:
        spec["tolerations"] = [t.to_wire() for t in role.tolerations]
    metadata = _metadata(name, job.namespace, pod_labels(job.name, rid), owner)
    metadata["annotations"] = {ANNOTATION_GENERATION: str(generation)}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


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
