"""The run-state file and the decisions made from it (keeper, --resume), without processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainingjob_operator.local.runstate import (
    KeeperAction,
    ProcessRef,
    RunState,
    StateError,
    keeper_action,
    manifest_digest,
    read_state,
    resume_problem,
    write_state,
)


def state(**changes: object) -> RunState:
    base = RunState(run_id="r1", manifest_digest="d1", started=100.0, orphan_grace_s=60.0,
                    redis_url="redis://127.0.0.1:6400/0", supervisor=ProcessRef(10, 99.5),
                    keeper=ProcessRef(11, 99.6), redis=ProcessRef(12, 99.7),
                    memory={"coordinator": {"phase": "Running"}}, processes={"trainer-0": ProcessRef(13, 99.8)},
                    history={"trainer-0": [{"pid": 13, "started_at": 99.8}]},
                    injected=[{"at_s": 5.0, "time_s": 4.9, "role": "trainer", "rank": 0, "signal": "KILL"}])
    for key, value in changes.items():
        setattr(base, key, value)
    return base


def test_the_state_file_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "run-state.json"
    write_state(path, state())
    assert read_state(path) == state()
    assert not list(tmp_path.glob("*.tmp"))  # written through a staging file, renamed into place


@pytest.mark.parametrize("content, message", [
    (None, "no run to resume"),
    ("{not json", "unreadable"),
    ('{"version": 99}', "version 99"),
    ('{"version": 1, "run_id": "x"}', "unreadable"),
])
def test_an_unusable_state_file_is_one_clear_error(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "run-state.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(StateError, match=message):
        read_state(path)


@pytest.mark.parametrize("alive, since, now, expected", [
    (True, None, 1000.0, (KeeperAction.WATCH, None)),
    (True, 900.0, 1000.0, (KeeperAction.WATCH, None)),  # a resumed supervisor: the grace period starts over
    (False, None, 1000.0, (KeeperAction.WATCH, 1000.0)),  # just orphaned
    (False, 1000.0, 1059.9, (KeeperAction.WATCH, 1000.0)),
    (False, 1000.0, 1060.0, (KeeperAction.REAP, 1000.0)),  # nobody resumed within orphan_grace_s
])
def test_the_keeper_waits_out_the_grace_period_then_reaps(alive: bool, since: float | None, now: float,
                                                          expected: tuple[KeeperAction, float | None]) -> None:
    assert keeper_action(state(), "r1", alive, since, now) == expected


def test_the_keeper_exits_after_a_deliberate_end_and_reaps_a_run_started_over() -> None:
    assert keeper_action(state(ended="Succeeded"), "r1", False, 0.0, 1e9)[0] is KeeperAction.EXIT
    assert keeper_action(state(ended="Interrupted"), "r1", True, None, 0.0)[0] is KeeperAction.EXIT
    # The job was started again without --resume: the new run's state names another run; nobody resumes this one.
    assert keeper_action(state(run_id="r2"), "r1", True, None, 0.0)[0] is KeeperAction.REAP


def test_resume_refuses_an_ended_run_a_changed_manifest_and_a_live_supervisor() -> None:
    assert resume_problem(state(), "d1", supervisor_alive=False) is None
    assert "already ended (Failed)" in (resume_problem(state(ended="Failed"), "d1", False) or "")
    assert "manifest changed" in (resume_problem(state(), "d2", False) or "")
    assert "pid 10" in (resume_problem(state(), "d1", True) or "")


def test_the_manifest_digest_ignores_key_order_only() -> None:
    assert manifest_digest({"a": 1, "b": {"c": 2}}) == manifest_digest({"b": {"c": 2}, "a": 1})
    assert manifest_digest({"a": 1}) != manifest_digest({"a": 2})
