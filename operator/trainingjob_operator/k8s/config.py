"""The operator's own settings (kopf's live in ``kopf.OperatorSettings``, set at startup)."""

from __future__ import annotations

import dataclasses
import json
import os
import random
from typing import Any

from pydantic import ValidationError

from trainingjob_operator.api.spec import RoleSpec

PEERING_NAME = "trainingjob-operator"


def trainer_defaults_from_env(value: str | None) -> RoleSpec | None:
    """TJ_DEFAULT_TRAINER_ROLE: a JSON fragment of ``spec.replicas.trainer``. A malformed one stops the
    operator at start, naming the variable, rather than running every job without its GPUs."""
    if not value or not value.strip():
        return None
    try:
        fragment = json.loads(value)
        if not isinstance(fragment, dict):
            raise ValueError("not a JSON object")
        return RoleSpec.model_validate({k: v for k, v in fragment.items() if v not in ({}, [], None)})
    except (ValueError, ValidationError) as e:
        raise ValueError(f"TJ_DEFAULT_TRAINER_ROLE must be a JSON spec.replicas.trainer fragment "
                         f"(resources, nodeSelector, tolerations): {e}") from e


def _float_env(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


@dataclasses.dataclass(frozen=True)
class OperatorConfig:
    namespace: str | None = None
    """Serve one namespace, or every namespace when None (cluster-wide)."""

    extra_namespaces: tuple[str, ...] = ()
    """More namespaces to serve besides ``namespace`` (the chart's repeated --namespace)."""

    standalone: bool = False
    """Run without kopf peering. With peering (the default) every replica of the operator takes a
    random priority: the highest one works, the others pause, and take over once its keep-alive
    expires (``kopf.OperatorSettings.peering.lifetime``, 60 s). Peering needs kopf's peering
    CRDs and a (Cluster)KopfPeering object named ``peering_name``, both installed by the chart."""

    peering_name: str = PEERING_NAME
    priority: int | None = None
    """Peering priority; None draws a random one so two replicas never tie (a tie pauses both)."""

    metrics_port: int | None = 8000
    """Prometheus /metrics port; None disables the endpoint."""

    default_redis_url: str | None = None
    """Coordination Redis for jobs that name none (``spec.redis.url``); the chart's Redis."""

    trainer_defaults: RoleSpec | None = None
    """Trainer resources, nodeSelector and tolerations for jobs that set none (the chart's ``trainer.*``
    values, e.g. a GPU per trainer, as the JSON RoleSpec fragment TJ_DEFAULT_TRAINER_ROLE)."""

    tick_s: float = 2.0
    """Every job is reconciled at least this often (heartbeats, Redis); pod events wake it at once."""

    progress_every_s: float = 5.0
    """Read trainer progress, lost samples and checkpoint pointers from Redis this often."""

    tune_every_s: float = 30.0
    """Re-plan the checkpoint interval this often, and after every failure."""

    job_redis_users: bool = True
    """Give every job its own Redis ACL user, limited to its keys, in a Secret its pods read (TJ_REDIS_JOB_USERS=0
    turns it off; a Redis older than 6 or an operator user without ACL rights falls back to the operator's
    credentials, passed through the same Secret, never in a pod's env in plain text)."""

    force_delete_margin_s: float = 60.0
    """A pod still terminating this long after its grace period ended (its node is unreachable) is
    force-deleted, so that its replacement (same name) can start."""

    redis_timeout_s: float = 2.0
    """Socket timeout of the operator's Redis calls: a slow Redis must not stall recoveries."""

    connection: Any = None
    """A ``kopf.ConnectionInfo`` to use instead of kubeconfig / in-cluster login (embedding, tests)."""

    log_json: bool = True
    log_level: str = "INFO"

    @property
    def job_defaults(self) -> tuple[str | None, RoleSpec | None]:
        """What ``resources.admit`` fills into a job that leaves it unset: Redis URL, trainer defaults."""
        return self.default_redis_url, self.trainer_defaults

    def peering_priority(self) -> int:
        return self.priority if self.priority is not None else random.randint(1, 2**31 - 1)

    @classmethod
    def from_env(cls) -> OperatorConfig:
        """Settings from TJ_* environment variables (``kopf run -m trainingjob_operator.k8s.handlers``)."""
        port = os.environ.get("TJ_METRICS_PORT", "8000")
        return cls(
            namespace=os.environ.get("TJ_WATCH_NAMESPACE") or None,
            standalone=os.environ.get("TJ_STANDALONE", "") in ("1", "true", "yes"),
            default_redis_url=os.environ.get("TJ_DEFAULT_REDIS_URL") or None,
            trainer_defaults=trainer_defaults_from_env(os.environ.get("TJ_DEFAULT_TRAINER_ROLE")),
            job_redis_users=os.environ.get("TJ_REDIS_JOB_USERS", "1") not in ("0", "false", "no"),
            metrics_port=int(port) if port else None,
            tick_s=_float_env("TJ_TICK_SECONDS", 2.0),
            tune_every_s=_float_env("TJ_TUNE_EVERY_SECONDS", 30.0),
            log_json=os.environ.get("TJ_LOG_FORMAT", "json") == "json",
            log_level=os.environ.get("TJ_LOG_LEVEL", "INFO"),
        )
