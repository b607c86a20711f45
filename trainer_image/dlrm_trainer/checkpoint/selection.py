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
      they were last saved [R: CPR-MFU saves the top fraction of rows by access count]. Never-accessed
      rows are left out: their value equals the one last saved. Ties go to the lower row index
      (stable sort), so the choice is deterministic. The fraction is per table [I]: a global top
      fraction would let a hot table starve the others until the next full save.
    - ``ssu``: a uniform sample without replacement of ``ceil(sample_fraction * m)`` of the ``m``
      rows accessed since last saved [I, per issue #3]. CPR-SSU [R] instead samples *accesses* into
      a bounded buffer, which favours hot rows and needs no per-row counter; this server keeps the
      counters anyway (for MFU), so SSU here is the cheap-to-select, hot-agnostic variant.
    """
    if strategy == "full":
        return [torch.arange(c.shape[0], dtype=torch.int64) for c in access_counts_per_table]
    if strategy == "mfu":
        return [_hottest(c.to(torch.int64), hot_fraction) for c in access_counts_per_table]
    if strategy == "ssu":
        return [_sample_accessed(c, sample_fraction, rng) for c in access_counts_per_table]
    raise ValueError(f"checkpoint strategy {strategy!r}: expected full, mfu or ssu")


def _hottest(counts: torch.Tensor, fraction: float) -> torch.Tensor:
    k = min(fraction_count(fraction, counts.shape[0]), int((counts > 0).sum()))
    order = torch.sort(counts, descending=True, stable=True).indices[:k]
    return order.sort().values


def _sample_accessed(counts: torch.Tensor, fraction: float, rng: torch.Generator) -> torch.Tensor:
    accessed = torch.nonzero(counts > 0).flatten()
    k = fraction_count(fraction, accessed.numel())
    return accessed[torch.randperm(accessed.numel(), generator=rng)[:k]].sort().values


def choose_kind(strategy: str, partials_since_full: int | None, full_every: int) -> Kind:
    """PURE: the kind of the next save. ``partials_since_full`` is None before the first successful
    full save (and after a failed save, see :class:`BackgroundCheckpointer`), so that one is full;
    otherwise every ``full_every``-th save is full (``full_every=4``: full, p, p, p, full, ...)."""
    if strategy == "full" or partials_since_full is None or partials_since_full + 1 >= full_every:
        return "full"
    if strategy not in ("mfu", "ssu"):
        raise ValueError(f"checkpoint strategy {strategy!r}: expected full, mfu or ssu")
    return "mfu" if strategy == "mfu" else "ssu"
