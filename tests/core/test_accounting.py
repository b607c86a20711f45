"""Lost-sample accounting (PLS as CPR defines it): a portion in [0, 1], counted once per shard and sample."""

from __future__ import annotations

import pytest

from trainingjob_operator.core.accounting import (
    LostSpan,
    job_spans,
    lost_samples,
    lost_spans,
    pls,
    spans_of,
    union_samples,
)


def test_a_restored_checkpoint_loses_the_samples_since_its_progress() -> None:
    assert lost_spans(failed_at=1000, restored_progress=600) == [LostSpan(600, 1000)]
    assert lost_spans(failed_at=1000, restored_progress=None) == [LostSpan(0, 1000)]  # initial weights
    assert lost_spans(failed_at=500, restored_progress=600) == []  # nothing trained since the save


def test_rows_left_out_of_partial_saves_count_from_the_full_save() -> None:
    spans = lost_spans(failed_at=1000, restored_progress=800, base_progress=200, uncovered=0.25)
    assert spans == [LostSpan(800, 1000), LostSpan(200, 800, 0.25)]
    assert union_samples(spans) == pytest.approx(200 + 0.25 * 600)


def test_a_shard_losing_the_same_samples_twice_counts_them_once() -> None:
    # Issue #9: every restart from initial weights counted everything since the job's start again
    # (PLS 19.4). The union keeps each sample once: at most every sample, PLS at most 1.
    spans = [LostSpan(0, 1000), LostSpan(0, 1500), LostSpan(0, 2000)]
    assert union_samples(spans) == 2000
    by_shard = {0: spans, 1: [LostSpan(0, 2000)]}
    assert lost_samples(by_shard, n_emb=2) == 2000
    assert pls(by_shard, n_emb=2, samples=2000) == 1.0


def test_overlapping_spans_take_the_largest_weight() -> None:
    spans = [LostSpan(0, 100, 0.5), LostSpan(50, 150, 1.0), LostSpan(140, 200, 0.1)]
    assert union_samples(spans) == pytest.approx(50 * 0.5 + 100 * 1.0 + 50 * 0.1)


def test_each_shard_holds_a_share_of_every_sample() -> None:
    by_shard = {0: [LostSpan(600, 1000)], 1: [], 2: [], 3: []}
    assert lost_samples(by_shard, n_emb=4) == 100
    assert pls(by_shard, n_emb=4, samples=10_000) == pytest.approx(0.01)
    assert pls(by_shard, n_emb=4, samples=0) is None


def test_recovery_records_decide_the_spans() -> None:
    partial = {"failed_at": 1000, "restored_progress": 800, "base_progress": 400, "uncovered": 0.5,
               "mode": "partial"}
    first_start = {"failed_at": None, "restored_progress": None, "mode": "partial"}
    full = {"failed_at": 1000, "restored_progress": 0, "mode": "full"}  # recomputed, not lost
    assert spans_of(partial) == [LostSpan(800, 1000), LostSpan(400, 800, 0.5)]
    assert spans_of(first_start) == [] and spans_of(full) == []
    by_shard = job_spans({0: {"pod-a": first_start, "pod-b": partial}, 1: {"pod-c": full}})
    assert by_shard == {0: [LostSpan(800, 1000), LostSpan(400, 800, 0.5)], 1: []}


def test_weights_outside_zero_one_are_refused() -> None:
    with pytest.raises(ValueError, match="weight"):
        LostSpan(0, 1, 1.5)


def test_the_sweep_agrees_with_the_definition_on_random_spans() -> None:
    """union_samples sweeps in O(n log n); the definition: every elementary segment, its largest weight."""
    import itertools
    import random

    def by_definition(spans: list[LostSpan]) -> float:
        live = [s for s in spans if s.end > s.start]
        edges = sorted({s.start for s in live} | {s.end for s in live})
        return sum((b - a) * max((s.weight for s in live if s.start <= a and s.end >= b), default=0.0)
                   for a, b in itertools.pairwise(edges))

    rng = random.Random(1)
    for _ in range(500):
        spans = [LostSpan(a := rng.randint(0, 50), a + rng.randint(-3, 30), rng.choice([0.1, 0.5, 1.0]))
                 for _ in range(rng.randint(0, 8))]
        assert union_samples(spans) == pytest.approx(by_definition(spans))
