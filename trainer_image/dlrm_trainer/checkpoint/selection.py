"""PURE: which rows a save holds (full, MFU, SSU) and which kind the next save is."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from dlrm_trainer.checkpoint.format import Kind

# -- pure: which rows to save -----------------------------------------------------------------------


def fraction_count(fraction: float, n: int) -> int:
    """``ceil(fraction * n)`` capped at ``n``; rounding first so 0.1 * 30 is 3, not 4."""
    return min(n, math.ceil(round(fraction * n, 9)))


def select_rows(
    strategy: str,
    access_counts_per_table: Sequence[torch.Tensor],
    hot_fraction: float,
    sample_fraction: float,
    rng: torch.Generator,
) -> list[torch.Tensor]:
    """PURE (given ``rng``'s state): the shard-local rows to save per table, sorted ascending, int64.

    - ``full``: every row.
    - ``mfu``: the ``ceil(hot_fraction * n)`` rows of each table with the highest access count since
      they were last saved [R: CPR-MFU saves the top fraction of rows by access count], ranked with
      ``topk`` (O(n), not a full sort). Never-accessed rows are left out: their value equals the one last
      saved. Ties go to the lower row index, so the choice is deterministic. The fraction is per table
      [I]: a global top fraction would let a hot table starve the others until the next full save.
    - ``ssu``: ``ceil(sample_fraction * m)`` of the ``m`` rows accessed since last saved, sampled without
      replacement with probability proportional to their access count (Efraimidis-Spirakis keys). CPR-SSU
      [R] samples *accesses* into a bounded buffer, which favours hot rows the same way: a row updated
      100 times is about 100 times as likely to be kept as one updated once. ``sample_fraction`` is thus
      the share of *accessed rows* a save holds, and the share of *updates* it holds is larger (reported
      per save as ``access_saved`` / ``access_pending``).
    """
    if strategy == "full":
        return [torch.arange(c.shape[0], dtype=torch.int64) for c in access_counts_per_table]
    if strategy == "mfu":
        return [_hottest(c.to(torch.int64), hot_fraction) for c in access_counts_per_table]
    if strategy == "ssu":
        return [_sample_accessed(c, sample_fraction, rng) for c in access_counts_per_table]
    raise ValueError(f"checkpoint strategy {strategy!r}: expected full, mfu or ssu")


def _hottest(counts: torch.Tensor, fraction: float) -> torch.Tensor:
    n = counts.shape[0]
    k = min(fraction_count(fraction, n), int((counts > 0).sum()))
    if k == 0:
        return torch.empty(0, dtype=torch.int64)
    # One int64 key per row: the count first, then the lower index on a tie (counts are int32, n < 2**31).
    key = counts.to(torch.int64) * n + (n - 1 - torch.arange(n, dtype=torch.int64))
    return torch.topk(key, k, sorted=False).indices.sort().values


def _sample_accessed(counts: torch.Tensor, fraction: float, rng: torch.Generator) -> torch.Tensor:
    accessed = torch.nonzero(counts > 0).flatten()
    k = fraction_count(fraction, accessed.numel())
    if k == 0:
        return torch.empty(0, dtype=torch.int64)
    # Weighted sampling without replacement: the k smallest Exp(1) / weight keys (Efraimidis-Spirakis).
    weights = counts.index_select(0, accessed).to(torch.float64)
    keys = torch.empty(accessed.numel(), dtype=torch.float64).exponential_(generator=rng) / weights
    return accessed.index_select(0, torch.topk(keys, k, largest=False, sorted=False).indices).sort().values


def choose_kind(strategy: str, partials_since_full: int | None, full_every: int) -> Kind:
    """PURE: the kind of the next save. ``partials_since_full`` is None before the first successful
    full save (and after a failed save, see :class:`BackgroundCheckpointer`), so that one is full;
    otherwise every ``full_every``-th save is full (``full_every=4``: full, p, p, p, full, ...)."""
    if strategy == "full" or partials_since_full is None or partials_since_full + 1 >= full_every:
        return "full"
    if strategy not in ("mfu", "ssu"):
        raise ValueError(f"checkpoint strategy {strategy!r}: expected full, mfu or ssu")
    return "mfu" if strategy == "mfu" else "ssu"
