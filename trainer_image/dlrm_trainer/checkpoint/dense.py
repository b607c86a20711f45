"""The sync server's dense copy: saved and restored with the same atomicity rules as shards."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import torch
from safetensors.torch import load as safetensors_load

from dlrm_trainer.checkpoint.format import (
    DENSE_DIR,
    CheckpointInfo,
    StorageError,
    _entries,
    _next_seq,
    _prune,
    _read_manifest,
    _verify,
    _write_checkpoint,
)
from dlrm_trainer.checkpoint.loading import Skipped
from dlrm_trainer.checkpoint.store import CheckpointStore, open_store

log = logging.getLogger("dlrm_trainer.checkpoint")


# -- dense state (sync server) ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DenseLoad:
    """:func:`load_dense`'s result: ``flat`` is None when no intact dense checkpoint exists."""

    flat: torch.Tensor | None
    id: str | None
    progress: int | None
    skipped: tuple[Skipped, ...]


def save_dense(root: Path | str | CheckpointStore, flat: torch.Tensor, progress_marker: int | None,
               keep: int = 3) -> CheckpointInfo:
    """Save the sync server's central dense copy (a 1-D tensor) under ``<root>/dense/``; same atomicity
    rules as shard checkpoints. Raises :class:`StorageError`. Callers pass a copy taken under their lock."""
    store = open_store(root)
    flat = flat.detach().contiguous().clone()
    header = {"shard": None, "base": None, "parent": None, "created_unix": time.time(), "progress": progress_marker,
              "table_rows": [int(flat.numel())], "dim": 1, "stall_s": 0.0}
    seq = _next_seq(store, DENSE_DIR)
    manifest, checksum, location = _write_checkpoint(store, DENSE_DIR, seq, "dense",
                                                     [("dense.safetensors", {"flat": flat}, None)], header)
    try:
        _prune(store, DENSE_DIR, keep)
    except (OSError, StorageError) as e:
        log.warning("dense checkpoint retention failed: %s", e)
    return CheckpointInfo(manifest.id, seq, "dense", location, int(flat.numel()), manifest.nbytes, f"sha256:{checksum}",
                          manifest.created_unix, progress_marker, 0.0, manifest.write_s)


def load_dense(root: Path | str | CheckpointStore, only: str | None = None) -> DenseLoad:
    """The newest intact dense checkpoint, falling back past corrupt ones (reported in ``skipped``);
    ``only``: exactly that one (a full recovery's round)."""
    store = open_store(root)
    skipped: list[Skipped] = []
    for _, _, entry, complete in reversed(_entries(store, DENSE_DIR)):
        if not complete or (only is not None and entry != only):
            continue
        try:
            manifest = _read_manifest(store, DENSE_DIR, entry)
            problem = _verify(store, DENSE_DIR, entry, manifest)
        except (OSError, ValueError, TypeError, KeyError) as e:
            problem = f"unreadable manifest ({type(e).__name__}: {e})"
        if problem is not None:
            skipped.append(Skipped(entry, problem))
            continue
        flat = safetensors_load(store.read(DENSE_DIR, entry, "dense.safetensors"))["flat"]
        return DenseLoad(flat, manifest.id, manifest.progress, tuple(skipped))
    return DenseLoad(None, None, None, tuple(skipped))
