"""The summary stays true when a job fails: it keeps what was trained and the last AUC measured (issue #10)."""

from __future__ import annotations

from trainingjob_operator.api import parse_manifest
from trainingjob_operator.local.summary import build_summary

JOB = parse_manifest({"apiVersion": "training.cpr.dev/v1alpha1", "kind": "TrainingJob",
                      "metadata": {"name": "failed"}, "spec": {}})


def summary(**kwargs: object) -> dict:
    base: dict = {"job": JOB, "status": "Failed", "started": 0.0, "ended": 100.0, "results": {}, "history": {},
                  "restarts": {}, "failures": [], "conditions": [], "lost_samples": 0.0}
    return build_summary(**{**base, **kwargs})


def test_a_failed_job_keeps_its_progress_and_its_last_curve_auc() -> None:
    # A job failed by its restart budget wrote "0 samples, AUC None" although it had trained 1.09M samples.
    got = summary(progress={0: 600_000, 1: 490_000},
                  recovery={"curve": [{"samples": 800_000, "auc": 0.77}, {"samples": 400_000, "auc": 0.74}]})
    assert got["samples"] == 1_090_000
    assert (got["auc"], got["auc_from"]) == (0.77, "learning curve at 800000 samples")


def test_final_results_win_over_progress_and_the_curve() -> None:
    results = {0: {"samples": 1_000_000, "trained_samples": 1_000_000, "auc": 0.79, "wall_seconds": 50.0}}
    got = summary(status="Succeeded", results=results, progress={0: 999_000, 1: 1_000_000},
                  recovery={"curve": [{"samples": 1_900_000, "auc": 0.78}]})
    assert got["samples"] == 2_000_000  # trainer 0's result, trainer 1's progress (no result written)
    assert (got["auc"], got["auc_from"]) == (0.79, "final evaluation")
    assert got["samples_per_second"] == 20_000.0


def test_nothing_trained_says_so() -> None:
    got = summary()
    assert (got["samples"], got["auc"], got["auc_from"], got["pls"]) == (0, None, None, None)
