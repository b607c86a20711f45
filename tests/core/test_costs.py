"""What a save costs training: the stall plus the slowdown its background write causes, measured from the
trainers' throughput traces against the write windows."""

from __future__ import annotations

import pytest

from trainingjob_operator.core.costs import SaveCost, save_costs, write_slowdown, write_windows
from trainingjob_operator.core.recovery import measurements


def trace(rate: float, slow_rate: float, windows: list[tuple[float, float]], seconds: float = 60.0,
          step: float = 0.5, start: float = 1000.0) -> list[tuple[float, int]]:
    """A trainer's progress reports: ``rate`` samples/s, ``slow_rate`` while a write runs."""
    points, samples, t = [(start, 0)], 0.0, start
    while t < start + seconds:
        mid = t + step / 2
        writing = any(a <= mid < b for a, b in windows)
        samples += (slow_rate if writing else rate) * step
        t += step
        points.append((t, int(samples)))
    return points


def test_the_slowdown_while_writes_run_is_measured_from_the_trainers_traces() -> None:
    windows = [(1000.0 + s, 1000.0 + s + 2.0) for s in range(5, 60, 10)]  # a 2 s write every 10 s
    traces = {0: trace(1000.0, 700.0, windows), 1: trace(400.0, 280.0, windows)}  # both 30% slower
    assert write_slowdown(traces, windows) == pytest.approx(0.3, abs=0.02)


def test_no_slowdown_is_zero_and_too_little_evidence_is_none() -> None:
    windows = [(1010.0, 1012.0), (1030.0, 1032.0)]
    assert write_slowdown({0: trace(1000.0, 1000.0, windows)}, windows) == pytest.approx(0.0, abs=0.01)
    assert write_slowdown({0: trace(1000.0, 500.0, [])}, []) is None  # no write observed
    assert write_slowdown({}, windows) is None


def test_restarts_and_gaps_in_a_trace_are_not_rates() -> None:
    windows = [(1000.0 + s, 1000.0 + s + 2.0) for s in range(5, 60, 10)]
    points = trace(1000.0, 500.0, windows)
    restarted = points[:40] + [(t + 30.0, s - 15_000) for t, s in points[40:]]  # a replacement: gap, fewer samples
    assert write_slowdown({0: restarted}, windows) == pytest.approx(0.5, abs=0.05)


def test_write_windows_come_from_the_checkpoint_log() -> None:
    log = [{"logged_at": 110.0, "write_s": 2.5}, {"logged_at": 90.0, "write_s": 1.0}, {"logged_at": 95.0}]
    assert write_windows(log) == [(89.0, 90.0), (107.5, 110.0)]


def test_a_save_costs_its_stall_plus_the_slowed_write() -> None:
    costs = save_costs({"stall_full": [0.1, 0.3, 0.2], "write_full": [2.0], "stall_partial": [0.05],
                        "write_partial": [0.5]}, slowdown=0.25)
    assert costs["full"] == SaveCost(0.2, 2.0, 0.25)
    assert costs["full"].seconds == pytest.approx(0.2 + 2.0 * 0.25)
    assert costs["partial"].seconds == pytest.approx(0.05 + 0.5 * 0.25)
    assert SaveCost(0.2, 2.0, None).seconds == 0.2  # the write counts once its slowdown is measured
    assert SaveCost(None, None, None).seconds is None
    assert costs["full"].to_wire() == {"stallSeconds": 0.2, "writeSeconds": 2.0, "writeSlowdown": 0.25,
                                       "seconds": 0.7}


def test_the_tuner_gets_the_training_time_a_save_loses() -> None:
    windows = [(1000.0 + s, 1000.0 + s + 2.0) for s in range(5, 60, 10)]
    log = [{"logged_at": b, "write_s": b - a, "kind": "full", "uncovered": 0.0} for a, b in windows]
    log += [{"logged_at": 2000.0, "write_s": 0.1, "kind": "mfu", "uncovered": 0.2},
            {"logged_at": 2001.0, "write_s": 0.1, "kind": "ssu", "uncovered": 0.4}]
    m = measurements({"stall_full": [0.1], "write_full": [2.0], "stall_partial": [0.02], "write_partial": [0.4]},
                     None, log, {0: trace(1000.0, 600.0, windows)})
    assert m.o_save_s == pytest.approx(0.1 + 2.0 * 0.4, abs=0.05)
    assert m.o_save_partial_s == pytest.approx(0.02 + 0.4 * 0.4, abs=0.02)
    assert m.save_duration_s == pytest.approx(2.1)
    assert m.uncovered == pytest.approx(0.3)
