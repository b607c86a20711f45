"""Embedding-shard and dense checkpoints: full, MFU and SSU saves that never stop training for the write.

Problem. An embedding server must be able to die at any moment and have its replacement restore the
shard from storage (CPR partial recovery, ARCHITECTURE.md §4), while the survivors keep training.
Saving must cost training only a short stall (``o_save``), and what is restored must be intact.

Invariants.

- A checkpoint exists iff its ``MANIFEST.json`` exists. Data files are written first (each to a
  temporary name, fsynced, renamed), the manifest last (same way), then the directory is fsynced.
  A directory without a manifest is a crashed or failed save: ignored by loaders, removed by retention.
- Files are immutable once renamed into place; the manifest lists each with its sha256 and size,
  and loaders verify both before they touch the tables.
- Redis holds only a pointer (ARCHITECTURE.md §3), published after the manifest; storage is the truth.
- The shard's lock is held only while the selected rows are copied (:func:`snapshot`); selection
  before it and the write after it run in the checkpointer's own thread.

Storage. ``<root>`` is a directory (a mounted volume) or an ``s3://bucket/prefix`` location in an
S3-compatible object store; :mod:`~dlrm_trainer.checkpoint.store` is the one seam to either.

Layout::

    <root>/shard-<k>/<seq:08d>-<kind>/table-<t>.safetensors   kind: full | mfu | ssu
                                     /MANIFEST.json            written last
    <root>/dense/<seq:08d>-dense/dense.safetensors + MANIFEST.json

A table file holds ``weights`` [k, D] float32 and ``adagrad`` [k] float32; a partial (MFU/SSU) file also
``rows`` [k] int64, the shard-local row indices (a full file covers rows 0..n-1 in order).

Chains. Access counters are reset per saved row, so a partial holds the rows selected from the
updates *since the previous save* (Check-N-Run's "consecutive" increments, PAPERS.md §4.1 [R]).
Each manifest names its ``base`` (the full save it builds on) and its ``parent`` (the previous save).
Restore = newest intact full, then its partials in seq order while each one's parent is the one just
applied; the first unusable link ends the chain [I]. The restored state is therefore exactly what a
restore right after the last applied save would have produced, and its progress marker is honest.

Provenance (PAPERS.md §0): MFU/SSU come from CPR (§1.7 [R]); fractions per table, the SSU sampling
rule, counter resets, chains and retention are this project's choices [I], each documented where made.
"""

from __future__ import annotations

from dlrm_trainer.checkpoint.dense import DenseLoad, load_dense, save_dense
from dlrm_trainer.checkpoint.format import (
    DENSE_DIR,
    FORMAT,
    MANIFEST_NAME,
    CheckpointCoordination,
    CheckpointInfo,
    FileRecord,
    Kind,
    LockedShard,
    Manifest,
    ShardState,
    StorageError,
)
from dlrm_trainer.checkpoint.loading import LoadReport, Skipped, load_latest
from dlrm_trainer.checkpoint.selection import choose_kind, fraction_count, select_rows
from dlrm_trainer.checkpoint.snapshot import SnapshotData, snapshot
from dlrm_trainer.checkpoint.store import CheckpointStore, DirectoryStore, ObjectStore, open_store
from dlrm_trainer.checkpoint.writer import (
    BackgroundCheckpointer,
    CheckpointerStats,
    CheckpointWriter,
    SnapshotWriter,
    tuned_interval,
)

__all__ = [
    "DENSE_DIR",
    "FORMAT",
    "MANIFEST_NAME",
    "BackgroundCheckpointer",
    "CheckpointCoordination",
    "CheckpointInfo",
    "CheckpointStore",
    "CheckpointWriter",
    "CheckpointerStats",
    "DenseLoad",
    "DirectoryStore",
    "FileRecord",
    "Kind",
    "LoadReport",
    "LockedShard",
    "Manifest",
    "ObjectStore",
    "ShardState",
    "Skipped",
    "SnapshotData",
    "SnapshotWriter",
    "StorageError",
    "choose_kind",
    "fraction_count",
    "load_dense",
    "load_latest",
    "open_store",
    "save_dense",
    "select_rows",
    "snapshot",
    "tuned_interval",
]
