"""Checkpoint-interval tuning: the pure math behind the coordinator's re-plan and ``trainingjob plan``.

Everything here is a deterministic function of its arguments: no Redis, no clock, no threads, no
torch, no kopf. The coordinator gathers measurements and the failure log, builds a
:class:`TuningInputs` and calls :func:`plan`; ``trainingjob plan`` calls the same code with assumed
measurements (``planning.py``).

Units: every time is in seconds (``*_s``) unless the name says hours; overheads are fractions of
failure-free run time (0.05 = 5 %); PLS is a fraction of training samples.

Provenance tags follow ``PAPERS.md`` §0: **[R]** recalled from the CPR paper (structure likely, notation
not verified), **[V]** verified from a source, **[I]** derived here or a design choice of this project.

Symbols (``PAPERS.md`` §1.4):

- ``o_save``: training stall per checkpoint save; ``o_load``: checkpoint load after a failure;
  ``o_res``: detect + reschedule + restart of a replacement replica.
- ``T_fail_job``: mean time between failures of *any* replica of the job.
- ``T_fail_emb``: mean time between failures of *embedding-server* replicas of the job. Only these
  lose state under partial recovery, so only they enter PLS (``PAPERS.md`` §1.5 caution).
- ``N_emb``: embedding-server replicas (shards).

A consequence worth knowing [I]: with a per-replica MTBF ``M``, ``T_fail_emb = M / N_emb`` and
``PLS = T_save / (2 * N_emb * T_fail_emb) = T_save / (2 * M)``: the PLS-bounded interval does not
depend on the shard count. More shards fail more often, but each failure loses a smaller shard.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Literal

from trainingjob_operator.api.spec import RecoveryMode, Role, TrainingJobSpec

Mode = Literal["partial", "full"]

HOUR_S = 3600.0

DEFAULT_PRIOR_WEIGHT_FAILURES = 1.0
"""Pseudo-failures the spec's MTBF prior is worth, per role [I].

One pseudo-failure: until a role's first failure the prior counts as one MTBF of single-replica
exposure (plus every failure-free second observed since); from its first failure on, the observed log
alone decides (:func:`estimate_mtbf`). Weak on purpose: cluster priors are rough (CPR reports 14-30 h
job MTBF [V]), the measured log is not.
"""

DEFAULT_SAVE_FLOOR_FACTOR = 2.0
"""The interval is never shorter than this many ``o_save`` [I, after CheckFreq].

CheckFreq [V, ``cf_iterator.py``] requires the previous persist to finish before the next snapshot.
The persist time is not measured separately here, so the floor assumes it takes about as long
again as the stall; it also caps the time spent saving at ``1 / factor`` of wall time.
"""

# A PLS computed at exactly the PLS-bounded interval can round a hair above the target.
_PLS_RELATIVE_TOLERANCE = 1e-9


# -- inputs and outputs ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Measurements:
    """Measured costs, each an average in seconds; ``None`` until first measured.

    ``o_load_s`` is the time to load one shard: under partial recovery only the failed shard loads,
    under full recovery every shard loads in parallel, so both pay about the same (``PAPERS.md``
    §1.6 assumes ``o_load_part ~= o_load`` [I]). ``samples_per_second`` is job-wide training
    throughput, used only to express PLS as lost samples.
    """

    o_save_s: float | None = None
    o_load_s: float | None = None
    o_res_s: float | None = None
    samples_per_second: float | None = None
    o_save_partial_s: float | None = None  # an MFU/SSU save's cost (``core.costs``), when measured
    save_duration_s: float | None = None  # stall + write of a full save: the next cannot start sooner
    uncovered: float | None = None  # share of updates since the last full save that partial saves left out
    # What o_save is made of (a full save), for status and summaries: o_save = stall + write * write_slowdown.
    save_stall_s: float | None = None
    save_write_s: float | None = None
    write_slowdown: float | None = None

    def __post_init__(self) -> None:
        for name in ("o_save_s", "o_load_s", "o_res_s", "samples_per_second", "o_save_partial_s",
                     "save_duration_s", "uncovered", "save_stall_s", "save_write_s", "write_slowdown"):
            value = getattr(self, name)
            if value is not None:
                _require_non_negative(name, value)
        if self.uncovered is not None and self.uncovered > 1.0:
            raise ValueError(f"uncovered must be in [0, 1], got {self.uncovered}")


@dataclasses.dataclass(frozen=True)
class FailureObservation:
    """One replica failure from the job's failure log.

    ``role`` is a :class:`Role` value (``"embedding-server"``, ``"trainer"``, ``"sync-server"``);
    ``time_s`` is seconds since the job started. The MTBF posterior uses counts only; the time is
    kept so callers can window or display the log.
    """

    role: str
    rank: int
    time_s: float


@dataclasses.dataclass(frozen=True)
class TuningInputs:
    """Everything :func:`plan` needs; build it from a spec with :meth:`from_spec`.

    Replica counts are the job's current ones (re-plan on every scale change). The MTBF prior is
    per replica, in hours, as in ``RecoverySpec.mtbf_prior_hours``. ``observed_seconds`` is how long
    the job has run with its current replicas: each replica contributes that much exposure to the
    MTBF posterior. ``measured_pls`` is the live lost-sample fraction, if the coordinator tracks it.
    ``fixed_interval_s`` mirrors ``CheckpointSpec.interval_seconds``: when set, it is used as is.
    """

    mode: RecoveryMode
    n_emb: int
    n_trainers: int
    n_sync: int
    mtbf_prior_hours_per_replica: float
    pls_target: float
    min_interval_s: float
    max_interval_s: float
    measurements: Measurements = dataclasses.field(default_factory=Measurements)
    failures: Sequence[FailureObservation] = ()
    observed_seconds: float = 0.0
    initial_interval_s: float = 60.0
    fixed_interval_s: float | None = None
    prior_weight_failures: float = DEFAULT_PRIOR_WEIGHT_FAILURES
    save_floor_factor: float = DEFAULT_SAVE_FLOOR_FACTOR
    measured_pls: float | None = None
    strategy: str = "full"  # full, mfu or ssu: what a periodic save holds
    full_every: int = 4  # mfu/ssu: every this many saves is full
    partial_fraction: float = 1.0  # mfu/ssu: the share of rows a partial save holds (the uncovered prior)

    def __post_init__(self) -> None:
        # Frozen, so normalise through object.__setattr__: plain strings and lists are accepted.
        object.__setattr__(self, "mode", RecoveryMode(self.mode))
        object.__setattr__(self, "failures", tuple(self.failures))
        if self.n_emb < 1:
            raise ValueError(f"n_emb must be at least 1, got {self.n_emb}")
        if self.n_trainers < 0 or self.n_sync < 0:
            raise ValueError(f"replica counts must not be negative, got {self.n_trainers}, {self.n_sync}")
        _require_positive("mtbf_prior_hours_per_replica", self.mtbf_prior_hours_per_replica)
        if not 0.0 < self.pls_target < 1.0:
            raise ValueError(f"pls_target must be in (0, 1), got {self.pls_target}")
        _require_positive("min_interval_s", self.min_interval_s)
        _require_positive("max_interval_s", self.max_interval_s)
        if self.min_interval_s > self.max_interval_s:
            raise ValueError(f"min_interval_s {self.min_interval_s} exceeds max_interval_s {self.max_interval_s}")
        _require_non_negative("observed_seconds", self.observed_seconds)
        _require_positive("initial_interval_s", self.initial_interval_s)
        if self.fixed_interval_s is not None:
            _require_positive("fixed_interval_s", self.fixed_interval_s)
        # A zero-weight prior would leave the MTBF undefined until the first failure.
        _require_positive("prior_weight_failures", self.prior_weight_failures)
        _require_non_negative("save_floor_factor", self.save_floor_factor)
        if self.measured_pls is not None:
            _require_non_negative("measured_pls", self.measured_pls)
        if self.strategy not in ("full", "mfu", "ssu"):
            raise ValueError(f"strategy must be full, mfu or ssu, got {self.strategy!r}")
        if self.full_every < 1:
            raise ValueError(f"full_every must be at least 1, got {self.full_every}")
        if not 0.0 < self.partial_fraction <= 1.0:
            raise ValueError(f"partial_fraction must be in (0, 1], got {self.partial_fraction}")

    def save_schedule(self) -> SaveSchedule:
        """What periodic saves cost and lose under partial recovery, given the strategy (see SaveSchedule)."""
        m = self.measurements
        if self.strategy == "full" or self.full_every == 1:
            return SaveSchedule(m.o_save_s, 1.0, ())
        k = self.full_every
        notes = []
        partial = m.o_save_partial_s
        if partial is None and m.o_save_s is not None:
            partial = m.o_save_s
            notes.append(f"{self.strategy} save cost not measured yet: counted as a full save's")
        uncovered = m.uncovered
        if uncovered is None:
            uncovered = 1.0 - self.partial_fraction
            notes.append(f"uncovered share not measured yet: assumed {uncovered:.3g} (uniform access)")
        average = None if m.o_save_s is None or partial is None else (m.o_save_s + (k - 1) * partial) / k
        factor = 1.0 + uncovered * (k - 1)
        notes.append(f"{self.strategy}, full every {k}: mean save {_fmt_s(average) if average is not None else 'n/a'}, "
                     f"loss factor 1 + {uncovered:.3g}*({k}-1) = {factor:.3g}")
        return SaveSchedule(average, factor, tuple(notes))

    @classmethod
    def from_spec(
        cls,
        spec: TrainingJobSpec,
        *,
        measurements: Measurements | None = None,
        failures: Sequence[FailureObservation] = (),
        observed_seconds: float = 0.0,
        measured_pls: float | None = None,
    ) -> TuningInputs:
        """Inputs for a job spec: replica counts, prior, PLS target and interval bounds from the spec."""
        recovery = spec.recovery
        checkpoint = recovery.checkpoint
        return cls(
            mode=recovery.mode,
            n_emb=spec.replicas.count(Role.EMBEDDING_SERVER),
            n_trainers=spec.replicas.count(Role.TRAINER),
            n_sync=spec.replicas.count(Role.SYNC_SERVER),
            mtbf_prior_hours_per_replica=recovery.mtbf_prior_hours,
            pls_target=recovery.pls_target,
            min_interval_s=checkpoint.min_interval_seconds,
            max_interval_s=checkpoint.max_interval_seconds,
            measurements=measurements or Measurements(),
            failures=failures,
            observed_seconds=observed_seconds,
            initial_interval_s=checkpoint.initial_interval_seconds,
            fixed_interval_s=checkpoint.interval_seconds,
            measured_pls=measured_pls,
            strategy=checkpoint.strategy.value,
            full_every=checkpoint.full_every,
            partial_fraction=(checkpoint.hot_fraction if checkpoint.strategy.value == "mfu"
                              else checkpoint.sample_fraction if checkpoint.strategy.value == "ssu" else 1.0),
        )


@dataclasses.dataclass(frozen=True)
class SaveSchedule:
    """Periodic saves under partial recovery, per the checkpoint strategy [I] (``PAPERS.md`` §1.7 for MFU/SSU).

    With MFU/SSU a cycle is one full save then ``k - 1`` partial ones, so the mean cost of a save is
    ``(o_full + (k-1) * o_partial) / k``. A failure loses every update since the last save (``T/2`` on
    average) plus, for the share ``u`` of updates no partial save since the last full one holds, the time
    from that full save to the last save (``(k-1) T / 2`` on average): the expected loss is the full
    strategy's times ``loss_factor = 1 + u (k - 1)``. Saving cheaply and often (CPR's point) pays when
    the mean cost falls faster than the loss factor rises.
    """

    o_save_s: float | None  # the mean cost of one periodic save
    loss_factor: float  # 1 for full saves
    notes: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class FailureModel:
    """Posterior MTBF per replica of each role, and the job-level times between failures (seconds)."""

    mtbf_emb_replica_s: float
    mtbf_trainer_replica_s: float
    mtbf_sync_replica_s: float
    t_fail_job_s: float
    t_fail_emb_s: float
    ignored_failures: int = 0


@dataclasses.dataclass(frozen=True)
class ModeEstimate:
    """One recovery mode evaluated at one interval.

    ``overhead_fraction`` leaves out the save term when ``o_save`` is unknown (``notes`` says so).
    ``pls`` is 0 for full recovery: it recomputes instead of losing samples.
    """

    mode: Mode
    interval_s: float
    overhead_fraction: float
    pls: float
    meets_pls_target: bool
    notes: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class IntervalDecision:
    """What :func:`plan` decided, with both modes' estimates for display and status.

    ``expected_lost_samples_per_emb_failure`` is in samples (``None`` without a throughput
    measurement): the shard-equivalent samples one embedding-server failure loses on average.
    """

    mode_chosen: Mode
    interval_s: float
    expected_overhead_fraction: float
    expected_pls: float
    reason: str
    t_fail_job_s: float
    t_fail_emb_s: float
    full: ModeEstimate
    partial: ModeEstimate
    floor_s: float
    expected_lost_samples_per_emb_failure: float | None = None
    measurements: Measurements = dataclasses.field(default_factory=Measurements)  # what the plan was made from


# -- closed forms --------------------------------------------------------------------------------------


def young_interval(o_save_s: float, t_fail_s: float) -> float:
    """Young's first-order optimum interval ``sqrt(2 * o_save * T_fail)``, seconds.

    [V] Young (CACM 1974), via ``PAPERS.md`` §4.3; CPR uses it for full recovery [R]. It minimises
    ``o_save/T + T/(2*T_fail)`` and assumes ``o_save << T_fail`` and Poisson failures.
    """
    _require_non_negative("o_save_s", o_save_s)
    _require_positive("t_fail_s", t_fail_s)
    return math.sqrt(2.0 * o_save_s * t_fail_s)


def daly_interval(o_save_s: float, t_fail_s: float) -> float:
    """Daly's higher-order optimum *compute* time between saves (excluding the save), seconds.

    [R] Daly (FGCS 2006), ``PAPERS.md`` §4.3: ``sqrt(2*d*M) * (1 + sqrt(d/2M)/3 + (d/2M)/9) - d`` for
    ``d < 2M``, else ``M``. Kept for reference and for when ``o_save`` is not small against the MTBF;
    :func:`plan` uses Young's formula, as ``ARCHITECTURE.md`` §5 specifies.
    """
    _require_non_negative("o_save_s", o_save_s)
    _require_positive("t_fail_s", t_fail_s)
    if o_save_s >= 2.0 * t_fail_s:
        return t_fail_s
    ratio = o_save_s / (2.0 * t_fail_s)
    return math.sqrt(2.0 * o_save_s * t_fail_s) * (1.0 + math.sqrt(ratio) / 3.0 + ratio / 9.0) - o_save_s


def pls_bounded_interval(pls_target: float, n_emb: int, t_fail_emb_s: float, loss_factor: float = 1.0) -> float:
    """The largest interval whose expected PLS meets the target: ``2 * PLS_target * N_emb * T_fail_emb / g``.

    [R] CPR's interval rule (``PAPERS.md`` §1.5, ``ARCHITECTURE.md`` §5) with ``g = loss_factor`` 1 for full
    saves (:class:`SaveSchedule` for MFU/SSU); the inversion of :func:`expected_pls` is [I]. Seconds.
    """
    _require_positive("pls_target", pls_target)
    _require_positive("n_emb", n_emb)
    _require_positive("t_fail_emb_s", t_fail_emb_s)
    _require_positive("loss_factor", loss_factor)
    return 2.0 * pls_target * n_emb * t_fail_emb_s / loss_factor


def expected_pls(interval_s: float, n_emb: int, t_fail_emb_s: float, loss_factor: float = 1.0) -> float:
    """Expected portion of lost samples under partial recovery: ``g * T_save / (2 * N_emb * T_fail_emb)``.

    [R] CPR's estimate; derivation [I] (``PAPERS.md`` §1.5): an embedding-server failure lands
    uniformly inside an interval, so loses ``T_save/2`` of updates to ``1/N_emb`` of the rows, once
    every ``T_fail_emb``. ``g = loss_factor`` adds what MFU/SSU saves leave out (:class:`SaveSchedule`).
    A fraction of samples, not a percentage.
    """
    _require_non_negative("interval_s", interval_s)
    _require_positive("n_emb", n_emb)
    _require_positive("t_fail_emb_s", t_fail_emb_s)
    _require_positive("loss_factor", loss_factor)
    return loss_factor * interval_s / (2.0 * n_emb * t_fail_emb_s)


def expected_overhead_full(
    interval_s: float, o_save_s: float, o_load_s: float, o_res_s: float, t_fail_job_s: float
) -> float:
    """Expected overhead of full recovery, as a fraction of failure-free run time.

    ``o_save/T + (T/2 + o_load + o_res) / T_fail_job``: CPR's four parts (save, load, lost
    computation, rescheduling) are [R]; the algebra, and lost computation being half an interval
    on average, are [I] (``PAPERS.md`` §1.4). Every failure of any role rolls the whole job back.
    """
    _require_positive("interval_s", interval_s)
    for name, value in (("o_save_s", o_save_s), ("o_load_s", o_load_s), ("o_res_s", o_res_s)):
        _require_non_negative(name, value)
    _require_positive("t_fail_job_s", t_fail_job_s)
    return o_save_s / interval_s + (interval_s / 2.0 + o_load_s + o_res_s) / t_fail_job_s


def expected_overhead_partial(
    interval_s: float,
    o_save_s: float,
    o_load_s: float,
    o_res_s: float,
    t_fail_job_s: float,
    t_fail_emb_s: float,
) -> float:
    """Expected overhead of partial recovery, as a fraction of failure-free run time.

    ``o_save/T + o_load / T_fail_emb + o_res / T_fail_job``. No computation is redone [R]; only an
    embedding-server failure loads a checkpoint (its shard); every failure pays rescheduling. This
    is ``PAPERS.md`` §5.3's ``(o_load_shard + o_res)/T_fail_emb + o_res/T_fail_other`` with the two
    rescheduling terms merged [I]. Charging the full ``o_res`` for trainer and sync-server failures
    is conservative: the survivors keep training meanwhile. With ``T_fail_job == T_fail_emb`` it is
    ``PAPERS.md`` §1.6's ``o_save/T + (o_load + o_res)/T_fail``.
    """
    _require_positive("interval_s", interval_s)
    for name, value in (("o_save_s", o_save_s), ("o_load_s", o_load_s), ("o_res_s", o_res_s)):
        _require_non_negative(name, value)
    _require_positive("t_fail_job_s", t_fail_job_s)
    _require_positive("t_fail_emb_s", t_fail_emb_s)
    return o_save_s / interval_s + o_load_s / t_fail_emb_s + o_res_s / t_fail_job_s


def break_even_pls(o_save_s: float, n_emb: int, t_fail_s: float) -> float:
    """PLS target below which partial recovery costs more than full recovery at Young's interval.

    ``sqrt(2*o_save*T_fail) / (4 * N_emb * T_fail)`` [I] (``PAPERS.md`` §1.6). It assumes one MTBF for
    both modes and ``o_load_part == o_load``, where the load and rescheduling terms cancel;
    :func:`benefit_test` compares the full expressions instead.
    """
    _require_positive("n_emb", n_emb)
    return young_interval(o_save_s, t_fail_s) / (4.0 * n_emb * t_fail_s)


def checkfreq_iterations(full_checkpoint_s: float, stall_s: float, iteration_s: float) -> int:
    """CheckFreq's initial checkpoint frequency in iterations: ``max(ceil((t_f - stall) / t_i), 1)``.

    [V] msr-fiddle/CheckFreq ``src/cf_iterator.py`` (``PAPERS.md`` §4.2): the previous persist
    (``t_f`` = snapshot + persist) must finish before the next snapshot starts.
    """
    _require_non_negative("full_checkpoint_s", full_checkpoint_s)
    _require_non_negative("stall_s", stall_s)
    _require_positive("iteration_s", iteration_s)
    # Round-off such as 9.000000001 iterations must not cost a whole extra iteration.
    return max(math.ceil((full_checkpoint_s - stall_s) / iteration_s - 1e-9), 1)


# -- MTBF ----------------------------------------------------------------------------------------------


def estimate_mtbf(
    prior_hours: float,
    prior_weight_failures: float,
    failures: Sequence[FailureObservation] | int,
    observed_seconds: float,
    replicas: int,
) -> float:
    """Mean time between failures of *one replica*, in seconds, from a prior and the observed log.

    ``(w * M0 + t * N) / (w + n)`` with prior MTBF ``M0 = prior_hours * 3600``, ``t`` observed seconds,
    ``N`` replicas, ``n`` observed failures (``len(failures)``, or the count itself; filter by role
    before calling) and ``w = max(0, a0 - n)``: each observed failure replaces one of the prior's ``a0``
    pseudo-failures (``prior_weight_failures``), together with its share of the prior's exposure [I].

    Without failures this is the Gamma-Poisson posterior mean (``PAPERS.md`` §5.2): the prior plus the
    failure-free exposure, so a quiet job's MTBF grows. Once the job has seen ``a0`` failures the
    estimate is the maximum-likelihood ``t * N / n``: a plain posterior keeps the prior's ``a0 * M0``
    replica-seconds forever, so a 24 h prior with 80 failures in 8 minutes still said 18 minutes while
    replicas lived 11 s (issue #9), and the interval never followed. Evidence wins after a0 failures.
    """
    _require_positive("prior_hours", prior_hours)
    _require_non_negative("prior_weight_failures", prior_weight_failures)
    _require_non_negative("observed_seconds", observed_seconds)
    if replicas < 0:
        raise ValueError(f"replicas must not be negative, got {replicas}")
    n_failures = failures if isinstance(failures, int) else len(failures)
    if n_failures < 0:
        raise ValueError(f"failure count must not be negative, got {n_failures}")
    prior_weight = max(0.0, prior_weight_failures - n_failures)
    pseudo_failures = prior_weight + n_failures
    if pseudo_failures == 0:
        raise ValueError("MTBF is undefined with neither a prior weight nor an observed failure")
    exposure_s = prior_weight * prior_hours * HOUR_S + observed_seconds * replicas
    return exposure_s / pseudo_failures


def failure_model(
    *,
    n_emb: int,
    n_trainers: int,
    n_sync: int,
    prior_hours: float,
    prior_weight_failures: float,
    failures: Sequence[FailureObservation],
    observed_seconds: float,
) -> FailureModel:
    """Per-role MTBF posteriors and the job-level ``T_fail_job`` and ``T_fail_emb`` (seconds).

    Each role gets its own posterior from the same per-replica prior (``PAPERS.md`` §5.2 [I]), so
    failing trainers do not shorten the PLS-bounded interval. Job level: failure rates add,
    ``T_fail_job = 1 / sum_r(N_r / M_r)`` and ``T_fail_emb = M_emb / N_emb``. Failures of a role
    that is not a replica role are counted in ``ignored_failures`` and otherwise ignored: no
    replica state was lost and no exposure can be attributed to them.
    """
    by_role: dict[str, int] = {role.value: 0 for role in Role}
    ignored = 0
    for failure in failures:
        if failure.role in by_role:
            by_role[failure.role] += 1
        else:
            ignored += 1
    counts = {Role.EMBEDDING_SERVER: n_emb, Role.TRAINER: n_trainers, Role.SYNC_SERVER: n_sync}
    mtbf = {
        role: estimate_mtbf(prior_hours, prior_weight_failures, by_role[role.value], observed_seconds, count)
        for role, count in counts.items()
    }
    job_rate = sum(count / mtbf[role] for role, count in counts.items())
    return FailureModel(
        mtbf_emb_replica_s=mtbf[Role.EMBEDDING_SERVER],
        mtbf_trainer_replica_s=mtbf[Role.TRAINER],
        mtbf_sync_replica_s=mtbf[Role.SYNC_SERVER],
        t_fail_job_s=1.0 / job_rate,
        t_fail_emb_s=mtbf[Role.EMBEDDING_SERVER] / n_emb,
        ignored_failures=ignored,
    )


# -- deciding ------------------------------------------------------------------------------------------


def save_floor(o_save_s: float | None, factor: float = DEFAULT_SAVE_FLOOR_FACTOR) -> float:
    """CheckFreq-style shortest interval ``factor * o_save`` (0 while ``o_save`` is unknown), seconds."""
    return 0.0 if o_save_s is None else factor * o_save_s


def measured_floor(m: Measurements, factor: float = DEFAULT_SAVE_FLOOR_FACTOR) -> float:
    """The floor from what a full save takes start to end (stall + write) once measured, else from ``o_save``:
    the next save cannot start before the previous one is written (CheckFreq [V])."""
    return save_floor(m.save_duration_s if m.save_duration_s is not None else m.o_save_s, factor)


def clamp_interval(
    interval_s: float, min_interval_s: float, max_interval_s: float, floor_s: float = 0.0
) -> tuple[float, tuple[str, ...]]:
    """Clamp to ``[min, max]``, then raise to the save floor; returns the interval and what moved it.

    The floor wins over the maximum [I]: saves cannot overlap, so an interval shorter than a save
    is not achievable whatever the cap says.
    """
    notes: list[str] = []
    clamped = interval_s
    if clamped < min_interval_s:
        clamped = min_interval_s
        notes.append(f"raised to minIntervalSeconds {_fmt_s(min_interval_s)}")
    elif clamped > max_interval_s:
        clamped = max_interval_s
        notes.append(f"capped at maxIntervalSeconds {_fmt_s(max_interval_s)}")
    if clamped < floor_s:
        clamped = floor_s
        notes.append(f"raised to the save floor {_fmt_s(floor_s)} (saves must not overlap)")
    return clamped, tuple(notes)


def estimate_mode(
    mode: Mode,
    interval_s: float,
    *,
    o_save_s: float | None,
    o_load_s: float,
    o_res_s: float,
    t_fail_job_s: float,
    t_fail_emb_s: float,
    n_emb: int,
    pls_target: float,
    notes: tuple[str, ...] = (),
    loss_factor: float = 1.0,
) -> ModeEstimate:
    """Overhead and PLS of one mode at one interval; ``o_save_s=None`` leaves the save term out.
    ``o_save_s`` is that mode's mean save cost and ``loss_factor`` its :class:`SaveSchedule`'s (partial)."""
    extra: tuple[str, ...] = ()
    if o_save_s is None:
        extra = ("overhead excludes the save cost (o_save not measured)",)
    o_save = 0.0 if o_save_s is None else o_save_s
    if mode == "full":
        overhead = expected_overhead_full(interval_s, o_save, o_load_s, o_res_s, t_fail_job_s)
        pls = 0.0
    else:
        overhead = expected_overhead_partial(interval_s, o_save, o_load_s, o_res_s, t_fail_job_s, t_fail_emb_s)
        pls = expected_pls(interval_s, n_emb, t_fail_emb_s, loss_factor)
    meets = pls <= pls_target * (1.0 + _PLS_RELATIVE_TOLERANCE)
    return ModeEstimate(mode, interval_s, overhead, pls, meets, notes + extra)


def benefit_test(
    full: ModeEstimate, partial: ModeEstimate, measured_pls: float | None = None, pls_target: float | None = None
) -> tuple[Mode, str]:
    """CPR's benefit test: partial recovery only if it meets the PLS target and costs less.

    [R] idea, [I] formula (``PAPERS.md`` §1.6, §5.3): compare full recovery at its interval with
    partial recovery at its PLS-bounded interval; a tie goes to full, which keeps the model exact.
    A live ``measured_pls`` already at or above ``pls_target`` also forces full (§1.9 item 3 [I]):
    the accuracy budget is spent. Returns the mode and a one-line reason.
    """
    if not partial.meets_pls_target:
        return "full", (
            f"partial cannot meet the PLS target at any allowed interval "
            f"(PLS {partial.pls:.4g} at {_fmt_s(partial.interval_s)})"
        )
    if measured_pls is not None and pls_target is not None and measured_pls >= pls_target:
        return "full", f"measured PLS {measured_pls:.4g} has reached the target {pls_target:.4g}"
    comparison = f"partial {_pct(partial.overhead_fraction)} vs full {_pct(full.overhead_fraction)} overhead"
    if partial.overhead_fraction < full.overhead_fraction:
        return "partial", f"{comparison}: partial is cheaper"
    return "full", f"{comparison}: partial is not cheaper"


def evaluate_interval(inputs: TuningInputs, mode: Mode, interval_s: float) -> ModeEstimate:
    """One mode at an arbitrary interval (no clamping), with the same MTBF and cost fallbacks as
    :func:`plan`; ``notes`` flags an interval outside the bounds, under the floor or over the PLS target."""
    model = _failure_model(inputs)
    o_load, o_res, _ = _resolved_costs(inputs.measurements)
    floor = measured_floor(inputs.measurements, inputs.save_floor_factor)
    schedule = inputs.save_schedule()
    notes: list[str] = []
    if interval_s < inputs.min_interval_s:
        notes.append("below minIntervalSeconds")
    if interval_s > inputs.max_interval_s:
        notes.append("above maxIntervalSeconds")
    if interval_s < floor:
        notes.append("below the save floor")
    partial = mode == "partial"
    estimate = estimate_mode(
        mode, interval_s, o_save_s=schedule.o_save_s if partial else inputs.measurements.o_save_s, o_load_s=o_load,
        o_res_s=o_res, t_fail_job_s=model.t_fail_job_s, t_fail_emb_s=model.t_fail_emb_s, n_emb=inputs.n_emb,
        pls_target=inputs.pls_target, notes=tuple(notes), loss_factor=schedule.loss_factor if partial else 1.0,
    )
    if not estimate.meets_pls_target:
        estimate = dataclasses.replace(estimate, notes=(*estimate.notes, "PLS above target"))
    return estimate


def plan(inputs: TuningInputs) -> IntervalDecision:
    """Choose the recovery mode and checkpoint interval (``PAPERS.md`` §5.3 [I]).

    - full: Young's interval on ``T_fail_job``;
    - partial: the PLS-bounded interval on ``T_fail_emb``;
    - auto: both, then :func:`benefit_test`;
    - every interval is clamped to ``[min, max]`` and raised to ``save_floor_factor * o_save``;
      ``fixed_interval_s`` replaces the tuned value and is used unclamped.

    Fallbacks while costs are unmeasured: without ``o_save`` the full interval is the spec's
    initial interval, and the partial one the initial interval or the PLS bound if shorter (the
    first save then comes soon and measures ``o_save``); auto picks partial when it meets the PLS
    target, as the save costs needed to compare are unknown. Missing ``o_load``/``o_res`` count as 0.
    ``reason`` records each fallback.
    """
    m = inputs.measurements
    model = _failure_model(inputs)
    o_load, o_res, cost_notes = _resolved_costs(m)
    floor = measured_floor(m, inputs.save_floor_factor)

    full_raw, full_why = _full_target(inputs, model)
    partial_raw, partial_why = _partial_target(inputs, model)
    full = _estimate_at(inputs, model, "full", full_raw, floor, o_load, o_res, full_why)
    partial = _estimate_at(inputs, model, "partial", partial_raw, floor, o_load, o_res, partial_why)

    pls_spent = inputs.measured_pls is not None and inputs.measured_pls >= inputs.pls_target
    if inputs.mode is RecoveryMode.AUTO:
        if m.o_save_s is None and partial.meets_pls_target and not pls_spent:
            chosen: Mode = "partial"
            mode_why = "auto: partial (o_save not measured yet, benefit test deferred; partial meets the PLS target)"
        else:
            chosen, why = benefit_test(full, partial, inputs.measured_pls, inputs.pls_target)
            mode_why = f"auto: {chosen} ({why})"
    else:
        chosen = "full" if inputs.mode is RecoveryMode.FULL else "partial"
        mode_why = f"mode {chosen} (spec)"
    picked = full if chosen == "full" else partial

    parts = [mode_why, *picked.notes, *(inputs.save_schedule().notes if chosen == "partial" else ())]
    if chosen == "partial" and not picked.meets_pls_target:
        parts.append(f"expected PLS {picked.pls:.4g} exceeds the target {inputs.pls_target:.4g}")
    if chosen == "partial" and pls_spent:
        parts.append(f"measured PLS {inputs.measured_pls:.4g} has reached the target {inputs.pls_target:.4g}")
    parts.extend(cost_notes)
    if model.ignored_failures:
        parts.append(f"{model.ignored_failures} failure(s) of non-replica roles ignored")

    lost: float | None = None
    if m.samples_per_second is not None:
        lost = (0.0 if chosen == "full" else
                m.samples_per_second * picked.interval_s / 2.0 / inputs.n_emb * inputs.save_schedule().loss_factor)
    return IntervalDecision(
        mode_chosen=chosen,
        interval_s=picked.interval_s,
        expected_overhead_fraction=picked.overhead_fraction,
        expected_pls=picked.pls,
        reason="; ".join(parts),
        t_fail_job_s=model.t_fail_job_s,
        t_fail_emb_s=model.t_fail_emb_s,
        full=full,
        partial=partial,
        floor_s=floor,
        expected_lost_samples_per_emb_failure=lost,
        measurements=m,
    )


# -- helpers -------------------------------------------------------------------------------------------


def _failure_model(inputs: TuningInputs) -> FailureModel:
    return failure_model(
        n_emb=inputs.n_emb,
        n_trainers=inputs.n_trainers,
        n_sync=inputs.n_sync,
        prior_hours=inputs.mtbf_prior_hours_per_replica,
        prior_weight_failures=inputs.prior_weight_failures,
        failures=inputs.failures,
        observed_seconds=inputs.observed_seconds,
    )


def _resolved_costs(m: Measurements) -> tuple[float, float, tuple[str, ...]]:
    # Zero moves neither interval, and in the benefit test it only drops partial recovery's
    # cheaper loads, so an unmeasured cost can never tip the choice towards partial.
    missing = [name for name, value in (("o_load", m.o_load_s), ("o_res", m.o_res_s)) if value is None]
    notes = (f"{' and '.join(missing)} not measured, counted as 0",) if missing else ()
    return (m.o_load_s or 0.0), (m.o_res_s or 0.0), notes


def _full_target(inputs: TuningInputs, model: FailureModel) -> tuple[float, str]:
    if inputs.fixed_interval_s is not None:
        return inputs.fixed_interval_s, f"fixed interval {_fmt_s(inputs.fixed_interval_s)} (spec)"
    o_save = inputs.measurements.o_save_s
    if o_save is None:
        return inputs.initial_interval_s, (
            f"o_save not measured yet: initial interval {_fmt_s(inputs.initial_interval_s)} (spec)"
        )
    young = young_interval(o_save, model.t_fail_job_s)
    return young, f"Young sqrt(2*o_save*T_fail_job) = {_fmt_s(young)}"


def _partial_target(inputs: TuningInputs, model: FailureModel) -> tuple[float, str]:
    if inputs.fixed_interval_s is not None:
        return inputs.fixed_interval_s, f"fixed interval {_fmt_s(inputs.fixed_interval_s)} (spec)"
    factor = inputs.save_schedule().loss_factor
    bound = pls_bounded_interval(inputs.pls_target, inputs.n_emb, model.t_fail_emb_s, factor)
    why = (f"PLS bound 2*PLS_target*N_emb*T_fail_emb = {_fmt_s(bound)}" if factor == 1.0 else
           f"PLS bound 2*PLS_target*N_emb*T_fail_emb/{factor:.3g} = {_fmt_s(bound)}")
    if inputs.measurements.o_save_s is None and inputs.initial_interval_s < bound:
        return inputs.initial_interval_s, (
            f"o_save not measured yet: initial interval {_fmt_s(inputs.initial_interval_s)} (spec), under the {why}"
        )
    return bound, why


def _estimate_at(
    inputs: TuningInputs,
    model: FailureModel,
    mode: Mode,
    raw_s: float,
    floor_s: float,
    o_load_s: float,
    o_res_s: float,
    why: str,
) -> ModeEstimate:
    notes: tuple[str, ...]
    if inputs.fixed_interval_s is not None:
        interval = raw_s
        notes = (why,)
        if interval < floor_s:
            notes += (f"below the save floor {_fmt_s(floor_s)}: saves may overlap",)
    else:
        interval, moved = clamp_interval(raw_s, inputs.min_interval_s, inputs.max_interval_s, floor_s)
        notes = (why, *moved)
    schedule = inputs.save_schedule()
    partial = mode == "partial"
    return estimate_mode(
        mode, interval, o_save_s=schedule.o_save_s if partial else inputs.measurements.o_save_s, o_load_s=o_load_s,
        o_res_s=o_res_s, t_fail_job_s=model.t_fail_job_s, t_fail_emb_s=model.t_fail_emb_s, n_emb=inputs.n_emb,
        pls_target=inputs.pls_target, notes=notes, loss_factor=schedule.loss_factor if partial else 1.0,
    )


def _require_positive(name: str, value: float) -> None:
    if not (value > 0.0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive finite number, got {value}")


def _require_non_negative(name: str, value: float) -> None:
    if not (value >= 0.0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a non-negative finite number, got {value}")


def _fmt_s(seconds: float) -> str:
    return f"{seconds:.6g} s"


def _pct(fraction: float) -> str:
    return f"{fraction * 100:.3g}%"


# -- a pytorch workload (spec.workload: pytorch) -----------------------------------------------------------


def plan_pytorch(
    *,
    workers: int,
    mtbf_prior_hours_per_worker: float,
    failures: Sequence[FailureObservation],
    observed_seconds: float,
    o_save_s: float | None,
    o_load_s: float | None,
    min_interval_s: float,
    max_interval_s: float,
    initial_interval_s: float,
    fixed_interval_s: float | None = None,
    prior_weight_failures: float = DEFAULT_PRIOR_WEIGHT_FAILURES,
) -> IntervalDecision:
    """The checkpoint interval of a dense data-parallel job, where every failure rolls every rank back to the
    newest checkpoint (only full recovery is consistent): Daly's higher-order optimum on the job's time between
    failures ``T_fail_job = MTBF_worker / workers`` (the posterior from the prior and the failure log, as for
    DLRM) and ``o_save``, the training time one save costs (the loop stands still while it runs). Young's
    ``sqrt(2*o_save*T_fail_job)`` is its first-order term; Daly's corrections matter when ``o_save`` is not
    small against ``T_fail_job``. Clamped to the spec's bounds and raised to the save floor."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    worker_failures = [f for f in failures if f.role == Role.WORKER.value]
    mtbf = estimate_mtbf(mtbf_prior_hours_per_worker, prior_weight_failures, worker_failures, observed_seconds,
                         workers)
    t_fail_job = mtbf / workers
    if fixed_interval_s is not None:
        raw, why = fixed_interval_s, f"fixed interval {_fmt_s(fixed_interval_s)} (spec)"
    elif o_save_s is None:
        raw, why = initial_interval_s, f"o_save not measured yet: initial interval {_fmt_s(initial_interval_s)} (spec)"
    else:
        raw = daly_interval(o_save_s, t_fail_job)
        why = (f"Daly on o_save {_fmt_s(o_save_s)} and T_fail_job {_fmt_s(t_fail_job)} = {_fmt_s(raw)} "
               f"(Young sqrt(2*o_save*T_fail_job) = {_fmt_s(young_interval(o_save_s, t_fail_job))})")
    floor = save_floor(o_save_s)
    notes: tuple[str, ...] = ()
    interval = raw
    if fixed_interval_s is None:
        interval, notes = clamp_interval(raw, min_interval_s, max_interval_s, floor)
    overhead = expected_overhead_full(interval, o_save_s or 0.0, o_load_s or 0.0, 0.0, t_fail_job)
    estimate = ModeEstimate("full", interval, overhead, 0.0, True, notes)
    return IntervalDecision(
        mode_chosen="full", interval_s=interval, expected_overhead_fraction=overhead, expected_pls=0.0,
        reason="; ".join([why, *notes, f"{len(worker_failures)} worker failure(s) in {_fmt_s(observed_seconds)}"]),
        t_fail_job_s=t_fail_job, t_fail_emb_s=t_fail_job, full=estimate, partial=estimate, floor_s=floor,
        measurements=Measurements(o_save_s=o_save_s, o_load_s=o_load_s))
