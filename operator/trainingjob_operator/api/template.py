"""Per-role pod template: what a cluster needs of a pod beyond what the operator renders.

``spec.replicas.<role>.template`` is a PodTemplateSpec fragment (the Kubernetes shape, camelCase)
merged under the operator's own fields: volumes and mounts (Criteo data on a claim), pull secrets,
service account, priority and scheduler, affinity and topology spread, labels and annotations,
``envFrom`` Secrets, init and sidecar containers, security-context overrides.

What the operator owns stays protected, and a manifest that reaches for it is rejected naming the
field rather than silently overridden: the env contract (``TJ_*``, ``POD_IP``), the operator's labels
(``training.cpr.dev/*``, ``app.kubernetes.io/*``), the checkpoint volume and its mount, the main
container's image, command, ports and probes, restart policy and hostname. Kubernetes objects inside
(affinity, a volume source, an EnvVar's ``valueFrom``) are passed through as written; the API server
validates them when the pod is created.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator, model_validator

from trainingjob_operator.api.base import ApiModel

MAIN_CONTAINER = "dlrm"  # the operator's container in every pod (k8s.resources.CONTAINER)
CHECKPOINT_VOLUME = "checkpoints"
CHECKPOINT_MOUNT = "/checkpoints"
TMP_VOLUME = "tmp"  # the writable /tmp of a read-only root filesystem
PROTECTED_LABEL_PREFIXES = ("training.cpr.dev/", "app.kubernetes.io/")
# The main container: what a template may add to it. Its image is replicas.<role>.image, its resources
# replicas.<role>.resources; command, ports and probes are the operator's.
MAIN_CONTAINER_FIELDS = frozenset({"name", "env", "envFrom", "volumeMounts", "securityContext"})

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


def reserved_env(name: str) -> bool:
    """Names of the replica env contract (ARCHITECTURE.md §3): every ``TJ_*`` variable and ``POD_IP``."""
    return name.startswith("TJ_") or name == "POD_IP"


def _check_env(env: list[dict[str, Any]], where: str) -> None:
    seen: set[str] = set()
    for i, var in enumerate(env):
        name = var.get("name") if isinstance(var, dict) else None
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise ValueError(f"{where}[{i}].name must be an environment variable name, got {name!r}")
        if reserved_env(name):
            raise ValueError(f"{where}[{i}].name {name!r} belongs to the operator's env contract (TJ_*, POD_IP)")
        if name in seen:
            raise ValueError(f"{where}[{i}].name {name!r} is listed twice")
        seen.add(name)
        if "value" in var and "valueFrom" in var:
            raise ValueError(f"{where}[{i}] sets both value and valueFrom")


def _check_mounts(mounts: list[dict[str, Any]], where: str) -> None:
    for i, mount in enumerate(mounts):
        if not isinstance(mount, dict) or not mount.get("name") or not mount.get("mountPath"):
            raise ValueError(f"{where}[{i}] needs a name and a mountPath")
        path = str(mount["mountPath"]).rstrip("/") or "/"
        if not path.startswith("/"):
            raise ValueError(f"{where}[{i}].mountPath must be absolute, got {mount['mountPath']!r}")
        if mount["name"] in (CHECKPOINT_VOLUME, TMP_VOLUME) or path in (CHECKPOINT_MOUNT, "/tmp", "/"):
            raise ValueError(f"{where}[{i}] mounts {mount['name']!r} at {path}: the operator's checkpoint and /tmp "
                             "volumes and their paths are its own")


class TemplateMetadata(ApiModel):
    """Extra labels and annotations of the role's pods (Kueue's queue-name, a team label, ...)."""

    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("labels", "annotations")
    @classmethod
    def _not_ours(cls, values: dict[str, str]) -> dict[str, str]:
        for key in values:
            if key.startswith(PROTECTED_LABEL_PREFIXES):
                raise ValueError(f"{key!r} is the operator's own (keys under {', '.join(PROTECTED_LABEL_PREFIXES)} "
                                 "are reserved)")
        return values


class LocalObjectReference(ApiModel):
    name: str = Field(description="Name of a Secret in the job's namespace.")

    @field_validator("name")
    @classmethod
    def _dns(cls, name: str) -> str:
        if not _DNS_SUBDOMAIN.match(name):
            raise ValueError(f"must be a DNS-1123 subdomain, got {name!r}")
        return name


class TemplateSpec(ApiModel):
    """The pod fields a template may set. Lists are added to the operator's, maps merged under its keys."""

    volumes: list[dict[str, Any]] = Field(
        default_factory=list, description="Extra volumes (a claim with Criteo data, a Secret, a config map).")
    containers: list[dict[str, Any]] = Field(
        default_factory=list, description="The main container 'dlrm' (env, envFrom, volumeMounts, securityContext "
        "only) and any sidecars (full containers).")
    init_containers: list[dict[str, Any]] = Field(default_factory=list, description="Run before the main container.")
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list)
    service_account_name: str | None = Field(default=None, description="Default: the namespace's 'default'.")
    automount_service_account_token: bool | None = Field(
        default=None, description="Default false: the trainer never calls the Kubernetes API.")
    priority_class_name: str | None = None
    scheduler_name: str | None = Field(default=None, description="e.g. volcano, or a coscheduling plugin's.")
    runtime_class_name: str | None = None
    affinity: dict[str, Any] | None = Field(default=None, description="Node and pod (anti-)affinity.")
    topology_spread_constraints: list[dict[str, Any]] = Field(default_factory=list)
    node_selector: dict[str, str] = Field(default_factory=dict, description="Merged with the role's nodeSelector.")
    tolerations: list[dict[str, Any]] = Field(default_factory=list, description="Added to the role's tolerations.")
    security_context: dict[str, Any] = Field(
        default_factory=dict, description="Pod securityContext fields that override the operator's (restricted) ones.")

    @field_validator("service_account_name", "priority_class_name", "scheduler_name", "runtime_class_name")
    @classmethod
    def _names(cls, name: str | None) -> str | None:
        if name is not None and not _DNS_SUBDOMAIN.match(name):
            raise ValueError(f"must be a DNS-1123 subdomain, got {name!r}")
        return name

    @model_validator(mode="after")
    def _protected(self) -> TemplateSpec:
        names = [v.get("name") for v in self.volumes]
        for i, volume in enumerate(self.volumes):
            name = volume.get("name")
            if not isinstance(name, str) or not _DNS_LABEL.match(name):
                raise ValueError(f"volumes[{i}].name must be a DNS-1123 label, got {name!r}")
            if name in (CHECKPOINT_VOLUME, TMP_VOLUME):
                raise ValueError(f"volumes[{i}].name {name!r} is the operator's own volume")
            if names.count(name) > 1:
                raise ValueError(f"volumes[{i}].name {name!r} is listed twice")
        declared = set(names)
        container_names: set[str] = set()
        for field, containers in (("containers", self.containers), ("initContainers", self.init_containers)):
            for i, container in enumerate(containers):
                where = f"{field}[{i}]"
                name = container.get("name")
                if not isinstance(name, str) or not _DNS_LABEL.match(name):
                    raise ValueError(f"{where}.name must be a DNS-1123 label, got {name!r}")
                if name in container_names:
                    raise ValueError(f"{where}.name {name!r} is listed twice")
                container_names.add(name)
                if name == MAIN_CONTAINER and field == "containers":
                    extra = sorted(set(container) - MAIN_CONTAINER_FIELDS)
                    if extra:
                        raise ValueError(f"{where} (the main container) may set only "
                                         f"{', '.join(sorted(MAIN_CONTAINER_FIELDS))}; {', '.join(extra)} are the "
                                         "operator's (image and resources: replicas.<role>.image/.resources)")
                elif name == MAIN_CONTAINER:
                    raise ValueError(f"{where}.name {name!r} is the main container's name")
                elif not container.get("image"):
                    raise ValueError(f"{where} ({name}) needs an image")
                _check_env(list(container.get("env") or []), f"{where}.env")
                mounts = list(container.get("volumeMounts") or [])
                _check_mounts(mounts, f"{where}.volumeMounts")
                for j, mount in enumerate(mounts):
                    if mount["name"] not in declared:
                        raise ValueError(f"{where}.volumeMounts[{j}] mounts {mount['name']!r}, which template "
                                         "volumes do not declare")
        return self


class PodTemplate(ApiModel):
    """A PodTemplateSpec fragment for one role's pods, merged under the operator's own fields."""

    metadata: TemplateMetadata = Field(default_factory=TemplateMetadata)
    spec: TemplateSpec = Field(default_factory=TemplateSpec)

    def main_container(self) -> dict[str, Any]:
        return next((c for c in self.spec.containers if c.get("name") == MAIN_CONTAINER), {})

    def sidecars(self) -> list[dict[str, Any]]:
        return [c for c in self.spec.containers if c.get("name") != MAIN_CONTAINER]
