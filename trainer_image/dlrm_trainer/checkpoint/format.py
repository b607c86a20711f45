"""The on-storage format and its primitives: layout, manifests, atomic writes, retention, verification;
the seams the other modules use (see the package docstring for the invariants)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from safetensors.torch import save as safetensors_bytes

log = logging.getLogger("dlrm_trainer.checkpoint")
_STALLS_KEPT = 1000  # BackgroundCheckpointer keeps this many recent stall measurements


Kind = Literal["full", "mfu", "ssu"]
MANIFEST_NAME = "MANIFEST.json"
FORMAT = "tj-checkpoint/1"
DENSE_DIR = "dense"
_DIR_NAME = re.compile(r"^(\d{8})-(full|mfu|ssu|dense)$")


class StorageError(Exception):
    """Checkpoint storage is not writable (permissions, missing volume, ENOSPC...).

    The caller keeps training and reports it: the previous checkpoint stays the latest one.
    """

    def __init__(self, path: Path, cause: OSError) -> None:
        super().__init__(f"checkpoint storage {path} not writable: {cause.strerror or cause}")
        self.path = path
        self.errno = cause.errno


# -- seams ---------------------------------------------------------------------------------------------


class ShardState(Protocol):
    """What a shard's tables look like to the checkpointer (``embedding_server.ShardTables``)."""

    @property
    def weights(self) -> list[torch.Tensor]: ...
    @property
    def adagrad(self) -> list[torch.Tensor]: ...
    @property
    def access(self) -> list[torch.Tensor]: ...


class LockedShard(Protocol):
    """An ``embedding_server.EmbeddingShard``: its tables and the lock its writers hold."""

    @property
    def tables(self) -> ShardState: ...
    @property
    def lock(self) -> AbstractContextManager[Any]: ...


class CheckpointCoordination(Protocol):
    """The part of ``trainingjob_operator.coordination.Coordination`` checkpoints use."""

    def record_cost(self, name: str, seconds: float) -> None: ...
    def set_checkpoint_pointer(self, shard: int, pointer: dict[str, Any]) -> None: ...
    def interval(self) -> float | None: ...


# -- manifest -------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FileRecord:
    name: str
    sha256: str
    bytes: int
    rows: int
    table: int | None = None


@dataclasses.dataclass(frozen=True)
class Manifest:
    """``MANIFEST.json``: the checkpoint's table of contents and its proof of completeness."""

    seq: int
    kind: str
    shard: int | None
    base: int | None
    parent: int | None
    created_unix: float
    progress: int | None
    table_rows: list[int]
    dim: int
    files: list[FileRecord]
    stall_s: float
    write_s: float
    format: str = FORMAT

    @property
    def id(self) -> str:
        return f"{self.seq:08d}-{self.kind}"

    @property
    def rows_saved(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def nbytes(self) -> int:
        return sum(f.bytes for f in self.files)

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        data = json.loads(raw)
        if data.get("format") != FORMAT:
            raise ValueError(f"unknown manifest format {data.get('format')!r}")
        data["files"] = [FileRecord(**f) for f in data["files"]]
        return cls(**data)


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """What one save produced (also what the Redis pointer says)."""

    id: str
    seq: int
    kind: str
    path: Path
    rows: int
    bytes: int
    checksum: str
    created_unix: float
    progress: int | None
    stall_s: float
    write_s: float
    pointer_published: bool = False

    def pointer(self) -> dict[str, Any]:
        return {"id": self.id, "seq": self.seq, "kind": self.kind, "path": str(self.path), "time": self.created_unix,
                "rows": self.rows, "bytes": self.bytes, "checksum": self.checksum, "progress": self.progress}


# -- storage primitives (effects) ------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _entries(directory: Path) -> list[tuple[int, str, Path, bool]]:
    """(seq, kind, path, complete) of every checkpoint-named directory, ascending by seq."""
    if not directory.is_dir():
        return []
    found = []
    for child in directory.iterdir():
        if (m := _DIR_NAME.match(child.name)) and child.is_dir():
            found.append((int(m[1]), m[2], child, (child / MANIFEST_NAME).is_file()))
    return sorted(found)


_Payload = tuple[str, dict[str, torch.Tensor], int | None]  # file name, tensors, table index


def _write_checkpoint(
    directory: Path, seq: int, kind: str, payloads: Sequence[_Payload], header: dict[str, Any]
) -> tuple[Manifest, str, Path]:
    """Write the files, then the manifest; returns (manifest, manifest sha256, dir). Raises StorageError."""
    path = directory / f"{seq:08d}-{kind}"
    start = time.perf_counter()
    try:
        path.mkdir(parents=True)
        records = []
        for name, tensors, table in payloads:
            data = safetensors_bytes(tensors)
            _write_atomically(path / name, data)
            rows = int(next(iter(tensors.values())).shape[0])
            records.append(FileRecord(name, hashlib.sha256(data).hexdigest(), len(data), rows, table))
        manifest = Manifest(seq=seq, kind=kind, files=records, write_s=time.perf_counter() - start, **header)
        raw = manifest.to_json()
        _write_atomically(path / MANIFEST_NAME, raw)
        _fsync_dir(path)
        _fsync_dir(directory)
    except OSError as e:
        shutil.rmtree(path, ignore_errors=True)
        raise StorageError(directory, e) from e
    return manifest, hashlib.sha256(raw).hexdigest(), path


def _remove_checkpoint(path: Path) -> None:
    """Manifest first, so a half-removed checkpoint is already a non-checkpoint."""
    (path / MANIFEST_NAME).unlink(missing_ok=True)
    shutil.rmtree(path)


def _prune(directory: Path, keep: int) -> list[str]:
    """Keep the newest ``keep`` full saves and everything after the oldest of them; drop older
    checkpoints and manifest-less directories older than the newest complete one. Returns removed names."""
    entries = _entries(directory)
    fulls = [seq for seq, kind, _, complete in entries if complete and kind in ("full", "dense")]
    complete = [seq for seq, _, _, c in entries if c]
    if not fulls:
        return []
    cutoff = sorted(fulls)[-keep:][0]
    removed = []
    for seq, _, path, is_complete in entries:
        if seq < cutoff or (not is_complete and seq < complete[-1]):
            _remove_checkpoint(path)
            removed.append(path.name)
    return removed


def _next_seq(directory: Path) -> int:
    try:
        return max((seq for seq, *_ in _entries(directory)), default=0) + 1
    except OSError:
        return 1


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _read_manifest(path: Path) -> Manifest:
    return Manifest.from_json((path / MANIFEST_NAME).read_bytes())


def _verify(path: Path, manifest: Manifest) -> str | None:
    """None if every file is present, of the right size and checksum; else why not (for the report)."""
    for record in manifest.files:
        file = path / record.name
        if not file.is_file():
            return f"corrupt (missing {record.name})"
        if file.stat().st_size != record.bytes:
            return f"corrupt (size mismatch in {record.name}: {file.stat().st_size} != {record.bytes} bytes)"
        if _sha256_file(file) != record.sha256:
            return f"corrupt (sha256 mismatch in {record.name})"
    return None
