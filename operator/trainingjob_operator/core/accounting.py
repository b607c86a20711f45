"""PURE: lost-sample accounting, the PLS of CPR (``PAPERS.md`` §1.5), the same number on both backends.

A sample's updates to one shard are *lost* when they are in neither the shard's restored state nor
anything trained after it. A replaced embedding server knows what it restored (its checkpoint chain's
progress markers) and when its predecessor failed (the failure record's samples), and records one or
two :class:`LostSpan` per failure, in samples of the whole job:

- ``[restored_progress, failed_at)`` with weight 1: every update after the last applied save;
- ``[base_progress, restored_progress)`` with weight ``u`` for MFU/SSU chains: ``u`` is the share of
  the shard's updates since its base full save that no partial save captured (rows left out keep only
  what the full save had: they count from their own last save).

PLS = (1/N_emb) * sum over shards of the measure of the union of that shard's spans (the weight of a
point is the largest weight covering it), divided by the samples trained. A shard that fails twice and
restores the same old checkpoint loses those samples once, not twice, so PLS is a portion in [0, 1].
Full recovery redoes the lost computation instead: it records no spans.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LostSpan:
    """Samples ``[start, end)`` whose updates to one shard are lost, in portion ``weight`` (0..1]."""

    start: float
    end: float
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.weight <= 1.0:
            raise ValueError(f"weight must be in (0, 1], got {self.weight}")

    @property
    def samples(self) -> float:
        return max(0.0, self.end - self.start) * self.weight


def lost_spans(failed_at: int, restored_progress: int | None, base_progress: int | None = None,
               uncovered: float = 0.0) -> list[LostSpan]:
    """What one shard lost at one failure: see the module docstring. ``restored_progress`` None: nothing
    was restored (initial weights), every update since the start is lost."""
    restored = restored_progress or 0
    spans = [LostSpan(restored, failed_at)] if failed_at > restored else []
    base = base_progress if base_progress is not None else restored
    if uncovered > 0.0 and restored > base:
        spans.append(LostSpan(base, restored, min(1.0, uncovered)))
    return spans


def spans_of(record: Mapping[str, Any]) -> list[LostSpan]:
    """The spans one replacement's recovery record implies (what it restored, when its predecessor failed);
    none for a full recovery or a record without a failure point (the job's first start)."""
    if record.get("mode") == "full" or record.get("failed_at") is None:
        return []
    return lost_spans(int(record["failed_at"]), record.get("restored_progress"), record.get("base_progress"),
                      float(record.get("uncovered") or 0.0))


def job_spans(recoveries_by_shard: Mapping[int, Mapping[str, Mapping[str, Any]]]) -> dict[int, list[LostSpan]]:
    """Every shard's spans from its replacements' recovery records (shard -> instance -> record)."""
    return {shard: [span for record in records.values() for span in spans_of(record)]
            for shard, records in recoveries_by_shard.items()}


def union_samples(spans: Iterable[LostSpan]) -> float:
    """The measure of a union of weighted spans: at each point the largest weight counts, once. A sweep over
    the span ends with a max-heap of the open spans' weights: O(n log n) in a shard's failures."""
    events = sorted((point, kind, i, s.weight) for i, s in enumerate(spans) if s.end > s.start
                    for point, kind in ((s.start, 1), (s.end, 0)))  # ends before starts at one point
    open_spans: list[tuple[float, int]] = []  # (-weight, span index), lazily pruned
    closed: set[int] = set()
    total, previous = 0.0, None
    for point, kind, i, weight in events:
        while open_spans and open_spans[0][1] in closed:
            heapq.heappop(open_spans)
        if previous is not None and open_spans:
            total += (point - previous) * -open_spans[0][0]
        previous = point
        if kind == 1:
            heapq.heappush(open_spans, (-weight, i))
        else:
            closed.add(i)
    return total


def lost_samples(spans_by_shard: Mapping[int, Sequence[LostSpan]], n_emb: int) -> float:
    """Sample-equivalents lost across the job: each shard holds ``1/N_emb`` of every sample's updates."""
    if n_emb < 1:
        raise ValueError(f"n_emb must be at least 1, got {n_emb}")
    return sum(union_samples(spans) for spans in spans_by_shard.values()) / n_emb


def pls(spans_by_shard: Mapping[int, Sequence[LostSpan]], n_emb: int, samples: int) -> float | None:
    """The portion of lost samples, in [0, 1]; None before anything was trained."""
    if samples <= 0:
        return None
    return min(1.0, lost_samples(spans_by_shard, n_emb) / samples)
