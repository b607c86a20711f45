"""The what-if table of ``trainingjob plan``: rows per mode, the curve, assumptions, rendering."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from rich.console import Console
from rich.table import Table

from trainingjob_operator.api.spec import RecoveryMode, TrainingJob
from trainingjob_operator.planning import (
    ASSUMED_O_RES_S,
    ASSUMED_STORAGE_BYTES_PER_S,
    CURVE_SCALES,
    PlanRow,
    assumed_measurements,
    embedding_bytes,
    human_duration,
    plan_table,
    render_plan,
)
from trainingjob_operator.tuning import Measurements, TuningInputs, plan


def make_job(**spec: Any) -> TrainingJob:
    return TrainingJob.model_validate(
        {"apiVersion": "training.cpr.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "demo"},
         "spec": spec}
    )


def rows_of(rows: list[PlanRow], mode: str) -> list[PlanRow]:
    return [row for row in rows if row.mode == mode]


def test_embedding_bytes_of_default_model() -> None:
    # 26 tables x 100k rows x 16 floats x 4 bytes, doubled for optimizer state.
    assert embedding_bytes(make_job().spec.model) == 26 * 100_000 * 16 * 4 * 2


def test_embedding_bytes_uses_table_rows() -> None:
    job = make_job(model={"sparseFeatures": 2, "tableRows": [10, 30], "embeddingDim": 8})
    assert embedding_bytes(job.spec.model) == 40 * 8 * 4 * 2


def test_assumed_measurements_split_over_shards() -> None:
    two = assumed_measurements(make_job())
    four = assumed_measurements(make_job(replicas={"embeddingServer": {"replicas": 4}}))
    assert two.o_save_s == pytest.approx(26 * 100_000 * 16 * 8 / 2 / ASSUMED_STORAGE_BYTES_PER_S)
    assert two.o_load_s == two.o_save_s
    assert two.o_res_s == ASSUMED_O_RES_S
    assert four.o_save_s == pytest.approx(two.o_save_s / 2)  # type: ignore[operator]


def test_table_shape_for_default_job() -> None:
    rows = plan_table(make_job())
    assert [row.mode for row in rows] == ["full"] * 5 + ["partial"] * 5 + ["auto → partial"]
    for mode in ("full", "partial"):
        curve = rows_of(rows, mode)
        assert [row.scale for row in curve] == list(CURVE_SCALES)
        assert [row.chosen for row in curve] == [scale == 1.0 for scale in CURVE_SCALES]
        chosen = next(row for row in curve if row.chosen)
        for row in curve:
            assert row.interval_s == pytest.approx(chosen.interval_s * row.scale)
    assert rows[-1].chosen


def test_chosen_rows_match_plan() -> None:
    job = make_job()
    rows = plan_table(job)
    inputs = TuningInputs.from_spec(job.spec, measurements=assumed_measurements(job))
    for mode in ("full", "partial"):
        decision = plan(dataclasses.replace(inputs, mode=RecoveryMode(mode)))
        chosen = next(row for row in rows_of(rows, mode) if row.chosen)
        assert chosen.interval_s == pytest.approx(decision.interval_s)
        assert chosen.expected_overhead_pct == pytest.approx(decision.expected_overhead_fraction * 100)
        assert chosen.expected_pls == pytest.approx(decision.expected_pls)
        assert chosen.note == decision.reason
    auto = plan(dataclasses.replace(inputs, mode=RecoveryMode.AUTO))
    assert rows[-1].mode == f"auto → {auto.mode_chosen}"
    assert rows[-1].interval_s == pytest.approx(auto.interval_s)
    assert rows[-1].note.startswith(auto.reason)


def test_curve_shapes() -> None:
    bounds = {"maxIntervalSeconds": 1e6, "minIntervalSeconds": 0.01}
    rows = plan_table(make_job(recovery={"checkpoint": bounds}))
    full = rows_of(rows, "full")
    # Young's interval is the bottom of the full-recovery U curve.
    best = min(full, key=lambda row: row.expected_overhead_pct)
    assert best.chosen
    assert all(row.expected_pls == 0.0 for row in full)
    partial = rows_of(rows, "partial")
    # Partial: overhead falls and PLS rises with the interval; past the chosen one PLS is over target.
    assert [r.expected_overhead_pct for r in partial] == sorted((r.expected_overhead_pct for r in partial),
                                                                reverse=True)
    chosen = next(row for row in partial if row.chosen)
    for row in partial:
        assert row.expected_pls == pytest.approx(chosen.expected_pls * row.scale)
        assert ("PLS above target" in row.note) == (row.scale > 1.0)


def test_curve_notes_flag_bounds() -> None:
    capped = make_job(recovery={"checkpoint": {"maxIntervalSeconds": 3600}})
    partial = rows_of(plan_table(capped), "partial")
    assert "above maxIntervalSeconds" in partial[-1].note  # 4 x 3456 s > 3600 s
    assert "above maxIntervalSeconds" not in rows_of(plan_table(make_job()), "partial")[-1].note  # default 24 h


def test_assumptions_named_in_auto_note() -> None:
    auto = plan_table(make_job())[-1]
    assert "assumed o_save=" in auto.note and "o_load=" in auto.note and "o_res=30 s" in auto.note


def test_given_measurements_replace_assumptions() -> None:
    rows = plan_table(make_job(), Measurements(o_save_s=2.0, o_res_s=10.0))
    auto = rows[-1]
    assert "o_save=" not in auto.note and "o_res=" not in auto.note
    assert "assumed o_load=" in auto.note
    complete = plan_table(make_job(), Measurements(o_save_s=2.0, o_load_s=2.0, o_res_s=10.0))
    assert "assumed" not in complete[-1].note


def test_slow_saves_change_the_full_interval() -> None:
    fast = next(r for r in plan_table(make_job(), Measurements(o_save_s=1.0)) if r.mode == "full" and r.chosen)
    slow = next(r for r in plan_table(make_job(), Measurements(o_save_s=16.0)) if r.mode == "full" and r.chosen)
    assert slow.interval_s == pytest.approx(4 * fast.interval_s)


def test_tight_pls_target_makes_auto_full() -> None:
    rows = plan_table(make_job(recovery={"plsTarget": 1e-6}))
    assert rows[-1].mode == "auto → full"


def test_fixed_interval_is_every_chosen_row() -> None:
    rows = plan_table(make_job(recovery={"checkpoint": {"intervalSeconds": 120}}))
    assert {row.interval_s for row in rows if row.chosen} == {120.0}


def test_render_plan_table() -> None:
    rows = plan_table(make_job())
    table = render_plan(rows)
    assert isinstance(table, Table)
    assert table.row_count == len(rows)
    headers = [str(column.header) for column in table.columns]
    assert "Interval (s)" in headers
    assert "Overhead (% of run time)" in headers
    assert "Expected PLS (% of samples)" in headers
    console = Console(record=True, width=240)
    console.print(table)
    text = console.export_text()
    assert text.count("▶") == 3
    assert "auto → partial" in text
    assert "57.6 min" in text  # the default job's PLS-bounded interval, 3456 s


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(42.0, "42 s"), (89.0, "89 s"), (750.0, "12.5 min"), (3456.0, "57.6 min"), (11_520.0, "3.2 h")],
)
def test_human_duration(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text
