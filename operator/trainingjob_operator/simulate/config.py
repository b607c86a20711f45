"""What one simulated run is: the job (a scaled spec per mode), its costs, its failures, its length.

Everything here is plain data plus the few rules that turn a manifest and the ``trainingjob simulate``
options into it: scaling the roles to ``--nodes``, the five modes as spec variants, the job-level or
per-node MTBF, and the costs' defaults. Bad input raises :class:`SimulateInputError` naming the option,
so the CLI can print one line and exit 2.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from trainingjob_operator.api.spec import ROLES, Role, TrainingJobSpec

HOUR_S = 3600.0
DAY_S = 86_400.0
MAX_REPLICAS_PER_ROLE = 1024  # the API's limit (RoleSpec.replicas)

MODES: tuple[str, ...] = ("full", "partial", "partial+MFU", "partial+SSU", "auto")
"""The simulated variants: recovery mode and checkpoint strategy (auto keeps the manifest's strategy)."""

_VARIANTS: dict[str, tuple[str, str | None]] = {
    "full": ("full", "full"),
    "partial": ("partial", "full"),
    "partial+MFU": ("partial", "mfu"),
    "partial+SSU": ("partial", "ssu"),
    "auto": ("auto", None),
}

DISTRIBUTIONS = ("exponential", "weibull")

DEFAULT_SAMPLES_PER_TRAINER_S = 10_000.0
"""Simulated throughput when no summary gives one: only sets the unit of samples (PLS is a fraction)."""


class SimulateInputError(ValueError):
    """Bad simulation input; ``option`` is the CLI option at fault, ``str()`` is one line."""

    def __init__(self, option: str, message: str) -> None:
        self.option = option
        self.message = message
        super().__init__(f"{option}: {message}")


@dataclasses.dataclass(frozen=True)
class Costs:
    """Seconds of training one event costs (``PAPERS.md`` §1.4 symbols).

    ``o_save_s`` a full save, ``o_save_partial_s`` an MFU/SSU save (None: ``o_save`` times the strategy's
    row fraction, PAPERS.md §1.7), ``o_load_s`` one shard's load, ``o_res_s`` detect + reschedule + restart
    of one replacement, ``uncovered`` the share of updates since the last full save no partial save holds
    (None: ``tuning.py``'s prior, ``1 - fraction``, i.e. uniform access).
    """

    o_save_s: float
    o_load_s: float
    o_res_s: float
    o_save_partial_s: float | None = None
    uncovered: float | None = None
    source: str = "options"

    def __post_init__(self) -> None:
        for name, option in (("o_save_s", "--o-save"), ("o_load_s", "--o-load"), ("o_res_s", "--o-res"),
                             ("o_save_partial_s", "--o-save-partial")):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0.0):
                raise SimulateInputError(option, f"must be a non-negative number of seconds, got {value}")
        if self.uncovered is not None and not 0.0 <= self.uncovered <= 1.0:
            raise SimulateInputError("--uncovered", f"must be in [0, 1], got {self.uncovered}")


@dataclasses.dataclass(frozen=True)
class LoggedFailure:
    """One failure to replay: the local summary's ``failures`` entries (``role``, ``rank``, ``time_s``)."""

    role: str
    rank: int
    time_s: float


@dataclasses.dataclass(frozen=True)
class FailureSpec:
    """Where failures come from: a per-node renewal process, or a replayed log.

    ``mtbf_node_s`` is one node's mean time between failures; a failed node is replaced by a fresh one
    (its clock starts when the replacement is created), survivors keep their age. ``weibull_shape`` is
    only used with ``distribution="weibull"`` (shape < 1: infant mortality). ``roles`` are the roles whose
    nodes fail. With ``log`` the generator is off and exactly those failures happen.
    """

    mtbf_node_s: float = math.inf
    distribution: str = "exponential"
    weibull_shape: float = 1.0
    roles: tuple[str, ...] = tuple(r.value for r in ROLES)
    log: tuple[LoggedFailure, ...] | None = None

    def __post_init__(self) -> None:
        if self.distribution not in DISTRIBUTIONS:
            raise SimulateInputError("--distribution", f"must be one of {', '.join(DISTRIBUTIONS)}, "
                                     f"got {self.distribution!r}")
        if not self.weibull_shape > 0.0 or not math.isfinite(self.weibull_shape):
            raise SimulateInputError("--weibull-shape", f"must be a positive number, got {self.weibull_shape}")
        if not self.mtbf_node_s > 0.0:
            raise SimulateInputError("--mtbf", f"must be positive, got {self.mtbf_node_s / HOUR_S:g} h")
        known = {r.value for r in ROLES}
        for role in self.roles:
            if role not in known:
                raise SimulateInputError("--fail-roles", f"unknown role {role!r} (expected {', '.join(sorted(known))})")


@dataclasses.dataclass(frozen=True)
class SimConfig:
    """One run: the spec of one mode (already scaled), costs, failures, length and seed.

    ``days`` is the failure-free training time (the job's useful work); overheads are fractions of it,
    as in ``tuning.py``. ``replan_tolerance``: between failures the tuner's inputs move only through the
    exposure (seconds observed), so after a save it re-plans once the exposure has grown by this fraction
    since the last plan (0: after every save; 0.01 moves the interval by at most 0.5 % between plans).
    """

    spec: TrainingJobSpec
    label: str
    costs: Costs
    failures: FailureSpec
    days: float
    seed: int = 0
    samples_per_second: float | None = None
    replan_tolerance: float = 0.01
    max_wall_factor: float = 50.0
    timeline: bool = True

    def __post_init__(self) -> None:
        if not (self.days > 0.0 and math.isfinite(self.days)):
            raise SimulateInputError("--days", f"must be a positive number of days, got {self.days}")
        if self.samples_per_second is not None and not self.samples_per_second > 0.0:
            raise SimulateInputError("--samples-per-second", f"must be positive, got {self.samples_per_second}")

    @property
    def useful_s(self) -> float:
        return self.days * DAY_S

    @property
    def rate(self) -> float:
        """Samples per second of the whole job while every replica trains."""
        if self.samples_per_second is not None:
            return self.samples_per_second
        return DEFAULT_SAMPLES_PER_TRAINER_S * self.spec.replicas.count(Role.TRAINER)


# -- building specs --------------------------------------------------------------------------------------


def role_counts(spec: TrainingJobSpec) -> dict[Role, int]:
    return {role: spec.replicas.count(role) for role in ROLES}


def scaled_counts(spec: TrainingJobSpec, nodes: int) -> dict[Role, int]:
    """Replica counts for ``nodes`` nodes, every role in proportion to the manifest's. The sync server
    stays one (the API allows exactly one central dense copy); the rest split in the manifest's ratio."""
    counts = role_counts(spec)
    sync = counts[Role.SYNC_SERVER]
    if nodes < sync + 2:
        raise SimulateInputError("--nodes", f"must be at least {sync + 2} (a trainer, an embedding server and "
                                            f"the sync server), got {nodes}")
    rest = nodes - sync
    trainers, emb = counts[Role.TRAINER], counts[Role.EMBEDDING_SERVER]
    n_emb = min(rest - 1, max(1, round(rest * emb / (trainers + emb))))
    scaled = {Role.EMBEDDING_SERVER: n_emb, Role.SYNC_SERVER: sync, Role.TRAINER: rest - n_emb}
    for role, count in scaled.items():
        if count > MAX_REPLICAS_PER_ROLE:
            raise SimulateInputError("--nodes", f"{nodes} nodes give {count} {role.value} replicas, above the "
                                                f"API's {MAX_REPLICAS_PER_ROLE} per role")
    return scaled


def with_changes(spec: TrainingJobSpec, changes: dict[str, Any]) -> TrainingJobSpec:
    """A copy of ``spec`` with dotted camelCase paths set (``recovery.checkpoint.strategy``), validated."""
    wire = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    for path, value in changes.items():
        node = wire
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return TrainingJobSpec.model_validate(wire)


def dense_equivalent(spec: TrainingJobSpec, nodes: int | None) -> TrainingJobSpec:
    """A pytorch workload as the simulator models it: a dense data-parallel job where every failure rolls every
    rank back to the newest checkpoint, which is DLRM's full recovery with one trainer per worker (``nodes``
    workers when given). One embedding server and the sync server complete the model; only trainers fail
    (``--fail-roles`` defaults to them), so the failure rate and the save and restart costs are the workers'."""
    workers = nodes if nodes is not None else spec.replicas.worker.replicas
    wire = spec.to_wire()
    for key in ("workload", "pytorch"):
        wire.pop(key, None)
    wire["replicas"] = {"trainer": {"replicas": workers}, "embeddingServer": {"replicas": 1}}
    wire["recovery"] = {**wire.get("recovery", {}), "mode": "full"}
    wire["recovery"]["checkpoint"] = {k: v for k, v in wire["recovery"].get("checkpoint", {}).items()
                                      if k not in ("volume", "objectStore", "storage")}
    return TrainingJobSpec.model_validate(wire)


def scale_spec(spec: TrainingJobSpec, nodes: int | None) -> TrainingJobSpec:
    if nodes is None:
        return spec
    counts = scaled_counts(spec, nodes)
    return with_changes(spec, {
        "replicas.trainer.replicas": counts[Role.TRAINER],
        "replicas.embeddingServer.replicas": counts[Role.EMBEDDING_SERVER],
    })


def variant_spec(spec: TrainingJobSpec, mode: str, *, days: float, samples_per_second: float,
                 prior_hours: float | None = None, fixed_interval_s: float | None = None) -> TrainingJobSpec:
    """The spec one mode runs: its recovery mode and strategy, a fixed interval for a grid point (None: the
    tuner's), the tuner's MTBF prior, and the job's planned samples set to what ``days`` of training at
    ``samples_per_second`` is (the measured PLS the tuner sees is a portion of those, as in the product)."""
    if mode not in _VARIANTS:
        raise SimulateInputError("--modes", f"unknown mode {mode!r} (expected {', '.join(MODES)})")
    recovery, strategy = _VARIANTS[mode]
    changes: dict[str, Any] = {
        "recovery.mode": recovery,
        "recovery.checkpoint.intervalSeconds": fixed_interval_s,
        "data.trainSamples": max(1, round(days * DAY_S * samples_per_second)),
        "data.epochs": 1,
    }
    if strategy is not None:
        changes["recovery.checkpoint.strategy"] = strategy
    if prior_hours is not None:
        changes["recovery.mtbfPriorHours"] = prior_hours
    return with_changes(spec, changes)


def build_config(base: TrainingJobSpec, mode: str, *, costs: Costs, failures: FailureSpec, days: float, seed: int = 0,
                 label: str | None = None, samples_per_second: float | None = None, prior_hours: float | None = None,
                 fixed_interval_s: float | None = None, replan_tolerance: float = 0.01,
                 timeline: bool = True) -> SimConfig:
    """One run of ``mode`` on the (already scaled) ``base`` spec. Without ``samples_per_second`` the job
    trains :data:`DEFAULT_SAMPLES_PER_TRAINER_S` per trainer; the spec's planned samples follow from it."""
    if not (days > 0.0 and math.isfinite(days)):
        raise SimulateInputError("--days", f"must be a positive number of days, got {days}")
    rate = samples_per_second
    if rate is None:
        rate = DEFAULT_SAMPLES_PER_TRAINER_S * base.replicas.count(Role.TRAINER)
    spec = variant_spec(base, mode, days=days, samples_per_second=rate, prior_hours=prior_hours,
                        fixed_interval_s=fixed_interval_s)
    return SimConfig(spec=spec, label=label or mode, costs=costs, failures=failures, days=days, seed=seed,
                     samples_per_second=rate, replan_tolerance=replan_tolerance, timeline=timeline)


def failing_nodes(spec: TrainingJobSpec, roles: Sequence[str]) -> int:
    return sum(spec.replicas.count(Role(role)) for role in roles)


def node_mtbf_s(spec: TrainingJobSpec, *, mtbf_hours: float | None, mtbf_per_node_hours: float | None,
                roles: Sequence[str]) -> float:
    """One node's MTBF in seconds: ``--mtbf`` is the job's (every failing node together), so a node's is
    that times the failing nodes; ``--mtbf-per-node`` is a node's; neither: the manifest's prior."""
    if mtbf_hours is not None and mtbf_per_node_hours is not None:
        raise SimulateInputError("--mtbf", "--mtbf and --mtbf-per-node exclude each other")
    for option, value in (("--mtbf", mtbf_hours), ("--mtbf-per-node", mtbf_per_node_hours)):
        if value is not None and not (value > 0.0 and math.isfinite(value)):
            raise SimulateInputError(option, f"must be a positive number of hours, got {value}")
    nodes = failing_nodes(spec, roles)
    if nodes < 1:
        raise SimulateInputError("--fail-roles", "no replica of these roles: nothing can fail")
    if mtbf_hours is not None:
        return mtbf_hours * HOUR_S * nodes
    if mtbf_per_node_hours is not None:
        return mtbf_per_node_hours * HOUR_S
    return spec.recovery.mtbf_prior_hours * HOUR_S


def parse_roles(text: str | None) -> tuple[str, ...]:
    if text is None or not text.strip():
        return tuple(r.value for r in ROLES)
    roles = tuple(part.strip() for part in text.split(",") if part.strip())
    known = {r.value for r in ROLES}
    for role in roles:
        if role not in known:
            raise SimulateInputError("--fail-roles", f"unknown role {role!r} (expected {', '.join(sorted(known))})")
    return roles


def parse_modes(text: str | None) -> tuple[str, ...]:
    if text is None or not text.strip():
        return MODES
    modes = tuple(part.strip() for part in text.split(",") if part.strip())
    lower = {m.lower(): m for m in MODES}
    out = []
    for mode in modes:
        if mode.lower() not in lower:
            raise SimulateInputError("--modes", f"unknown mode {mode!r} (expected {', '.join(MODES)})")
        out.append(lower[mode.lower()])
    return tuple(dict.fromkeys(out))
