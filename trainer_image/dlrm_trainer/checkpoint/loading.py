"""Restoring a shard: the newest intact chain (or exactly one checkpoint), verified before anything is copied."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

from safetensors.torch import load as safetensors_load

from dlrm_trainer.checkpoint.format import (
    CheckpointCoordination,
    Manifest,
    ShardState,
    _entries,
    _read_manifest,
    _verify,
)
from dlrm_trainer.checkpoint.store import CheckpointStore, open_store

log = logging.getLogger("dlrm_trainer.checkpoint")


# -- loading --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Skipped:
    id: str
    reason: str


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What :func:`load_latest` restored, what it passed over and why, and how long it took."""

    shard: int
    loaded: tuple[str, ...]
    skipped: tuple[Skipped, ...]
    incomplete: tuple[str, ...]
    progress: int | None
    rows_restored: int
    duration_s: float
    base_progress: int | None = None  # the chain's full save's progress marker
    uncovered: float = 0.0  # share of the updates since the base full that no applied partial save holds
    saved_unix: float | None = None  # when the last applied checkpoint was taken: the shard's save clock

    @property
    def found(self) -> bool:
        return bool(self.loaded)

    def describe(self) -> str:
        """One line for the server's log, e.g. ``checkpoint 00000007-full corrupt (sha256 mismatch in
        table-3.safetensors); fell back to 00000003-full``."""
        problems = "; ".join(f"checkpoint {s.id} {s.reason}" for s in self.skipped)
        if not self.loaded:
            if not problems:
                return f"shard {self.shard}: no checkpoint, starting from initial weights"
            return f"shard {self.shard}: no intact checkpoint, starting from initial weights: {problems}"
        partials = f" + {len(self.loaded) - 1} partial(s) up to {self.loaded[-1]}" if len(self.loaded) > 1 else ""
        head = (f"shard {self.shard}: restored {self.loaded[0]}{partials} ({self.rows_restored} rows, progress "
                f"{self.progress}) in {self.duration_s:.3f}s")
        fell_back = any(s.id.endswith("-full") and s.id > self.loaded[0] for s in self.skipped)
        tail = f"; fell back to {self.loaded[0]}" if fell_back else ""
        return f"{head}; {problems}{tail}" if problems else head


def _shape_problem(manifest: Manifest, tables: ShardState) -> str | None:
    have = [int(w.shape[0]) for w in tables.weights]
    dim = int(tables.weights[0].shape[1]) if tables.weights else 0
    if manifest.table_rows != have or manifest.dim != dim:
        return f"incompatible (tables {manifest.table_rows} x {manifest.dim}, shard has {have} x {dim})"
    if sorted(f.table for f in manifest.files if f.table is not None) != list(range(len(have))):
        return "corrupt (manifest does not list one file per table)"
    return None


def _apply(store: CheckpointStore, folder: str, entry: str, manifest: Manifest, tables: ShardState) -> int:
    """Copy a verified checkpoint into the tables, one table file in memory at a time; returns rows written."""
    for record in manifest.files:
        t = record.table
        assert t is not None
        tensors = safetensors_load(store.read(folder, entry, record.name))
        if manifest.kind == "full":
            tables.weights[t].copy_(tensors["weights"])
            tables.adagrad[t].copy_(tensors["adagrad"])
        else:
            tables.weights[t].index_copy_(0, tensors["rows"], tensors["weights"])
            tables.adagrad[t].index_copy_(0, tensors["rows"], tensors["adagrad"])
    return manifest.rows_saved


def _check(store: CheckpointStore, folder: str, entry: str, tables: ShardState) -> tuple[Manifest | None, str | None]:
    try:
        manifest = _read_manifest(store, folder, entry)
    except (OSError, ValueError, TypeError, KeyError) as e:
        return None, f"unreadable manifest ({type(e).__name__}: {e})"
    problem = _shape_problem(manifest, tables) or _verify(store, folder, entry, manifest)
    return manifest, problem


def load_latest(
    root: Path | str | CheckpointStore, shard: int, tables: ShardState, coord: CheckpointCoordination | None = None,
    only: str | None = None,
) -> LoadReport:
    """Restore ``tables`` in place from the shard's newest intact checkpoint chain (see module docstring).

    Walks full saves newest first, skipping (and reporting) corrupt, missing or incompatible ones; then
    applies that full's partials in seq order while each is intact and its parent was the one just
    applied. Every file is verified before anything is copied, so with no intact full the tables are
    untouched. Access counters of a restored shard are zeroed (everything equals its saved value).
    Call before serving: it takes no lock. Records ``o_load`` when ``coord`` is given and something loaded.
    ``only``: restore exactly that full checkpoint (a full recovery's round, see ``rounds``), no partials.
    """
    start = time.perf_counter()
    store, folder = open_store(root), f"shard-{shard}"
    entries = _entries(store, folder)
    skipped: list[Skipped] = []
    chosen: tuple[int, Manifest, str] | None = None
    for seq, kind, entry, complete in reversed(entries):
        if only is not None and entry != only:
            continue
        if complete and kind == "full":
            manifest, problem = _check(store, folder, entry, tables)
            if problem is None and manifest is not None:
                chosen = (seq, manifest, entry)
                break
            skipped.append(Skipped(entry, problem or "unusable"))
    loaded: list[Manifest] = []
    rows = 0
    if chosen is not None:
        seq0, manifest0, entry0 = chosen
        rows = _apply(store, folder, entry0, manifest0, tables)
        loaded.append(manifest0)
        if only is None:
            rows = _apply_partials(store, folder, entries, seq0, tables, loaded, skipped, rows)
        for access in tables.access:
            access.zero_()
    duration = time.perf_counter() - start
    if coord is not None and loaded:
        try:
            coord.record_cost("o_load", duration)
        except Exception as e:
            log.warning("shard %d: o_load not recorded: %s", shard, e)
    incomplete = tuple(entry for _, _, entry, complete in entries if not complete)
    return LoadReport(shard, tuple(m.id for m in loaded), tuple(sorted(skipped, key=lambda s: s.id, reverse=True)),
                      incomplete, loaded[-1].progress if loaded else None, rows, duration,
                      base_progress=loaded[0].progress if loaded else None, uncovered=uncovered_share(loaded),
                      saved_unix=loaded[-1].created_unix if loaded else None)


def uncovered_share(chain: list[Manifest]) -> float:
    """Of the updates counted since the chain's full save, the share no applied partial save holds: the
    last save's ``access_pending`` over everything counted since the full (each update is either in a later
    partial's ``access_saved`` or still pending). 0 for a lone full save."""
    if len(chain) < 2:
        return 0.0
    pending = chain[-1].access_pending
    counted = sum(m.access_saved for m in chain[1:]) + pending
    return pending / counted if counted > 0 else 0.0


def _apply_partials(store: CheckpointStore, folder: str, entries: list[tuple[int, str, str, bool]], base_seq: int,
                    tables: ShardState, loaded: list[Manifest], skipped: list[Skipped], rows: int) -> int:
    last, broken = base_seq, None
    for seq, kind, entry, complete in entries:
        if seq <= base_seq or not complete or kind == "full":
            broken = broken or (entry if seq > base_seq and complete else None)
            continue
        if broken is not None:
            skipped.append(Skipped(entry, f"not applied (follows unusable {broken})"))
            continue
        manifest, problem = _check(store, folder, entry, tables)
        if problem is None and manifest is not None and manifest.parent != last:
            problem = f"not applied (its parent {manifest.parent} was not restored)"
        if problem is not None or manifest is None:
            skipped.append(Skipped(entry, problem or "unusable"))
            broken = entry
            continue
        rows += _apply(store, folder, entry, manifest, tables)
        loaded.append(manifest)
        last = seq
    return rows
