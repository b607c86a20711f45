"""Status rendering, the persisted memory, and merge patches."""

from __future__ import annotations

from typing import Any

import pytest

from trainingjob_operator.api.spec import Role, TrainingJobSpec
from trainingjob_operator.api.status import Phase, ProgressStatus
from trainingjob_operator.k8s.reporting import (
    OWNED_KEYS,
    RecoveryFacts,
    merge_patch,
    phase_event,
    render_status,
)
from trainingjob_operator.memory_codec import memory_from_status, memory_to_dict
from trainingjob_operator.reconcile import FailureEvent, JobMemory, ReplicaId, reconcile, set_condition


def busy_memory() -> JobMemory:
    conditions = set_condition((), "Recovering", True, "ExitCode1", "replacing trainer-1", 100.0)
    return JobMemory(
        phase=Phase.RECOVERING, generation=2, created_at={"trainer-0": 1.5, "trainer-1": 99.25},
        replacing=frozenset({"trainer-1"}), succeeded=frozenset({"trainer-0"}),
        restart_times={"trainer-1": (90.0, 99.0)}, restarts={"trainer-1": 2}, failures=2,
        last_failure=FailureEvent(ReplicaId(Role.TRAINER, 1), "ExitCode1", 99.0, 1, "uid-7"),
        conditions=conditions, start_time=1.0, completion_time=None,
    )


def test_memory_survives_the_round_trip_through_status() -> None:
    memory = busy_memory()
    status = {"coordinator": memory_to_dict(memory), "conditions": [c.to_wire() for c in memory.conditions]}
    assert memory_from_status(status) == memory


@pytest.mark.parametrize("status", [
    pytest.param(None, id="no-status"),
    pytest.param({"phase": "Running"}, id="no-coordinator"),
    pytest.param({"coordinator": {"phase": "Exploded"}}, id="unknown-phase"),
    pytest.param({"coordinator": "garbage"}, id="not-a-mapping"),
])
def test_unreadable_memory_means_start_over(status: dict[str, Any] | None) -> None:
    assert memory_from_status(status) is None


def test_rendered_status_has_every_owned_field_and_no_nulls() -> None:
    spec = TrainingJobSpec()
    decision = reconcile(spec, {}, JobMemory(), now=10.0)
    status = render_status(decision, progress=ProgressStatus(samples=5, target_samples=10),
                           recovery=RecoveryFacts(mode="partial", interval_s=60.0), observed_generation=1)
    assert set(status) <= OWNED_KEYS
    assert status["phase"] == "Pending"
    assert status["replicas"]["trainer"] == {"desired": 2, "ready": 0, "restarts": 0}
    assert status["recovery"] == {"mode": "partial", "generation": 0, "failures": 0, "intervalSeconds": 60.0}
    assert status["progress"] == {"samples": 5, "targetSamples": 10}
    assert status["coordinator"]["createdAt"].keys() == {"embedding-server-0", "embedding-server-1",
                                                         "sync-server-0", "trainer-0", "trainer-1"}

    def has_null(node: Any) -> bool:
        if isinstance(node, dict):
            return any(v is None or has_null(v) for v in node.values())
        return isinstance(node, list) and any(has_null(v) for v in node)

    assert not has_null(status)
    assert "standbys" not in status  # no recovery.standby: no such section


def test_rendered_status_counts_warm_standbys_per_role() -> None:
    decision = reconcile(TrainingJobSpec(), {}, JobMemory(), now=10.0)
    status = render_status(decision, progress=ProgressStatus(), recovery=RecoveryFacts(mode="partial"),
                           observed_generation=1, standbys={"trainer": (2, 1, 1), "embedding-server": (0, 0, 0)})
    assert status["standbys"] == {"trainer": {"desired": 2, "ready": 1, "stuck": 1},
                                  "embedding-server": {"desired": 0, "ready": 0, "stuck": 0}}
    assert "standbys" in OWNED_KEYS  # so a merge patch removes it once no role has standbys


@pytest.mark.parametrize(("old", "new", "owned", "patch"), [
    pytest.param({"a": 1}, {"a": 1}, None, {}, id="equal"),
    pytest.param({"a": 1}, {"a": 2}, None, {"a": 2}, id="changed"),
    pytest.param({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}}, None, {"a": {"c": 3}}, id="nested"),
    pytest.param({"a": {"b": 1}}, {"a": {}}, None, {"a": {"b": None}}, id="nested-removed"),
    pytest.param({"a": [1, 2]}, {"a": [1]}, None, {"a": [1]}, id="lists-replaced"),
    pytest.param({"mine": 1, "theirs": 2}, {}, frozenset({"mine"}), {"mine": None}, id="others-keys-kept"),
])
def test_merge_patch(old: dict[str, Any], new: dict[str, Any], owned: frozenset[str] | None,
                     patch: dict[str, Any]) -> None:
    assert merge_patch(old, new, owned=owned) == patch


def test_phase_events_only_on_transitions() -> None:
    decision = reconcile(TrainingJobSpec(), {}, JobMemory(), now=10.0)
    assert phase_event(Phase.PENDING, Phase.PENDING, decision) is None
    assert phase_event(Phase.RECOVERING, Phase.RUNNING, decision) == (
        "Normal", "Recovered", "all 5 replicas running again (generation 0)")


def test_progress_keeps_the_last_curve_auc_until_a_final_evaluation() -> None:
    from trainingjob_operator.coordination import Progress
    from trainingjob_operator.k8s.reporting import summarize_progress

    progress = {0: Progress(0, 600_000, 586, 0.45, 1000.0, 0.0), 1: Progress(1, 490_000, 478, 0.47, 900.0, 0.0)}
    failed = summarize_progress(progress, {}, 2_000_000, curve_auc=0.7712)
    assert (failed.samples, failed.auc, failed.samples_per_second) == (1_090_000, 0.7712, 1900.0)
    finished = summarize_progress(progress, {0: {"auc": 0.79}, 1: {"auc": 0.78}}, 2_000_000, curve_auc=0.7712)
    assert finished.auc == pytest.approx(0.785)
