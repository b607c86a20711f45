"""The simulator against tuning.py's closed forms on small jobs (PAPERS.md §1.4-1.7).

Each tolerance comes from the number of simulated failures: a failure's cost is random (when in the
interval it strikes), so the relative standard error of a failure term is about ``sqrt((1 + cv^2) / n)``.
The tests allow four standard errors plus the second-order terms the first-order closed forms leave out
(failures arrive in wall time, which is longer than failure-free time by the overhead itself).
"""

from __future__ import annotations

import math

import pytest

from tests.simulate.helpers import ALL_ROLES, HOUR, run, small_spec
from trainingjob_operator.simulate import Costs
from trainingjob_operator.tuning import (
    expected_overhead_full,
    expected_overhead_partial,
    expected_pls,
    young_interval,
)

COSTS = Costs(o_save_s=10.0, o_load_s=30.0, o_res_s=60.0)
RESTART = COSTS.o_load_s + COSTS.o_res_s


def test_full_recovery_at_youngs_interval_matches_the_closed_form() -> None:
    t_fail = 100 * HOUR
    interval = young_interval(COSTS.o_save_s, t_fail)
    r = run("full", t_fail_job_s=t_fail, days=2500, costs=COSTS, fixed_interval_s=interval)
    assert r.status == "Succeeded" and r.phase_final == "Succeeded"
    n = r.failures
    assert n > 450
    expected = expected_overhead_full(interval, COSTS.o_save_s, COSTS.o_load_s, COSTS.o_res_s, t_fail)
    assert r.expected_overhead == pytest.approx(expected)
    # Per failure: the restart (exact when failures do not overlap) and, on average, half an interval.
    assert (r.res_s + r.load_s) / n == pytest.approx(RESTART, rel=0.02)
    lost_per_failure = r.lost_s / r.full_recoveries
    se_lost = interval / math.sqrt(12 * n)
    assert abs(lost_per_failure - interval / 2) < 4 * se_lost
    # The whole overhead: the failure term's noise is sqrt((1 + cv^2) / n) of it.
    failure_term = (interval / 2 + RESTART) / t_fail
    cv2 = (interval**2 / 12) / (interval / 2 + RESTART) ** 2
    se = failure_term * math.sqrt((1 + cv2) / n)
    second_order = expected * failure_term  # failures arrive in wall time
    assert abs(r.overhead - expected) < 4 * se + second_order, (r.overhead, expected, se)


def test_youngs_interval_is_the_simulated_optimum_and_the_tuner_finds_it() -> None:
    t_fail = 30 * HOUR
    young = young_interval(COSTS.o_save_s, t_fail)
    days = 500  # ~400 failures; every interval sees the same failures (same seed)
    overhead = {scale: run("full", t_fail_job_s=t_fail, days=days, costs=COSTS, fixed_interval_s=young * scale).overhead
                for scale in (0.5, 1.0, 2.0)}
    assert overhead[1.0] < overhead[0.5] and overhead[1.0] < overhead[2.0], overhead
    # First order: 25 % more save + lost time at half or twice the optimum.
    save_lost = 2 * math.sqrt(COSTS.o_save_s / (2 * t_fail))
    assert overhead[0.5] - overhead[1.0] == pytest.approx(0.25 * save_lost, rel=0.35)
    # The tuner learns the MTBF from the failures (every role fails) and lands on Young's interval.
    tuned = run("full", t_fail_job_s=t_fail, days=days, costs=COSTS, roles=ALL_ROLES)
    assert tuned.failures > 300
    assert tuned.interval_final_s == pytest.approx(young, rel=0.12)
    assert tuned.overhead < overhead[0.5] and tuned.overhead < overhead[2.0]


def test_partial_recovery_pls_matches_t_over_2_n_t_fail() -> None:
    t_fail, interval, n_emb = 10 * HOUR, 3600.0, 4
    r = run("partial", t_fail_job_s=t_fail, days=300, costs=COSTS, fixed_interval_s=interval)
    n = r.failures
    assert n > 600 and r.failures_by_role == {"embedding-server": n}
    expected = expected_pls(interval, n_emb, t_fail)
    assert r.expected_pls == pytest.approx(expected)
    # Expectation over the failure count too: relative error sqrt((1 + 1/3) / n).
    assert abs(r.pls - expected) < 4 * expected * math.sqrt((4 / 3) / n), (r.pls, expected)
    # Given the failures that happened: each loses U(0, T) of its shard's 1/N of the samples.
    given_n = n * (interval / 2) / (n_emb * r.useful_s)
    assert abs(r.pls - given_n) < 4 * given_n * math.sqrt((1 / 3) / n) + 0.02 * given_n, (r.pls, given_n)


def test_partial_recovery_overhead_matches_the_closed_form() -> None:
    t_fail, interval = 10 * HOUR, 3600.0
    r = run("partial", t_fail_job_s=t_fail, days=300, costs=COSTS, fixed_interval_s=interval)
    expected = expected_overhead_partial(interval, COSTS.o_save_s, COSTS.o_load_s, COSTS.o_res_s, t_fail, t_fail)
    assert r.expected_overhead == pytest.approx(expected)
    assert r.lost_s == 0.0 and r.full_recoveries == 0
    failure_term = RESTART / t_fail
    assert abs(r.overhead - expected) < 4 * failure_term / math.sqrt(r.failures) + expected * failure_term
    # Saves: one per interval, each stalling the job o_save (every shard together).
    assert r.save_s / r.useful_s == pytest.approx(COSTS.o_save_s / interval, rel=0.03)


def test_mfu_saves_follow_the_save_schedule() -> None:
    """MFU: one full save then full_every - 1 partial ones; a failure loses the uncovered share since the
    full save too, so PLS grows by the schedule's loss factor 1 + u (k - 1) (tuning.SaveSchedule)."""
    costs = Costs(o_save_s=10.0, o_load_s=30.0, o_res_s=60.0, o_save_partial_s=2.5, uncovered=0.2)
    t_fail, interval, n_emb = 10 * HOUR, 3600.0, 4
    r = run("partial+MFU", t_fail_job_s=t_fail, days=300, costs=costs, fixed_interval_s=interval)
    assert r.schedule_loss_factor == pytest.approx(1 + 0.2 * 3)
    assert r.schedule_o_save_s == pytest.approx((10.0 + 3 * 2.5) / 4)
    assert r.mean_save_cost_s == pytest.approx(r.schedule_o_save_s, rel=0.03)
    # Three partial saves per full one, less the cycles a failure cut short (a new process saves full first).
    assert 2.5 * r.shard_saves["full"] < r.shard_saves["partial"] <= 3 * r.shard_saves["full"]
    expected = expected_pls(interval, n_emb, t_fail, r.schedule_loss_factor)
    assert r.expected_pls == pytest.approx(expected)
    assert abs(r.pls - expected) < 4 * expected * math.sqrt(2.0 / r.failures), (r.pls, expected)


def test_the_tuner_meets_the_pls_target_under_partial_recovery() -> None:
    spec = small_spec(pls_target=0.01)
    r = run("partial", t_fail_job_s=10 * HOUR, days=300, costs=COSTS, spec=spec)
    bound = 2 * 0.01 * 4 * 10 * HOUR  # 2 * PLS_target * N_emb * T_fail_emb
    assert r.interval_final_s == pytest.approx(bound, rel=0.12)
    assert abs(r.pls - 0.01) < 4 * 0.01 * math.sqrt((4 / 3) / r.failures)
