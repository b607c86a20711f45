"""Scaling, options, costs and failures from a summary, the AUC proxy's calibration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainingjob_operator.api import parse_manifest
from trainingjob_operator.api.spec import Role, TrainingJobSpec
from trainingjob_operator.simulate import Costs, FailureSpec, SimulateInputError
from trainingjob_operator.simulate.config import (
    build_config,
    node_mtbf_s,
    parse_modes,
    parse_roles,
    scale_spec,
    scaled_counts,
)
from trainingjob_operator.simulate.inputs import failure_log, measured_costs, resolve_costs
from trainingjob_operator.simulate.quality import AUC_PER_PLS, calibrate, expected_auc_change


def test_nodes_scale_every_role_in_proportion() -> None:
    spec = TrainingJobSpec()  # 2 trainers, 2 embedding servers, 1 sync server
    assert scaled_counts(spec, 1000) == {Role.EMBEDDING_SERVER: 500, Role.SYNC_SERVER: 1, Role.TRAINER: 499}
    scaled = scale_spec(TrainingJobSpec.model_validate({"replicas": {"trainer": {"replicas": 6},
                                                                     "embeddingServer": {"replicas": 2}}}), 401)
    assert (scaled.replicas.trainer.replicas, scaled.replicas.embedding_server.replicas) == (300, 100)
    with pytest.raises(SimulateInputError, match=r"^--nodes: must be at least 3"):
        scaled_counts(spec, 2)
    with pytest.raises(SimulateInputError, match=r"^--nodes: 3000 nodes give 1500 embedding-server replicas"):
        scaled_counts(spec, 3000)


def test_mtbf_options() -> None:
    spec = scale_spec(TrainingJobSpec(), 1000)
    roles = parse_roles(None)
    assert node_mtbf_s(spec, mtbf_hours=14.0, mtbf_per_node_hours=None, roles=roles) == 14.0 * 3600 * 1000
    assert node_mtbf_s(spec, mtbf_hours=None, mtbf_per_node_hours=5000.0, roles=roles) == 5000.0 * 3600
    assert node_mtbf_s(spec, mtbf_hours=14.0, mtbf_per_node_hours=None, roles=("embedding-server",)) == \
        14.0 * 3600 * 500
    assert node_mtbf_s(spec, mtbf_hours=None, mtbf_per_node_hours=None, roles=roles) == 24.0 * 3600  # the prior
    with pytest.raises(SimulateInputError, match=r"^--mtbf: --mtbf and --mtbf-per-node exclude each other"):
        node_mtbf_s(spec, mtbf_hours=1.0, mtbf_per_node_hours=1.0, roles=roles)
    with pytest.raises(SimulateInputError, match=r"^--mtbf-per-node: must be a positive"):
        node_mtbf_s(spec, mtbf_hours=None, mtbf_per_node_hours=-1.0, roles=roles)
    with pytest.raises(SimulateInputError, match=r"^--fail-roles: unknown role 'gpu'"):
        parse_roles("trainer,gpu")
    assert parse_modes("FULL, partial+mfu") == ("full", "partial+MFU")
    with pytest.raises(SimulateInputError, match=r"^--modes: unknown mode 'half'"):
        parse_modes("half")


def test_a_mode_is_a_spec_variant_with_the_planned_samples_of_its_days() -> None:
    config = build_config(TrainingJobSpec(), "partial+SSU", costs=Costs(1.0, 1.0, 1.0),
                          failures=FailureSpec(mtbf_node_s=3600.0), days=2.0, prior_hours=7.0,
                          samples_per_second=100.0, fixed_interval_s=600.0)
    recovery = config.spec.recovery
    assert (recovery.mode.value, recovery.checkpoint.strategy.value) == ("partial", "ssu")
    assert recovery.checkpoint.interval_seconds == 600.0 and recovery.mtbf_prior_hours == 7.0
    assert config.spec.data.planned_samples == 2 * 86_400 * 100
    with pytest.raises(SimulateInputError, match=r"^--days: must be a positive"):
        build_config(TrainingJobSpec(), "full", costs=Costs(1.0, 1.0, 1.0), failures=FailureSpec(), days=0.0)


SUMMARY = {
    "checkpoint": {"cost": {"stall_s": 0.4, "write_s": 2.0, "write_slowdown": 0.3, "o_save_s": 1.0,
                            "partial_o_save_s": 0.3, "uncovered": 0.15},
                   "o_load_s": [0.5, 0.7, 0.6]},
    "failures": [
        {"role": "embedding-server", "rank": 0, "time_s": 8.0, "recovered_after_s": 2.6},
        {"role": "trainer", "rank": 1, "time_s": 16.0, "recovered_after_s": 0.4},
        {"role": "sync-server", "rank": 0, "time_s": 30.0, "recovered_after_s": 0.6},
    ],
}


def test_costs_and_failures_from_a_summary(tmp_path: Path) -> None:
    assert measured_costs(SUMMARY) == {"o_save_s": 1.0, "o_save_partial_s": 0.3, "uncovered": 0.15,
                                       "o_load_s": 0.6, "o_res_s": 0.5}
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(SUMMARY))
    job = parse_manifest({"apiVersion": "training.cpr.dev/v1alpha1", "kind": "TrainingJob",
                          "metadata": {"name": "x"}})
    costs, notes = resolve_costs(job, summary=path, o_res=42.0)
    assert (costs.o_save_s, costs.o_save_partial_s, costs.o_load_s, costs.o_res_s, costs.uncovered) == \
        (1.0, 0.3, 0.6, 42.0, 0.15)
    assert any("o_res = 42 (option)" in n for n in notes)
    assumed, _ = resolve_costs(job)  # nothing measured: trainingjob plan's size model
    assert assumed.o_res_s == 30.0 and assumed.o_save_s == assumed.o_load_s > 0
    log = failure_log(path)
    assert [(f.role, f.rank, f.time_s) for f in log] == [("embedding-server", 0, 8.0), ("trainer", 1, 16.0),
                                                         ("sync-server", 0, 30.0)]


def test_bad_summaries_and_logs_name_the_option(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SimulateInputError, match=r"^--failure-log: .*bad.json: not JSON"):
        failure_log(bad)
    with pytest.raises(SimulateInputError, match=r"^--failure-log: .*cannot be read"):
        failure_log(tmp_path / "missing.json")
    bad.write_text(json.dumps([{"role": "trainer", "rank": 0}]))
    with pytest.raises(SimulateInputError, match=r"failures\[0\]\.time_s must be seconds"):
        failure_log(bad)
    bad.write_text(json.dumps({"failures": [{"role": "gpu", "rank": 0, "time_s": 1}]}))
    with pytest.raises(SimulateInputError, match=r"failures\[0\]\.role must be one of"):
        failure_log(bad)
    with pytest.raises(SimulateInputError, match=r"^--o-save: must be a non-negative"):
        Costs(o_save_s=-1.0, o_load_s=0.0, o_res_s=0.0)
    with pytest.raises(SimulateInputError, match=r"^--uncovered: must be in"):
        Costs(o_save_s=1.0, o_load_s=0.0, o_res_s=0.0, uncovered=2.0)


def test_the_auc_proxy_and_its_calibration() -> None:
    assert expected_auc_change(0.02) == pytest.approx(0.02 * AUC_PER_PLS)
    rows = [{"variant": "failure-free", "pls": 0.0, "auc_delta": 0.0, "failures": 0},
            {"variant": "partial", "pls": 0.04, "auc_delta": -0.002, "failures": 4},
            {"variant": "partial", "pls": 0.08, "auc_delta": -0.004, "failures": 4},
            {"variant": "full", "pls": 0.0, "auc_delta": 0.001, "failures": 4}]
    fit = calibrate(rows)
    assert fit is not None and fit.runs == 3
    assert fit.slope == pytest.approx(-0.05)
    assert fit.standard_error is not None and fit.standard_error > 0
    assert calibrate(rows[:1]) is None
