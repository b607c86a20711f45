"""The simulator as a shell of the reconcile core and the tuner: actions applied, accounting, replay, seeds."""

from __future__ import annotations

import dataclasses
import math
import statistics

import pytest

from tests.simulate.helpers import ALL_ROLES, EMB_ONLY, HOUR, run, small_spec
from trainingjob_operator.core import accounting
from trainingjob_operator.simulate import Costs, FailureSpec, LoggedFailure, Simulation, build_config, simulate
from trainingjob_operator.simulate.failures import NodeLifetimes

COSTS = Costs(o_save_s=10.0, o_load_s=30.0, o_res_s=60.0)


def test_same_seed_same_run_other_seed_other_failures() -> None:
    kwargs = {"t_fail_job_s": 5 * HOUR, "days": 20, "costs": COSTS, "roles": ALL_ROLES}
    a = run("auto", seed=3, **kwargs)  # type: ignore[arg-type]
    b = run("auto", seed=3, **kwargs)  # type: ignore[arg-type]
    c = run("auto", seed=4, **kwargs)  # type: ignore[arg-type]
    ignore = {"cpu_s", "reconcile_s", "observe_s", "plan_s"}
    same = {k: v for k, v in a.to_json(timeline=True).items() if k not in ignore}
    assert same == {k: v for k, v in b.to_json(timeline=True).items() if k not in ignore}
    assert a.timeline["failures"] != c.timeline["failures"]


def test_failure_times_do_not_depend_on_mode_or_interval() -> None:
    """Common random numbers: a seed's failures are the same whatever is being compared."""
    kwargs = {"t_fail_job_s": 5 * HOUR, "days": 10, "costs": COSTS, "seed": 1}
    partial = run("partial", fixed_interval_s=600.0, **kwargs)  # type: ignore[arg-type]
    other = run("partial", fixed_interval_s=2400.0, **kwargs)  # type: ignore[arg-type]
    full = run("full", **kwargs)  # type: ignore[arg-type]
    end = min(partial.wall_s, other.wall_s, full.wall_s)

    def times(r: object) -> list[tuple[float, str, int]]:
        return [(t, role, rank) for t, role, rank, _ in r.timeline["failures"] if t < end]  # type: ignore[attr-defined]

    assert times(partial) == times(other) == times(full)
    assert len(times(full)) > 20


def test_partial_replaces_only_the_failed_replica_full_replaces_all() -> None:
    spec = small_spec(n_emb=3, n_trainers=3)
    n_replicas = 3 + 3 + 1
    kwargs = {"t_fail_job_s": 4 * HOUR, "days": 20, "costs": COSTS, "roles": ALL_ROLES, "spec": spec}
    partial = run("partial", **kwargs)  # type: ignore[arg-type]
    full = run("full", **kwargs)  # type: ignore[arg-type]
    assert partial.replacements == partial.failures > 50
    assert partial.full_recoveries == 0 and partial.lost_s == 0.0
    assert full.replacements == full.failures * n_replicas
    assert full.full_recoveries == full.failures and full.pls == 0.0
    assert partial.phase_final == full.phase_final == "Succeeded"


def test_the_overhead_is_the_sum_of_its_parts() -> None:
    for mode in ("full", "partial", "partial+SSU", "auto"):
        r = run(mode, t_fail_job_s=3 * HOUR, days=15, costs=COSTS, roles=ALL_ROLES, seed=2)
        parts = r.save_s + r.lost_s + r.res_s + r.load_s + r.degraded_s
        assert r.wall_s - r.useful_s == pytest.approx(parts, rel=1e-6, abs=1e-3), mode
        assert r.overhead == pytest.approx(parts / r.useful_s, rel=1e-6)


def test_lost_samples_are_core_accountings_union() -> None:
    config = build_config(small_spec(), "partial+MFU", costs=dataclasses.replace(COSTS, uncovered=0.3),
                          failures=FailureSpec(mtbf_node_s=4 * 3 * HOUR, roles=EMB_ONLY), days=30, seed=5,
                          prior_hours=12.0, fixed_interval_s=1800.0)
    sim = Simulation(config)
    result = sim.run()
    spans = {i: shard.spans for i, shard in enumerate(sim.shards)}
    assert any(s.weight < 1.0 for shard_spans in spans.values() for s in shard_spans)  # MFU's uncovered rows
    assert result.lost_samples == pytest.approx(accounting.lost_samples(spans, 4), rel=1e-12)
    assert sim.lost_total / 4 == pytest.approx(result.lost_samples, rel=1e-9)  # the tuner saw the same number
    assert result.pls == accounting.pls(spans, 4, result.samples)


def test_a_missing_trainer_costs_its_share_of_throughput_under_partial_recovery() -> None:
    spec = small_spec(n_emb=2, n_trainers=4)
    r = run("partial", t_fail_job_s=4 * HOUR, days=20, costs=COSTS, roles=("trainer",), spec=spec,
            fixed_interval_s=3600.0)
    n = r.failures_by_role["trainer"]
    assert n > 80
    assert r.degraded_s == pytest.approx(n * COSTS.o_res_s / 4, rel=0.02)
    assert r.res_s == r.load_s == r.pls == 0.0


def test_replayed_failures_happen_when_the_log_says() -> None:
    log = (LoggedFailure("embedding-server", 1, 5000.0), LoggedFailure("trainer", 0, 9000.0),
           LoggedFailure("embedding-server", 7, 20000.0))  # rank 7 wraps to 7 % 4 = 3
    config = build_config(small_spec(), "partial", costs=COSTS, failures=FailureSpec(log=log), days=1,
                          prior_hours=24.0, fixed_interval_s=3600.0)
    r = simulate(config)
    assert [(t, role, rank) for t, role, rank, _ in r.timeline["failures"]] == [
        (5000.0, "embedding-server", 1), (9000.0, "trainer", 0), (20000.0, "embedding-server", 3)]
    assert r.replacements == 3
    # Shard 1 last saved at 3600 s, shard 3 at 18000 s (saves every 3600 s from 0, each stalling the job 10 s):
    # the progress since those saves is lost, for a quarter of the samples each.
    lost_progress = (5000 - 20 - 3590) + (2000 - 10)
    assert r.lost_samples == pytest.approx(lost_progress * config.rate / 4, rel=1e-6)


def test_the_restart_budget_of_the_core_fails_the_job() -> None:
    # Six failures of one replica within the 600 s window, each after its replacement is up again: o_res (60 s)
    # plus the core's backoff for a replica that keeps failing (0, 0, 10, 20, 40 s) stays under 110 s.
    log = tuple(LoggedFailure("embedding-server", 0, 1000.0 + 110 * i) for i in range(6))
    config = build_config(small_spec(), "partial", costs=COSTS, failures=FailureSpec(log=log), days=1,
                          prior_hours=24.0)
    r = simulate(config)
    assert r.status == "Failed" and r.phase_final == "Failed"
    assert r.failures == 6


def test_weibull_and_exponential_lifetimes_have_the_given_mean() -> None:
    for spec in (FailureSpec(mtbf_node_s=1000.0), FailureSpec(mtbf_node_s=1000.0, distribution="weibull",
                                                               weibull_shape=0.7)):
        draws = NodeLifetimes(spec, seed=1)
        values = [draws.lifetime("trainer", rank % 50) for rank in range(20_000)]
        sd = statistics.stdev(values)
        assert abs(statistics.fmean(values) - 1000.0) < 4 * sd / math.sqrt(len(values))
    assert math.isinf(NodeLifetimes(FailureSpec(mtbf_node_s=1000.0, roles=EMB_ONLY), 0).lifetime("trainer", 0))


def test_auto_follows_the_benefit_test_and_reports_its_time_in_full() -> None:
    # Saves so expensive that partial recovery at its PLS-bounded interval costs more than full recovery.
    costly = Costs(o_save_s=2000.0, o_load_s=30.0, o_res_s=60.0)
    spec = small_spec(pls_target=0.0005)
    r = run("auto", t_fail_job_s=10 * HOUR, days=30, costs=costly, spec=spec, roles=ALL_ROLES)
    assert r.mode_final == "full" and r.full_share > 0.99
    assert r.rounds > 0 and r.pls == 0.0
    # Cheap saves, and an interval cap that keeps PLS well under the target: partial all along. (At the
    # PLS-bounded interval the measured PLS ends near the target, and reaching it switches auto to full.)
    capped = small_spec()
    capped = capped.model_copy(update={"recovery": capped.recovery.model_copy(update={
        "checkpoint": capped.recovery.checkpoint.model_copy(update={"max_interval_seconds": 3600.0})})})
    cheap = run("auto", t_fail_job_s=10 * HOUR, days=30, costs=COSTS, roles=ALL_ROLES, spec=capped)
    assert cheap.mode_final == "partial" and cheap.full_share == 0.0
