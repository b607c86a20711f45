"""The sync server's dense copy: saved and restored with the same atomicity rules as shards."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import torch
from safetensors import safe_open

from dlrm_trainer.checkpoint.format import (
    DENSE_DIR,
    CheckpointInfo,
    _entries,
    _next_seq,
    _prune,
    _read_manifest,
    _verify,
    _write_checkpoint,
)
from dlrm_trainer.checkpoint.loading import Skipped

log = logging.getLogger("dlrm_trainer.checkpoint")


# -- dense state (sync server) ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DenseLoad:
    """:func:`load_dense`'s result: ``flat`` is None when no intact dense checkpoint exists."""

    flat: torch.Tensor | None
    id: str | None
    progress: int | None
    skipped: tuple[Skipped, ...]


def save_dense(root: Path | str, flat: torch.Tensor, progress_marker: int | None, keep: int = 3) -> CheckpointInfo:
    """Save the sync server's central dense copy (a 1-D tensor) under ``<root>/dense/``; same atomicity
    rules as shard checkpoints. Raises :class:`StorageError`. Callers pass a copy taken under their lock."""
    directory = Path(root) / DENSE_DIR
    flat = flat.detach().contiguous().clone()
    header = {"shard": None, "base": None, "parent": None, "created_unix": time.time(), "progress": progress_marker,
              "table_rows": [int(flat.numel())], "dim": 1, "stall_s": 0.0}
    seq = _next_seq(directory)
    manifest, checksum, path = _write_checkpoint(directory, seq, "dense", [("dense.safetensors", {"flat": flat}, None)],
                                                 header)
    try:
        _prune(directory, keep)
    except OSError as e:
        log.warning("dense checkpoint retention failed: %s", e)
    return CheckpointInfo(manifest.id, seq, "dense", path, int(flat.numel()), manifest.nbytes, f"sha256:{checksum}",
                          manifest.created_unix, progress_marker, 0.0, manifest.write_s)


def load_dense(root: Path | str, only: str | None = None) -> DenseLoad:
    """The newest intact dense checkpoint, falling back past corrupt ones (reported in ``skipped``);
    ``only``: exactly that one (a full recovery's round)."""
    skipped: list[Skipped] = []
    for _, _, path, complete in reversed(_entries(Path(root) / DENSE_DIR)):
        if not complete or (only is not None and path.name != only):
            continue
        try:
            manifest = _read_manifest(path)
            problem = _verify(path, manifest)
        except (OSError, ValueError, TypeError, KeyError) as e:
            problem = f"unreadable manifest ({type(e).__name__}: {e})"
        if problem is not None:
            skipped.append(Skipped(path.name, problem))
            continue
        with safe_open(str(path / "dense.safetensors"), framework="pt") as f:
            flat = f.get_tensor("flat")
        return DenseLoad(flat, manifest.id, manifest.progress, tuple(skipped))
    return DenseLoad(None, None, None, tuple(skipped))
