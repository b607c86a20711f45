"""`trainingjob simulate`: one-line errors naming the option (exit 2), and a small run's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from trainingjob_operator.cli import app

MANIFEST = {"apiVersion": "training.cpr.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "sim"},
            "spec": {"recovery": {"checkpoint": {"maxIntervalSeconds": 100000}}}}


@pytest.fixture()
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(MANIFEST))
    return path


@pytest.mark.parametrize(("args", "expected"), [
    (["--nodes", "2"], "--nodes: must be at least 3"),
    (["--nodes", "5000"], "--nodes: 5000 nodes give 2500 embedding-server replicas"),
    (["--mtbf", "14", "--mtbf-per-node", "1000"], "--mtbf: --mtbf and --mtbf-per-node exclude each other"),
    (["--mtbf", "-3"], "--mtbf: must be a positive number of hours"),
    (["--days", "0"], "--days: must be a positive number of days"),
    (["--seeds", "0"], "--seeds: must be at least 1"),
    (["--grid", "-1"], "--grid: must be at least 0"),
    (["--jobs", "0"], "--jobs: must be at least 1"),
    (["--modes", "full,half"], "--modes: unknown mode 'half'"),
    (["--fail-roles", "gpu"], "--fail-roles: unknown role 'gpu'"),
    (["--uncovered", "1.5"], "--uncovered: must be in [0, 1]"),
    (["--o-save", "-1"], "--o-save: must be a non-negative number of seconds"),
    (["--weibull-shape", "0"], "--weibull-shape: must be a positive number"),
    (["--failure-log", "missing.json"], "--failure-log: missing.json: cannot be read"),
    (["--failure-log", "x.json", "--mtbf", "3"], "--failure-log: replays a log: it excludes --mtbf"),
    (["--summary", "missing.json"], "--summary: missing.json: cannot be read"),
])
def test_bad_input_is_one_line_naming_the_option(manifest: Path, args: list[str], expected: str) -> None:
    result = CliRunner().invoke(app, ["simulate", str(manifest), *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {expected}"), lines[0]


def test_a_bad_manifest_is_the_usual_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**MANIFEST, "spec": {"replicas": {"trainer": {"replicas": 0}}}}))
    result = CliRunner().invoke(app, ["simulate", str(path)])
    assert result.exit_code == 2
    assert "spec.replicas.trainer.replicas" in result.stderr


def test_a_small_simulation_writes_table_json_and_plots(manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["simulate", str(manifest), "--nodes", "9", "--mtbf", "6", "--days", "3",
                                      "--seeds", "2", "--grid", "2", "--modes", "full,partial", "--o-save", "10",
                                      "--o-load", "30", "--o-res", "60", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "full" in result.stdout and "partial" in result.stdout and "Overhead %" in result.stdout
    data = json.loads((out / "simulate.json").read_text())
    assert data["scenario"]["replicas"] == {"trainer": 4, "embedding-server": 4, "sync-server": 1}
    assert [m["mode"] for m in data["modes"]] == ["full", "partial"]
    assert len(data["runs"]) == 2 * (1 + 2) * 2
    assert len(data["grid"]) == 4 and set(data["tuner_vs_grid"]) <= {"full", "partial"}
    assert data["scenario"]["failures"]["mtbf_node_h"] == pytest.approx(6 * 9)
    assert (out / "simulate_curves.png").stat().st_size > 10_000
    assert (out / "simulate_timeline.png").stat().st_size > 10_000
