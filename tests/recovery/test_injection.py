"""Failure-injection planning for ``trainingjob run --inject-failures``: parsing, schedules, Poisson draws."""

from __future__ import annotations

import random
import statistics

import pytest

from trainingjob_operator.local.injection import (
    Injection,
    InjectionSpecError,
    RandomItem,
    ScheduledItem,
    due,
    parse_duration,
    parse_injection_spec,
    plan_injections,
    poisson_times,
)

REPLICAS = {"trainer": 2, "embedding-server": 3, "sync-server": 1}


@pytest.mark.parametrize(("text", "seconds"), [
    pytest.param("90", 90.0, id="bare-seconds"),
    pytest.param("60s", 60.0, id="seconds"),
    pytest.param("1.5m", 90.0, id="minutes"),
    pytest.param("2h", 7200.0, id="hours"),
    pytest.param("500ms", 0.5, id="millis"),
    pytest.param(".5s", 0.5, id="leading-dot"),
    pytest.param("0", 0.0, id="zero"),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "-5s", "1.5.2m", "10 min", "1e3", "abc"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not a duration like 90, 60s, 1\.5m, 2h or 500ms"):
        parse_duration(text)


@pytest.mark.parametrize(("spec", "items"), [
    pytest.param("embedding-server/1@60s,trainer/0@120s", [
        ScheduledItem("embedding-server/1@60s", "embedding-server", 1, 60.0),
        ScheduledItem("trainer/0@120s", "trainer", 0, 120.0),
    ], id="two-scheduled"),
    pytest.param(" trainer/1@30s:stop ", [ScheduledItem("trainer/1@30s:stop", "trainer", 1, 30.0, "STOP")],
                 id="hang-and-whitespace"),
    pytest.param("sync-server/0@1.5m:kill", [ScheduledItem("sync-server/0@1.5m:kill", "sync-server", 0, 90.0)],
                 id="explicit-kill"),
    pytest.param("random:embedding-server:mtbf=120s:seed=7", [
        RandomItem("random:embedding-server:mtbf=120s:seed=7", "embedding-server", 120.0, 7),
    ], id="random"),
    pytest.param("random:any:mtbf=2m:until=10m:stop", [
        RandomItem("random:any:mtbf=2m:until=10m:stop", "any", 120.0, 0, 600.0, "STOP"),
    ], id="random-any-until-stop"),
])
def test_parse_injection_spec(spec: str, items: list) -> None:
    assert parse_injection_spec(spec) == items


@pytest.mark.parametrize(("spec", "message"), [
    pytest.param("", "inject-failures item '': empty; expected items like trainer/0@60s or random:any:mtbf=120s",
                 id="empty-spec"),
    pytest.param("trainer/0@1s,,trainer/1@2s", "inject-failures item '': empty item (stray comma?)", id="stray-comma"),
    pytest.param("trainer/x@60s", "inject-failures item 'trainer/x@60s': rank must be an integer", id="rank-not-int"),
    pytest.param("trainer/-1@60s", "inject-failures item 'trainer/-1@60s': rank must be an integer",
                 id="negative-rank"),
    pytest.param("trainer/0", "inject-failures item 'trainer/0': expected role/rank@time (e.g. trainer/0@60s) "
                 "or random:ROLE:mtbf=DURATION", id="no-time"),
    pytest.param("trainer@60s", "inject-failures item 'trainer@60s': expected role/rank before '@' "
                 "(e.g. embedding-server/1@60s)", id="no-rank"),
    pytest.param("gpu/0@60s", "inject-failures item 'gpu/0@60s': unknown role 'gpu', expected one of "
                 "trainer, embedding-server, sync-server, worker", id="unknown-role"),
    pytest.param("any/0@60s", "inject-failures item 'any/0@60s': unknown role 'any', expected one of "
                 "trainer, embedding-server, sync-server, worker", id="any-only-for-random"),
    pytest.param("trainer/0@soon", "inject-failures item 'trainer/0@soon': time 'soon' is not a duration like "
                 "90, 60s, 1.5m or 2h", id="bad-time"),
    pytest.param("trainer/0@60s:term", "inject-failures item 'trainer/0@60s:term': unknown signal suffix 'term', "
                 "expected 'stop' (hang) or 'kill' (crash)", id="bad-signal"),
    pytest.param("random:trainer", "inject-failures item 'random:trainer': missing mtbf=DURATION "
                 "(e.g. random:embedding-server:mtbf=120s:seed=7)", id="random-no-mtbf"),
    pytest.param("random:gpu:mtbf=1m", "inject-failures item 'random:gpu:mtbf=1m': unknown role 'gpu', expected one "
                 "of trainer, embedding-server, sync-server, worker, any", id="random-bad-role"),
    pytest.param("random:any:mtbf=0s", "inject-failures item 'random:any:mtbf=0s': mtbf must be greater than 0",
                 id="random-zero-mtbf"),
    pytest.param("random:any:mtbf=often", "inject-failures item 'random:any:mtbf=often': mtbf 'often' is not a "
                 "duration like 90, 60s, 1.5m or 2h", id="random-bad-mtbf"),
    pytest.param("random:any:mtbf=1m:seed=x", "inject-failures item 'random:any:mtbf=1m:seed=x': seed 'x' must be a "
                 "non-negative integer", id="random-bad-seed"),
    pytest.param("random:any:mtbf=1m:rate=2", "inject-failures item 'random:any:mtbf=1m:rate=2': unknown option "
                 "'rate', expected mtbf=, seed=, until=", id="random-unknown-option"),
    pytest.param("random:any:mtbf=1m:mtbf=2m", "inject-failures item 'random:any:mtbf=1m:mtbf=2m': repeated option "
                 "'mtbf', expected mtbf=, seed=, until=", id="random-repeated-option"),
    pytest.param("random:any:mtbf=1m:until=0", "inject-failures item 'random:any:mtbf=1m:until=0': until must be "
                 "greater than 0", id="random-zero-until"),
    pytest.param("random:any:mtbf=1m:hang", "inject-failures item 'random:any:mtbf=1m:hang': unknown signal suffix "
                 "'hang', expected 'stop' (hang) or 'kill' (crash)", id="random-bad-signal"),
])
def test_parse_errors_name_the_item_and_the_expectation(spec: str, message: str) -> None:
    with pytest.raises(InjectionSpecError) as info:
        parse_injection_spec(spec)
    assert str(info.value) == message
    assert "\n" not in str(info.value)


def test_plan_sorts_scheduled_items_and_keeps_them_past_the_horizon() -> None:
    items = parse_injection_spec("trainer/1@120s,embedding-server/2@60s:stop,sync-server/0@1h")
    assert plan_injections(items, REPLICAS, horizon_s=600) == [
        Injection(60.0, "embedding-server", 2, "STOP"),
        Injection(120.0, "trainer", 1, "KILL"),
        Injection(3600.0, "sync-server", 0, "KILL"),
    ]


@pytest.mark.parametrize(("spec", "replicas", "message"), [
    pytest.param("trainer/2@1s", REPLICAS, "inject-failures item 'trainer/2@1s': rank 2 out of range, trainer has "
                 "2 replicas (ranks 0-1)", id="rank-too-high"),
    pytest.param("sync-server/1@1s", REPLICAS, "inject-failures item 'sync-server/1@1s': rank 1 out of range, "
                 "sync-server has 1 replica (rank 0)", id="single-replica"),
    pytest.param("trainer/0@1s", {}, "inject-failures item 'trainer/0@1s': rank 0 out of range, trainer has "
                 "0 replicas", id="role-absent"),
    pytest.param("random:trainer:mtbf=1m", {"trainer": 0}, "inject-failures item 'random:trainer:mtbf=1m': role "
                 "trainer has no replicas in this job", id="random-role-absent"),
    pytest.param("random:any:mtbf=1m", {}, "inject-failures item 'random:any:mtbf=1m': role any has no replicas "
                 "in this job", id="random-any-nothing"),
])
def test_plan_validates_ranks_against_replicas(spec: str, replicas: dict[str, int], message: str) -> None:
    with pytest.raises(InjectionSpecError) as info:
        plan_injections(parse_injection_spec(spec), replicas, horizon_s=600)
    assert str(info.value) == message


def test_random_plan_is_deterministic_per_seed_and_bounded() -> None:
    def plan(spec: str, replicas: dict[str, int] = REPLICAS) -> list[Injection]:
        return plan_injections(parse_injection_spec(spec), replicas, horizon_s=3600)

    first = plan("random:embedding-server:mtbf=300s:seed=7")
    assert first == plan("random:embedding-server:mtbf=300s:seed=7")
    assert first != plan("random:embedding-server:mtbf=300s:seed=8")
    assert first == sorted(first, key=lambda i: (i.time_s, i.role, i.rank))
    assert {i.role for i in first} == {"embedding-server"} and {i.rank for i in first} == {0, 1, 2}
    assert all(0 <= i.time_s < 3600 and i.signal == "KILL" for i in first)

    capped = plan("random:embedding-server:mtbf=300s:seed=7:until=10m")
    assert capped == [i for i in first if i.time_s < 600]

    more = plan("random:embedding-server:mtbf=300s:seed=7", {**REPLICAS, "embedding-server": 4})
    assert [i for i in more if i.rank < 3] == first, "adding a replica must not move the others' failures"

    everyone = plan("random:any:mtbf=300s:seed=7:stop")
    assert {i.role for i in everyone} == set(REPLICAS) and all(i.signal == "STOP" for i in everyone)


def test_poisson_mean_gap_matches_mtbf() -> None:
    times = poisson_times(60.0, 60.0 * 4000, random.Random(11))
    gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
    assert len(gaps) > 3000
    assert abs(statistics.mean(gaps) - 60.0) < 0.25 * 60.0
    assert abs(statistics.stdev(gaps) - 60.0) < 0.25 * 60.0, "exponential gaps: stdev equals the mean"


def test_random_plan_rate_per_replica_matches_mtbf() -> None:
    plan = plan_injections(parse_injection_spec("random:trainer:mtbf=10s:seed=3"), {"trainer": 2}, horizon_s=20_000)
    for rank in (0, 1):
        times = [i.time_s for i in plan if i.rank == rank]
        mean_gap = 20_000 / len(times)
        assert abs(mean_gap - 10.0) < 2.5


def test_due_returns_the_injections_whose_time_has_come() -> None:
    plan = [Injection(10.0, "trainer", 0), Injection(20.0, "trainer", 1), Injection(20.0, "embedding-server", 0),
            Injection(30.0, "sync-server", 0)]
    assert due(plan, 5.0, 0) == []
    assert due(plan, 10.0, 0) == plan[:1]
    assert due(plan, 25.0, 1) == plan[1:3]
    assert due(plan, 25.0, 3) == []
    assert due(plan, 100.0, 3) == plan[3:]
    assert due(plan, 100.0, 4) == []
