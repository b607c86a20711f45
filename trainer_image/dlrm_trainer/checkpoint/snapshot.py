"""The copy under the shard lock: the only moment a save stalls training (``o_save``)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch

from dlrm_trainer.checkpoint.format import ShardState

# -- snapshot under the lock ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SnapshotData:
    """A consistent copy of the selected rows, owned by the checkpointer (no tensor aliases the shard).

    Shapes per table ``t``: ``rows[t]`` [k_t] int64, ``weights[t]`` [k_t, D], ``adagrad[t]`` [k_t].
    """

    rows: list[torch.Tensor]
    weights: list[torch.Tensor]
    adagrad: list[torch.Tensor]
    table_rows: list[int]
    dim: int
    stall_s: float
    taken_unix: float
    access_saved: int = 0  # updates counted on the saved rows since each was last saved: now in this save
    access_pending: int = 0  # updates counted on the rows left out: in no save yet (0 after a full save)

    @property
    def num_rows(self) -> int:
        return sum(int(r.numel()) for r in self.rows)


def snapshot(
    tables: ShardState, rows_per_table: Sequence[torch.Tensor], lock: AbstractContextManager[Any]
) -> SnapshotData:
    """Copy the selected rows (weights + Adagrad state) under ``lock`` and reset their access counters.

    ``rows_per_table`` holds sorted, unique shard-local indices per table (what :func:`select_rows` returns).

    The lock is held for the copies only: this is the training stall ``o_save`` (``stall_s``). The
    counters of the saved rows are zeroed in the same critical section, so they mean "updates since
    this row was last saved" [I]: rows that were accessed but not saved keep counting and rise in the
    next MFU ranking instead of being forgotten, and the saved values include every counted update.
    The counts on either side of the cut (``access_saved``, ``access_pending``) are what lost-sample
    accounting needs to weigh the rows a partial save left out.
    """
    saved = pending = 0
    with lock:
        start = time.perf_counter()
        weights = [_copy_rows(w, r) for w, r in zip(tables.weights, rows_per_table, strict=True)]
        adagrad = [_copy_rows(a, r) for a, r in zip(tables.adagrad, rows_per_table, strict=True)]
        for access, r in zip(tables.access, rows_per_table, strict=True):
            total = int(access.sum())
            if r.numel() == access.shape[0]:
                saved += total
                access.zero_()
            else:
                in_save = int(access.index_select(0, r).sum()) if r.numel() else 0
                saved, pending = saved + in_save, pending + total - in_save
                access.index_fill_(0, r, 0)
        stall_s = time.perf_counter() - start
    dim = int(tables.weights[0].shape[1]) if tables.weights else 0
    return SnapshotData([r.clone() for r in rows_per_table], weights, adagrad,
                        [int(w.shape[0]) for w in tables.weights], dim, stall_s, time.time(), saved, pending)


def _copy_rows(source: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``source[rows]``; every row (``rows`` being sorted and unique, as :func:`select_rows` returns them)
    is a plain clone, which is two orders of magnitude faster than ``index_select`` over ``arange`` on CPU
    and keeps full saves' stall short."""
    return source.clone() if rows.numel() == source.shape[0] else source.index_select(0, rows)
