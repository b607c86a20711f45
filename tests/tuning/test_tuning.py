"""Table tests of the interval-tuning math (PAPERS.md §1.4-1.6, §4.2-4.3, §5.5) and its decisions."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest

from trainingjob_operator.api.spec import RecoveryMode, TrainingJobSpec
from trainingjob_operator.tuning import (
    FailureObservation,
    Measurements,
    TuningInputs,
    benefit_test,
    break_even_pls,
    checkfreq_iterations,
    clamp_interval,
    daly_interval,
    estimate_mode,
    estimate_mtbf,
    evaluate_interval,
    expected_overhead_full,
    expected_overhead_partial,
    expected_pls,
    failure_model,
    plan,
    pls_bounded_interval,
    save_floor,
    young_interval,
)

# PAPERS.md §1.6 worked example: o_save = o_load = 300 s, o_res = 600 s, T_fail = 14 h, N_emb = 16.
O_SAVE, O_LOAD, O_RES, T_FAIL, N_EMB = 300.0, 300.0, 600.0, 50_400.0, 16
PAPER_COSTS = Measurements(o_save_s=O_SAVE, o_load_s=O_LOAD, o_res_s=O_RES)


def paper_inputs(**changes: object) -> TuningInputs:
    """The §1.6 example as TuningInputs: only embedding servers, so T_fail_job == T_fail_emb == 14 h."""
    base = TuningInputs(
        mode=RecoveryMode.AUTO,
        n_emb=N_EMB,
        n_trainers=0,
        n_sync=0,
        mtbf_prior_hours_per_replica=N_EMB * T_FAIL / 3600.0,
        pls_target=0.02,
        min_interval_s=1.0,
        max_interval_s=100_000.0,
        measurements=PAPER_COSTS,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def job_inputs(**changes: object) -> TuningInputs:
    """A job shaped like the spec's defaults (2 embedding servers, 2 trainers, 1 sync server)."""
    base = TuningInputs(
        mode=RecoveryMode.AUTO,
        n_emb=2,
        n_trainers=2,
        n_sync=1,
        mtbf_prior_hours_per_replica=24.0,
        pls_target=0.02,
        min_interval_s=5.0,
        max_interval_s=3600.0,
        measurements=Measurements(o_save_s=1.0, o_load_s=1.0, o_res_s=30.0),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


# -- §5.5 unit-test vectors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("o_save_s", "t_fail_s", "expected_s"),
    [
        pytest.param(300.0, 50_400.0, 5499.09, id="cpr-14h"),
        pytest.param(300.0, 30 * 3600.0, 8049.84, id="cpr-30h-134min"),
        pytest.param(0.0, 50_400.0, 0.0, id="free-saves"),
        pytest.param(50.0, 100.0, 100.0, id="sqrt-2-50-100"),
    ],
)
def test_young_interval(o_save_s: float, t_fail_s: float, expected_s: float) -> None:
    assert young_interval(o_save_s, t_fail_s) == pytest.approx(expected_s, abs=0.01)


def test_full_overhead_at_young_matches_paper() -> None:
    interval = young_interval(O_SAVE, T_FAIL)
    assert expected_overhead_full(interval, O_SAVE, O_LOAD, O_RES, T_FAIL) == pytest.approx(0.12697, abs=5e-6)
    # Closed form of §1.4: sqrt(2*o_save/T_fail) + (o_load + o_res)/T_fail.
    closed = math.sqrt(2 * O_SAVE / T_FAIL) + (O_LOAD + O_RES) / T_FAIL
    assert expected_overhead_full(interval, O_SAVE, O_LOAD, O_RES, T_FAIL) == pytest.approx(closed)


def test_partial_vector_matches_paper() -> None:
    interval = pls_bounded_interval(0.02, N_EMB, T_FAIL)
    assert interval == pytest.approx(32_256.0)
    overhead = expected_overhead_partial(interval, O_SAVE, O_LOAD, O_RES, T_FAIL, T_FAIL)
    assert overhead == pytest.approx(0.02716, abs=5e-6)
    assert expected_pls(interval, N_EMB, T_FAIL) == pytest.approx(0.02)


def test_break_even_pls_matches_paper() -> None:
    assert break_even_pls(O_SAVE, N_EMB, T_FAIL) == pytest.approx(0.0017048, abs=5e-8)


@pytest.mark.parametrize(
    ("mtbf_min", "expected_min"),
    [
        pytest.param(1440.0, 116.69, id="24h"),
        pytest.param(360.0, 56.71, id="6h"),
        pytest.param(15.0, 9.14, id="15min"),
    ],
)
def test_daly_vectors(mtbf_min: float, expected_min: float) -> None:
    # The formula is unit-free, so minutes in, minutes out, as in Daly's examples.
    assert daly_interval(5.0, mtbf_min) == pytest.approx(expected_min, abs=0.01)


def test_daly_returns_mtbf_when_save_is_longer_than_two_mtbf() -> None:
    assert daly_interval(30.0, 10.0) == 10.0


def test_checkfreq_vector() -> None:
    k = checkfreq_iterations(10.0, 1.0, 0.5)
    assert k == 18
    assert 1.0 / (k * 0.5) == pytest.approx(0.111, abs=5e-4)  # above CheckFreq's 5 % budget


@pytest.mark.parametrize(
    ("t_f", "stall", "t_i", "k"),
    [
        pytest.param(1.0, 1.0, 0.5, 1, id="persist-free"),
        pytest.param(0.3, 0.1, 0.1, 2, id="round-off-safe"),
        pytest.param(2.05, 0.0, 1.0, 3, id="partial-iteration-rounds-up"),
    ],
)
def test_checkfreq_rounding(t_f: float, stall: float, t_i: float, k: int) -> None:
    assert checkfreq_iterations(t_f, stall, t_i) == k


# -- overhead model properties ---------------------------------------------------------------------------


@pytest.mark.parametrize("t_fail_s", [3_600.0, 50_400.0, 500_000.0])
@pytest.mark.parametrize("o_save_s", [1.0, 30.0, 300.0])
def test_young_minimises_full_overhead(o_save_s: float, t_fail_s: float) -> None:
    best = young_interval(o_save_s, t_fail_s)
    at_best = expected_overhead_full(best, o_save_s, 0.0, 0.0, t_fail_s)
    for factor in (0.5, 0.9, 1.1, 2.0):
        assert expected_overhead_full(best * factor, o_save_s, 0.0, 0.0, t_fail_s) > at_best
    # At the optimum the save term equals the lost-work term.
    assert o_save_s / best == pytest.approx(best / 2 / t_fail_s)


def test_partial_overhead_falls_as_interval_grows() -> None:
    overheads = [expected_overhead_partial(t, O_SAVE, O_LOAD, O_RES, T_FAIL, T_FAIL) for t in (600, 6000, 60000)]
    assert overheads == sorted(overheads, reverse=True)


def test_partial_charges_load_only_for_embedding_failures() -> None:
    # T_fail_job 1 h, T_fail_emb 10 h: o_load at the embedding rate, o_res at the job rate.
    assert expected_overhead_partial(1000.0, 10.0, 360.0, 36.0, 3600.0, 36_000.0) == pytest.approx(
        0.01 + 0.01 + 0.01
    )


@pytest.mark.parametrize("n_emb", [1, 4, 64])
def test_pls_bound_inverts_expected_pls(n_emb: int) -> None:
    interval = pls_bounded_interval(0.01, n_emb, 7200.0)
    assert expected_pls(interval, n_emb, 7200.0) == pytest.approx(0.01)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda: young_interval(-1.0, 10.0), id="negative-save"),
        pytest.param(lambda: young_interval(1.0, 0.0), id="zero-mtbf"),
        pytest.param(lambda: pls_bounded_interval(0.0, 4, 10.0), id="zero-pls"),
        pytest.param(lambda: expected_pls(1.0, 0, 10.0), id="no-shards"),
        pytest.param(lambda: expected_overhead_full(0.0, 1.0, 1.0, 1.0, 10.0), id="zero-interval"),
        pytest.param(lambda: expected_overhead_partial(1.0, 1.0, 1.0, 1.0, 10.0, math.nan), id="nan"),
        pytest.param(lambda: checkfreq_iterations(1.0, 1.0, 0.0), id="zero-iteration"),
    ],
)
def test_closed_forms_reject_bad_arguments(call: object) -> None:
    with pytest.raises(ValueError):
        call()  # type: ignore[operator]


# -- MTBF posterior --------------------------------------------------------------------------------------


def fail(role: str, rank: int = 0, time_s: float = 0.0) -> FailureObservation:
    return FailureObservation(role=role, rank=rank, time_s=time_s)


@pytest.mark.parametrize(
    ("prior_h", "weight", "failures", "observed_s", "replicas", "expected_s"),
    [
        pytest.param(24.0, 1.0, 0, 0.0, 4, 86_400.0, id="prior-only"),
        pytest.param(24.0, 1.0, 0, 36_000.0, 4, 86_400.0 + 144_000.0, id="no-failures-lengthens"),
        pytest.param(24.0, 3.0, 1, 36_000.0, 4, (2 * 86_400.0 + 144_000.0) / 3, id="one-failure-replaces-one-pseudo"),
        pytest.param(24.0, 2.0, 3, 36_000.0, 4, 144_000.0 / 3, id="evidence-wins-after-a0-failures"),
        pytest.param(24.0, 0.0, 2, 36_000.0, 4, 72_000.0, id="no-prior-is-mle"),
    ],
)
def test_estimate_mtbf(
    prior_h: float, weight: float, failures: int, observed_s: float, replicas: int, expected_s: float
) -> None:
    assert estimate_mtbf(prior_h, weight, failures, observed_s, replicas) == pytest.approx(expected_s)


def test_estimate_mtbf_counts_observation_lists() -> None:
    observations = [fail("trainer", r) for r in range(3)]
    assert estimate_mtbf(24.0, 2.0, observations, 36_000.0, 4) == estimate_mtbf(24.0, 2.0, 3, 36_000.0, 4)


def test_estimate_mtbf_tends_to_mle_with_exposure() -> None:
    # 1000 replica-days and 100 failures: 10 days per failure, whatever the 1-day prior says.
    mtbf = estimate_mtbf(24.0, 1.0, 100, 100 * 86_400.0, 10)
    assert mtbf == pytest.approx(10 * 86_400.0, rel=0.01)


def test_estimate_mtbf_follows_a_failure_storm_within_a_few_failures() -> None:
    # Issue #9: 2 embedding servers SIGKILLed every ~11 s under a 24 h prior. A Gamma posterior that
    # keeps the prior's 24 replica-hours said ~18 minutes after 80 failures; the estimate must say ~11 s.
    for failures in (2, 5, 80):
        observed_s = 11.5 * failures / 2  # 2 replicas, each failing every 11.5 s
        assert estimate_mtbf(24.0, 1.0, failures, observed_s, 2) == pytest.approx(11.5)


def test_estimate_mtbf_undefined_without_prior_or_failures() -> None:
    with pytest.raises(ValueError, match="undefined"):
        estimate_mtbf(24.0, 0.0, 0, 3600.0, 4)


def test_failure_model_separates_roles() -> None:
    quiet = failure_model(n_emb=2, n_trainers=2, n_sync=1, prior_hours=24.0, prior_weight_failures=1.0,
                          failures=(), observed_seconds=0.0)
    assert quiet.t_fail_emb_s == pytest.approx(43_200.0)
    assert quiet.t_fail_job_s == pytest.approx(86_400.0 / 5)
    trainers_failing = failure_model(n_emb=2, n_trainers=2, n_sync=1, prior_hours=24.0, prior_weight_failures=1.0,
                                     failures=[fail("trainer", 0), fail("trainer", 1)], observed_seconds=3600.0)
    emb_failing = failure_model(n_emb=2, n_trainers=2, n_sync=1, prior_hours=24.0, prior_weight_failures=1.0,
                                failures=[fail("embedding-server", 0), fail("embedding-server", 1)],
                                observed_seconds=3600.0)
    assert trainers_failing.t_fail_job_s < quiet.t_fail_job_s
    # Trainer failures lose no samples under partial recovery, so they must not touch T_fail_emb.
    assert trainers_failing.t_fail_emb_s > quiet.t_fail_emb_s
    assert emb_failing.t_fail_emb_s < quiet.t_fail_emb_s
    assert trainers_failing.t_fail_job_s == pytest.approx(emb_failing.t_fail_job_s, rel=0.5)


def test_failure_model_ignores_non_replica_roles() -> None:
    model = failure_model(n_emb=2, n_trainers=2, n_sync=1, prior_hours=24.0, prior_weight_failures=1.0,
                          failures=[fail("coordinator")], observed_seconds=0.0)
    assert model.ignored_failures == 1
    assert model.t_fail_emb_s == pytest.approx(43_200.0)


def test_pls_bound_does_not_depend_on_shard_count_with_per_replica_mtbf() -> None:
    # PAPERS.md §1.5 caution: T_fail_emb = M/N_emb, so 2*PLS*N_emb*T_fail_emb = 2*PLS*M.
    for n_emb in (1, 2, 16, 128):
        interval = plan(job_inputs(mode="partial", n_emb=n_emb, max_interval_s=1e6)).interval_s
        assert interval == pytest.approx(2 * 0.02 * 24 * 3600.0)


# -- plan: the §1.6 example end to end -------------------------------------------------------------------


def test_plan_auto_reproduces_paper_example() -> None:
    decision = plan(paper_inputs())
    assert decision.mode_chosen == "partial"
    assert decision.interval_s == pytest.approx(32_256.0)
    assert decision.expected_overhead_fraction == pytest.approx(0.02716, abs=5e-6)
    assert decision.expected_pls == pytest.approx(0.02)
    assert decision.t_fail_job_s == pytest.approx(T_FAIL)
    assert decision.t_fail_emb_s == pytest.approx(T_FAIL)
    assert decision.full.interval_s == pytest.approx(5499.09, abs=0.01)
    assert decision.full.overhead_fraction == pytest.approx(0.12697, abs=5e-6)
    assert decision.floor_s == pytest.approx(2 * O_SAVE)
    assert "partial is cheaper" in decision.reason


@pytest.mark.parametrize(
    ("mode", "chosen", "interval_s"),
    [
        pytest.param("full", "full", 5499.09, id="full"),
        pytest.param("partial", "partial", 32_256.0, id="partial"),
        pytest.param("auto", "partial", 32_256.0, id="auto"),
    ],
)
def test_plan_applies_mode(mode: str, chosen: str, interval_s: float) -> None:
    decision = plan(paper_inputs(mode=mode))
    assert decision.mode_chosen == chosen
    assert decision.interval_s == pytest.approx(interval_s, abs=0.01)
    assert decision.reason.startswith(f"mode {mode} (spec)" if mode != "auto" else "auto: partial")


@pytest.mark.parametrize(
    ("pls_target", "chosen"),
    [
        pytest.param(0.0016, "full", id="below-break-even"),
        pytest.param(0.0017, "full", id="just-below"),
        pytest.param(0.0018, "partial", id="just-above"),
        pytest.param(0.02, "partial", id="paper-target"),
    ],
)
def test_auto_switches_at_break_even(pls_target: float, chosen: str) -> None:
    assert plan(paper_inputs(pls_target=pls_target)).mode_chosen == chosen


def test_auto_picks_full_when_pls_target_is_impossibly_tight() -> None:
    decision = plan(job_inputs(pls_target=1e-6))
    assert decision.mode_chosen == "full"
    assert decision.expected_pls == 0.0
    assert "cannot meet the PLS target" in decision.reason


@pytest.mark.parametrize(
    ("n_emb", "chosen"),
    [pytest.param(1, "full", id="one-shard"), pytest.param(16, "partial", id="sixteen-shards")],
)
def test_benefit_test_picks_full_for_tiny_shard_count_at_fixed_emb_mtbf(n_emb: int, chosen: str) -> None:
    # §1.6 view: T_fail_emb fixed at 14 h for the whole job, PLS 0.005. One shard gives a 504 s
    # PLS-bounded interval, whose save cost outweighs full recovery at Young's 5499 s; sixteen
    # shards stretch it to 8064 s.
    common = dict(o_save_s=O_SAVE, o_load_s=O_LOAD, o_res_s=O_RES, t_fail_job_s=T_FAIL, t_fail_emb_s=T_FAIL,
                  n_emb=n_emb, pls_target=0.005)
    full = estimate_mode("full", young_interval(O_SAVE, T_FAIL), **common)  # type: ignore[arg-type]
    partial = estimate_mode("partial", pls_bounded_interval(0.005, n_emb, T_FAIL), **common)  # type: ignore[arg-type]
    mode, _ = benefit_test(full, partial)
    expected = "full" if break_even_pls(O_SAVE, n_emb, T_FAIL) > 0.005 else "partial"
    assert mode == chosen == expected


def test_benefit_test_tie_goes_to_full() -> None:
    full = estimate_mode("full", 100.0, o_save_s=0.0, o_load_s=0.0, o_res_s=0.0, t_fail_job_s=1e12,
                         t_fail_emb_s=1e12, n_emb=1, pls_target=0.5)
    partial = dataclasses.replace(full, mode="partial")
    assert benefit_test(full, partial)[0] == "full"


# -- plan: properties ------------------------------------------------------------------------------------

MTBF_GRID = (0.5, 2.0, 8.0, 24.0, 96.0)


@pytest.mark.parametrize("mode", ["full", "partial"])
def test_interval_grows_with_mtbf(mode: str) -> None:
    intervals = [
        plan(job_inputs(mode=mode, mtbf_prior_hours_per_replica=h, min_interval_s=1e-3, max_interval_s=1e9)).interval_s
        for h in MTBF_GRID
    ]
    assert all(a < b for a, b in itertools.pairwise(intervals))


@pytest.mark.parametrize("mode", ["full", "partial"])
def test_interval_never_shrinks_with_mtbf_when_clamped(mode: str) -> None:
    intervals = [plan(job_inputs(mode=mode, mtbf_prior_hours_per_replica=h)).interval_s for h in MTBF_GRID]
    assert intervals == sorted(intervals)
    assert all(5.0 <= t <= 3600.0 for t in intervals)


@pytest.mark.parametrize("pls_target", [1e-4, 1e-3, 0.01, 0.05, 0.2])
@pytest.mark.parametrize("n_emb", [1, 2, 8, 32])
@pytest.mark.parametrize("mtbf_h", [1.0, 24.0, 240.0])
@pytest.mark.parametrize("o_save_s", [None, 0.5, 20.0])
def test_partial_chosen_by_auto_meets_pls_target(
    pls_target: float, n_emb: int, mtbf_h: float, o_save_s: float | None
) -> None:
    costs = Measurements(o_save_s=o_save_s, o_load_s=5.0, o_res_s=30.0)
    decision = plan(job_inputs(pls_target=pls_target, n_emb=n_emb, mtbf_prior_hours_per_replica=mtbf_h,
                               measurements=costs))
    assert 5.0 <= decision.interval_s <= 3600.0 or decision.interval_s == decision.floor_s
    if decision.mode_chosen == "partial":
        assert decision.expected_pls <= pls_target * (1 + 1e-9)
        assert decision.expected_pls == pytest.approx(expected_pls(decision.interval_s, n_emb, decision.t_fail_emb_s))
    else:
        assert decision.expected_pls == 0.0


def test_observed_embedding_failures_shorten_partial_interval() -> None:
    quiet = plan(job_inputs(mode="partial", observed_seconds=3600.0))
    stormy = plan(job_inputs(mode="partial", observed_seconds=3600.0,
                             failures=[fail("embedding-server", i % 2, 100.0 * i) for i in range(6)]))
    trainers = plan(job_inputs(mode="partial", observed_seconds=3600.0,
                               failures=[fail("trainer", i % 2, 100.0 * i) for i in range(6)]))
    assert stormy.interval_s < quiet.interval_s
    assert trainers.interval_s == pytest.approx(quiet.interval_s)
    assert stormy.expected_pls <= 0.02 * (1 + 1e-9)


def test_observed_trainer_failures_shorten_full_interval() -> None:
    quiet = plan(job_inputs(mode="full", observed_seconds=3600.0))
    stormy = plan(job_inputs(mode="full", observed_seconds=3600.0, failures=[fail("trainer")] * 6))
    assert stormy.interval_s < quiet.interval_s


# -- plan: clamping and the save floor --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "lo", "hi", "floor", "expected", "moved"),
    [
        pytest.param(50.0, 5.0, 100.0, 0.0, 50.0, "", id="inside"),
        pytest.param(1.0, 5.0, 100.0, 0.0, 5.0, "minIntervalSeconds", id="min"),
        pytest.param(500.0, 5.0, 100.0, 0.0, 100.0, "maxIntervalSeconds", id="max"),
        pytest.param(6.0, 5.0, 100.0, 20.0, 20.0, "save floor", id="floor"),
        pytest.param(500.0, 5.0, 100.0, 200.0, 200.0, "save floor", id="floor-beats-max"),
    ],
)
def test_clamp_interval(raw: float, lo: float, hi: float, floor: float, expected: float, moved: str) -> None:
    value, notes = clamp_interval(raw, lo, hi, floor)
    assert value == expected
    assert moved in " ".join(notes)
    assert bool(notes) == bool(moved)


def test_plan_clamps_to_max_and_reports_it() -> None:
    decision = plan(paper_inputs(max_interval_s=3600.0))
    assert decision.interval_s == 3600.0
    assert "capped at maxIntervalSeconds" in decision.reason
    assert decision.expected_pls < 0.02


def test_plan_clamps_to_min() -> None:
    decision = plan(job_inputs(mode="full", measurements=Measurements(o_save_s=0.001), min_interval_s=30.0))
    assert decision.interval_s == 30.0
    assert "raised to minIntervalSeconds" in decision.reason


def test_plan_never_goes_below_save_floor() -> None:
    # Young would give sqrt(2*100*500) = 316 s, but saves take 100 s: the floor is 2 * 100 s.
    decision = plan(job_inputs(mode="full", mtbf_prior_hours_per_replica=500 * 5 / 3600,
                               measurements=Measurements(o_save_s=100.0), max_interval_s=150.0))
    assert decision.interval_s == save_floor(100.0) == 200.0
    assert "save floor" in decision.reason


@pytest.mark.parametrize("factor", [1.0, 2.0, 5.0])
def test_save_floor_factor(factor: float) -> None:
    decision = plan(job_inputs(mode="full", measurements=Measurements(o_save_s=60.0), save_floor_factor=factor,
                               mtbf_prior_hours_per_replica=0.1, min_interval_s=1.0))
    assert decision.interval_s >= factor * 60.0
    assert decision.floor_s == factor * 60.0


def test_auto_picks_full_when_floor_breaks_pls() -> None:
    # PLS bound 2*0.02*360 s = 14.4 s, but a 10 s save floors the interval at 20 s.
    decision = plan(job_inputs(mtbf_prior_hours_per_replica=0.1, measurements=Measurements(o_save_s=10.0),
                               min_interval_s=1.0))
    assert decision.partial.interval_s == 20.0
    assert not decision.partial.meets_pls_target
    assert decision.mode_chosen == "full"


def test_partial_mode_keeps_partial_and_says_pls_is_exceeded() -> None:
    decision = plan(job_inputs(mode="partial", pls_target=1e-6))
    assert decision.mode_chosen == "partial"
    assert decision.interval_s == 5.0
    assert decision.expected_pls > 1e-6
    assert "exceeds the target" in decision.reason


# -- plan: fallbacks and fixed intervals -----------------------------------------------------------------


def test_unmeasured_save_uses_initial_interval() -> None:
    decision = plan(job_inputs(mode="full", measurements=Measurements(), initial_interval_s=60.0))
    assert decision.interval_s == 60.0
    assert "o_save not measured yet" in decision.reason
    assert "o_load and o_res not measured" in decision.reason
    assert decision.floor_s == 0.0


def test_unmeasured_save_partial_keeps_pls_bound_when_shorter() -> None:
    decision = plan(job_inputs(mode="partial", measurements=Measurements(), initial_interval_s=600.0,
                               mtbf_prior_hours_per_replica=1.0, min_interval_s=1.0))
    assert decision.interval_s == pytest.approx(2 * 0.02 * 3600.0)
    assert decision.expected_pls == pytest.approx(0.02)


def test_unmeasured_save_auto_defers_benefit_test_to_partial() -> None:
    decision = plan(job_inputs(measurements=Measurements()))
    assert decision.mode_chosen == "partial"
    assert decision.interval_s == 60.0
    assert "benefit test deferred" in decision.reason
    assert "excludes the save cost" in decision.reason


def test_measured_pls_at_target_forces_full_in_auto() -> None:
    assert plan(job_inputs(measured_pls=0.019)).mode_chosen == "partial"
    decision = plan(job_inputs(measured_pls=0.02))
    assert decision.mode_chosen == "full"
    assert "measured PLS" in decision.reason
    unmeasured = plan(job_inputs(measured_pls=0.05, measurements=Measurements()))
    assert unmeasured.mode_chosen == "full"


def test_measured_pls_in_partial_mode_is_reported() -> None:
    decision = plan(job_inputs(mode="partial", measured_pls=0.03))
    assert decision.mode_chosen == "partial"
    assert "measured PLS 0.03 has reached the target" in decision.reason


def test_fixed_interval_is_used_unclamped() -> None:
    decision = plan(job_inputs(fixed_interval_s=7200.0))
    assert decision.interval_s == 7200.0
    assert decision.full.interval_s == decision.partial.interval_s == 7200.0
    assert "fixed interval" in decision.reason


def test_fixed_interval_under_floor_is_flagged() -> None:
    decision = plan(job_inputs(mode="full", fixed_interval_s=1.0, measurements=Measurements(o_save_s=5.0)))
    assert decision.interval_s == 1.0
    assert "saves may overlap" in decision.reason


def test_lost_samples_per_embedding_failure() -> None:
    costs = dataclasses.replace(PAPER_COSTS, samples_per_second=1000.0)
    decision = plan(paper_inputs(measurements=costs))
    assert decision.expected_lost_samples_per_emb_failure == pytest.approx(1000.0 * 32_256.0 / 2 / N_EMB)
    assert plan(paper_inputs(mode="full", measurements=costs)).expected_lost_samples_per_emb_failure == 0.0
    assert plan(paper_inputs()).expected_lost_samples_per_emb_failure is None


def test_evaluate_interval_flags_curve_points() -> None:
    inputs = job_inputs(mode="partial")
    chosen = plan(inputs)
    same = evaluate_interval(inputs, "partial", chosen.interval_s)
    assert same.overhead_fraction == pytest.approx(chosen.expected_overhead_fraction)
    assert same.notes == ()
    long = evaluate_interval(inputs, "partial", 10_000.0)
    assert "above maxIntervalSeconds" in long.notes
    assert "PLS above target" in long.notes
    short = evaluate_interval(inputs, "partial", 1.0)
    assert {"below minIntervalSeconds", "below the save floor"} <= set(short.notes)


def test_plan_is_deterministic() -> None:
    inputs = job_inputs(failures=[fail("embedding-server", 1, 50.0)], observed_seconds=500.0)
    assert plan(inputs) == plan(inputs)


# -- inputs ----------------------------------------------------------------------------------------------


def test_from_spec_reads_recovery_and_replicas() -> None:
    spec = TrainingJobSpec.model_validate({
        "replicas": {"trainer": {"replicas": 4}, "embeddingServer": {"replicas": 8}},
        "recovery": {"mode": "auto", "mtbfPriorHours": 12, "plsTarget": 0.01,
                     "checkpoint": {"minIntervalSeconds": 10, "maxIntervalSeconds": 900,
                                    "initialIntervalSeconds": 30}},
    })
    inputs = TuningInputs.from_spec(spec, observed_seconds=60.0)
    assert (inputs.mode, inputs.n_emb, inputs.n_trainers, inputs.n_sync) == (RecoveryMode.AUTO, 8, 4, 1)
    assert inputs.mtbf_prior_hours_per_replica == 12.0
    assert inputs.pls_target == 0.01
    assert (inputs.min_interval_s, inputs.max_interval_s, inputs.initial_interval_s) == (10.0, 900.0, 30.0)
    assert inputs.fixed_interval_s is None
    assert inputs.measurements == Measurements()


def test_inputs_normalise_mode_and_failures() -> None:
    inputs = job_inputs(mode="full", failures=[fail("trainer")])
    assert inputs.mode is RecoveryMode.FULL
    assert isinstance(inputs.failures, tuple)


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"n_emb": 0}, id="no-shards"),
        pytest.param({"n_trainers": -1}, id="negative-trainers"),
        pytest.param({"pls_target": 1.0}, id="pls-one"),
        pytest.param({"pls_target": 0.0}, id="pls-zero"),
        pytest.param({"min_interval_s": 100.0, "max_interval_s": 10.0}, id="min-over-max"),
        pytest.param({"max_interval_s": math.inf}, id="infinite-max"),
        pytest.param({"mtbf_prior_hours_per_replica": 0.0}, id="zero-mtbf"),
        pytest.param({"prior_weight_failures": 0.0}, id="zero-prior-weight"),
        pytest.param({"observed_seconds": -1.0}, id="negative-observed"),
        pytest.param({"mode": "sometimes"}, id="unknown-mode"),
    ],
)
def test_inputs_reject_invalid(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        job_inputs(**changes)


def test_measurements_reject_negative() -> None:
    with pytest.raises(ValueError, match="o_save_s"):
        Measurements(o_save_s=-1.0)


# -- the checkpoint strategy (issue #9: the planner models what MFU/SSU save and lose) ---------------------


def test_mfu_saves_cheaply_and_more_often_and_the_loss_factor_tightens_the_pls_bound() -> None:
    # The §1.6 example with MFU: a partial save costs a tenth of a full one and leaves out 10% of the updates.
    costs = dataclasses.replace(PAPER_COSTS, o_save_partial_s=30.0, uncovered=0.1)
    full_saves = plan(paper_inputs(mode="partial", measurements=costs))
    mfu = plan(paper_inputs(mode="partial", measurements=costs, strategy="mfu", full_every=4))
    factor = 1 + 0.1 * 3
    assert mfu.interval_s == pytest.approx(full_saves.interval_s / factor)
    assert mfu.expected_pls == pytest.approx(0.02)  # still exactly the target, with what is left out counted
    mean_save = (300.0 + 3 * 30.0) / 4
    assert mfu.partial.overhead_fraction == pytest.approx(
        mean_save / mfu.interval_s + (300.0 + 600.0) / T_FAIL)
    assert mfu.expected_overhead_fraction < full_saves.expected_overhead_fraction  # CPR's point
    assert "mfu, full every 4" in mfu.reason and "loss factor 1 + 0.1*(4-1) = 1.3" in mfu.reason


def test_unmeasured_partial_costs_are_assumed_no_cheaper_and_uniformly_accessed() -> None:
    inputs = paper_inputs(mode="partial", strategy="ssu", full_every=3, partial_fraction=0.25)
    schedule = inputs.save_schedule()
    assert schedule.o_save_s == pytest.approx(300.0)  # a partial save counted as a full one's
    assert schedule.loss_factor == pytest.approx(1 + 0.75 * 2)  # 75% of the updates left out
    assert any("not measured yet" in note for note in schedule.notes)
    assert inputs.save_schedule() == dataclasses.replace(inputs, strategy="ssu").save_schedule()


def test_full_strategy_and_full_recovery_ignore_the_partial_model() -> None:
    costs = dataclasses.replace(PAPER_COSTS, o_save_partial_s=1.0, uncovered=0.9)
    assert paper_inputs(measurements=costs).save_schedule().loss_factor == 1.0
    full_mode = plan(paper_inputs(mode="full", measurements=costs, strategy="mfu"))
    assert full_mode.interval_s == pytest.approx(young_interval(300.0, T_FAIL))  # rounds are full saves


def test_the_floor_is_a_whole_save_once_its_write_is_measured() -> None:
    m = Measurements(o_save_s=0.5, o_load_s=1.0, o_res_s=1.0, save_duration_s=4.0)
    decision = plan(job_inputs(mode="partial", measurements=m, min_interval_s=0.1,
                               mtbf_prior_hours_per_replica=0.0001))
    assert decision.floor_s == pytest.approx(8.0) and decision.interval_s == pytest.approx(8.0)
    assert "save floor" in decision.reason


def test_strategy_inputs_come_from_the_spec() -> None:
    spec = TrainingJobSpec.model_validate({"recovery": {"checkpoint": {"strategy": "mfu", "fullEvery": 5,
                                                                       "hotFraction": 0.2}}})
    inputs = TuningInputs.from_spec(spec)
    assert (inputs.strategy, inputs.full_every, inputs.partial_fraction) == ("mfu", 5, 0.2)
