"""TrainingJob status, written by the coordinator (operator or local supervisor)."""

from __future__ import annotations

import enum
from typing import Any

from pydantic import Field

from trainingjob_operator.api.base import ApiModel


class Phase(enum.StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    RECOVERING = "Recovering"
    SUSPENDED = "Suspended"  # runPolicy.suspend (or waiting for a queue's admission): no pods, state kept
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    @property
    def finished(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED)


class Condition(ApiModel):
    """A Kubernetes-convention condition (type, status, reason, message, lastTransitionTime)."""

    type: str
    status: str = Field(description="True, False or Unknown.")
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None


class RoleReplicaStatus(ApiModel):
    desired: int = 0
    ready: int = 0
    restarts: int = 0


class RoleStandbyStatus(ApiModel):
    """Warm standby pods of a role (``recovery.standby``): how many are asked for, how many could take a failed
    rank over right now (running and offering themselves), how many cannot start."""

    desired: int = 0
    ready: int = 0
    stuck: int = 0


class ProgressStatus(ApiModel):
    samples: int = 0
    target_samples: int = 0
    samples_per_second: float | None = None
    loss: float | None = None
    auc: float | None = None
    waiting_for: list[str] | None = None  # servers some trainer is blocked on (being replaced); None: none
    # workload pytorch: samples and samplesPerSecond count tokens; the step, and the script's own result.
    step: int | None = None
    total_steps: int | None = None
    result: dict[str, Any] | None = None


class FailureRecord(ApiModel):
    role: str
    rank: int
    reason: str
    time: str


class SaveCostStatus(ApiModel):
    """What one full save costs training (the tuner's o_save): stall + write x writeSlowdown."""

    stall_seconds: float | None = None
    write_seconds: float | None = None
    write_slowdown: float | None = None
    seconds: float | None = None


class RecoveryStatus(ApiModel):
    mode: str | None = None
    generation: int = 0
    failures: int = 0
    last_failure: FailureRecord | None = None
    interval_seconds: float | None = None
    interval_reason: str | None = None  # why the tuner chose that interval (and mode, under auto)
    save_cost: SaveCostStatus | None = None
    pls: float | None = None
    last_checkpoint: str | None = None


class TrainingJobStatus(ApiModel):
    model_config = {**ApiModel.model_config, "extra": "allow"}

    phase: Phase = Phase.PENDING
    conditions: list[Condition] = Field(default_factory=list)
    replicas: dict[str, RoleReplicaStatus] = Field(default_factory=dict)
    progress: ProgressStatus = Field(default_factory=ProgressStatus)
    recovery: RecoveryStatus = Field(default_factory=RecoveryStatus)
    standbys: dict[str, RoleStandbyStatus] | None = None  # roles with recovery.standby, or standbys still there
    start_time: str | None = None
    completion_time: str | None = None
    observed_generation: int | None = None
