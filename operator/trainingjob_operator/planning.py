"""The what-if table behind ``trainingjob plan``: each recovery mode's tuned interval and its curve.

For a job spec, and measurements where the user has them, :func:`plan_table` evaluates full,
partial and auto recovery with :mod:`trainingjob_operator.tuning`, plus each mode at a few
multiples of its chosen interval, so a person can see how overhead and PLS move with the
interval. :func:`render_plan` turns the rows into a ``rich`` table. Pure: no I/O, no clock.

Before a job has run nothing is measured, so missing costs come from a size model
(:func:`assumed_measurements`); each assumed value is named in the auto row's note.
"""

from __future__ import annotations

import dataclasses

from rich.table import Table

from trainingjob_operator.api.spec import ModelSpec, RecoveryMode, Role, TrainingJob
from trainingjob_operator.tuning import Measurements, Mode, TuningInputs, evaluate_interval, plan

CURVE_SCALES: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
"""Multiples of each mode's chosen interval shown in the table (1.0 is the chosen row)."""

BYTES_PER_FLOAT = 4
OPTIMIZER_STATE_FACTOR = 2
"""Embedding bytes are doubled for optimizer state [I].

The trainer uses row-wise Adagrad (one float per row), so doubling over-counts; it is an upper
bound that also covers an element-wise optimizer, and over-estimating the save cost only errs
towards longer full-recovery intervals and a higher save floor.
"""

ASSUMED_STORAGE_BYTES_PER_S = 200e6
"""Write and read bandwidth of one embedding server to checkpoint storage, bytes/s [I].

A network volume or object store typically sustains 100-500 MB/s per client; 200 MB/s is a
middle value. Shards save and load in parallel, so one shard's time is the job's time.
"""

ASSUMED_O_RES_S = 30.0
"""Detect + reschedule + restart of a replacement pod, seconds [I]: detection within the spec's
15 s heartbeat timeout, then a pod start with a cached image on a node that has room."""


@dataclasses.dataclass(frozen=True)
class PlanRow:
    """One line of the what-if table.

    ``mode`` is ``"full"``, ``"partial"`` or ``"auto → <mode>"``; ``interval_s`` in seconds;
    ``expected_overhead_pct`` in percent of failure-free run time; ``expected_pls`` a fraction of
    samples (0 for full recovery, which recomputes instead); ``scale`` the multiple of the mode's
    chosen interval; ``chosen`` marks the interval the coordinator would use.
    """

    mode: str
    interval_s: float
    expected_overhead_pct: float
    expected_pls: float
    note: str
    chosen: bool = False
    scale: float = 1.0


def embedding_bytes(model: ModelSpec) -> int:
    """Bytes of every embedding table with optimizer state: ``sum(rows) * dim * 4 * 2``."""
    return sum(model.rows()) * model.embedding_dim * BYTES_PER_FLOAT * OPTIMIZER_STATE_FACTOR


def assumed_measurements(job: TrainingJob) -> Measurements:
    """Costs assumed for a job that has not run yet, in seconds.

    ``o_save = o_load = embedding_bytes / N_emb / ASSUMED_STORAGE_BYTES_PER_S`` (hash sharding
    spreads rows evenly, shards work in parallel); ``o_res = ASSUMED_O_RES_S``. Treating the whole
    write as stall is conservative: the trainer snapshots and persists in the background.
    """
    n_emb = job.spec.replicas.count(Role.EMBEDDING_SERVER)
    shard_s = embedding_bytes(job.spec.model) / n_emb / ASSUMED_STORAGE_BYTES_PER_S
    return Measurements(o_save_s=shard_s, o_load_s=shard_s, o_res_s=ASSUMED_O_RES_S)


def plan_table(job: TrainingJob, measurements: Measurements | None = None) -> list[PlanRow]:
    """Rows for full and partial recovery (each at :data:`CURVE_SCALES` times its chosen interval)
    and one row for auto, from the job's spec, its MTBF prior (no failures observed) and
    ``measurements``, whose missing fields are filled from :func:`assumed_measurements`."""
    filled, assumed = _fill(job, measurements)
    inputs = TuningInputs.from_spec(job.spec, measurements=filled)
    rows: list[PlanRow] = []
    for mode in (RecoveryMode.FULL, RecoveryMode.PARTIAL):
        rows.extend(_curve(dataclasses.replace(inputs, mode=mode)))
    auto = plan(dataclasses.replace(inputs, mode=RecoveryMode.AUTO))
    note = auto.reason
    if assumed:
        note += "; assumed " + ", ".join(assumed)
    rows.append(
        PlanRow(
            mode=f"auto → {auto.mode_chosen}",
            interval_s=auto.interval_s,
            expected_overhead_pct=auto.expected_overhead_fraction * 100.0,
            expected_pls=auto.expected_pls,
            note=note,
            chosen=True,
        )
    )
    return rows


def render_plan(rows: list[PlanRow]) -> Table:
    """A ``rich`` table of the rows: chosen rows bold and marked ``▶``, one section per mode."""
    table = Table(title="Checkpoint interval what-if", title_justify="left")
    table.add_column("", no_wrap=True)
    table.add_column("Mode", no_wrap=True)
    table.add_column("x chosen", justify="right", no_wrap=True)
    table.add_column("Interval (s)", justify="right", no_wrap=True)
    table.add_column("Interval", justify="right", no_wrap=True)
    table.add_column("Overhead (% of run time)", justify="right", no_wrap=True)
    table.add_column("Expected PLS (% of samples)", justify="right", no_wrap=True)
    table.add_column("Note", overflow="fold")
    for index, row in enumerate(rows):
        next_mode = rows[index + 1].mode if index + 1 < len(rows) else None
        table.add_row(
            "▶" if row.chosen else "",
            row.mode,
            f"{row.scale:g}x",
            f"{row.interval_s:,.0f}" if row.interval_s >= 100 else f"{row.interval_s:.3g}",
            human_duration(row.interval_s),
            f"{row.expected_overhead_pct:.3g}",
            f"{row.expected_pls * 100:.3g}",
            row.note,
            style="bold" if row.chosen else None,
            end_section=next_mode != row.mode,
        )
    return table


def human_duration(seconds: float) -> str:
    """``42 s``, ``12.5 min`` or ``3.2 h``: the unit a person reads interval lengths in."""
    if seconds < 90:
        return f"{seconds:.3g} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"


def _fill(job: TrainingJob, given: Measurements | None) -> tuple[Measurements, list[str]]:
    defaults = assumed_measurements(job)
    given = given or Measurements()
    values: dict[str, float | None] = {}
    assumed: list[str] = []
    for field in ("o_save_s", "o_load_s", "o_res_s"):
        value = getattr(given, field)
        if value is None:
            value = getattr(defaults, field)
            assumed.append(f"{field.removesuffix('_s')}={value:.3g} s")
        values[field] = value
    return Measurements(**values, samples_per_second=given.samples_per_second), assumed


def _curve(inputs: TuningInputs) -> list[PlanRow]:
    decision = plan(inputs)
    mode: Mode = decision.mode_chosen
    rows = []
    for scale in CURVE_SCALES:
        if scale == 1.0:
            # The decision's own numbers, so the chosen row always matches what plan() reports.
            interval, overhead, pls, note = (decision.interval_s, decision.expected_overhead_fraction,
                                             decision.expected_pls, decision.reason)
        else:
            estimate = evaluate_interval(inputs, mode, decision.interval_s * scale)
            interval, overhead, pls = estimate.interval_s, estimate.overhead_fraction, estimate.pls
            note = "; ".join(estimate.notes)
        rows.append(PlanRow(mode, interval, overhead * 100.0, pls, note, chosen=scale == 1.0, scale=scale))
    return rows
