"""The on-storage format and its primitives: layout, manifests, atomic writes, retention, verification;
the seams the other modules use (see the package docstring for the invariants)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from safetensors.torch import save as safetensors_bytes

from dlrm_trainer.checkpoint.store import MANIFEST_NAME, CheckpointStore, StorageError

__all__ = ["MANIFEST_NAME", "CheckpointStore", "StorageError"]  # re-exported: the format's own vocabulary

log = logging.getLogger("dlrm_trainer.checkpoint")
_STALLS_KEPT = 1000  # BackgroundCheckpointer keeps this many recent stall measurements


Kind = Literal["full", "mfu", "ssu"]
FORMAT = "tj-checkpoint/1"
DENSE_DIR = "dense"
_DIR_NAME = re.compile(r"^(\d{8})-(full|mfu|ssu|dense)$")


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
    def holds(self) -> bool: ...  # still the registered incarnation (not fenced): checked before every save


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
    access_saved: int = 0  # see SnapshotData: what lost-sample accounting weighs partial chains by
    access_pending: int = 0

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
    location: str  # a directory path or an s3:// URL
    rows: int
    bytes: int
    checksum: str
    created_unix: float
    progress: int | None
    stall_s: float
    write_s: float
    pointer_published: bool = False
    uncovered: float = 0.0  # of the updates since the chain's full save, the share in no save of it yet


    @property
    def path(self) -> Path:
        """The checkpoint's directory (a directory store's checkpoints only)."""
        return Path(self.location)

    def pointer(self) -> dict[str, Any]:
        return {"id": self.id, "seq": self.seq, "kind": self.kind, "path": self.location, "stall_s": self.stall_s,
                "write_s": self.write_s, "uncovered": round(self.uncovered, 6), "time": self.created_unix,
                "rows": self.rows, "bytes": self.bytes, "checksum": self.checksum, "progress": self.progress}


# -- storage primitives (effects, through the store seam) ------------------------------------------


def _entries(store: CheckpointStore, folder: str) -> list[tuple[int, str, str, bool]]:
    """(seq, kind, entry name, complete) of every checkpoint-named entry, ascending by seq."""
    found = []
    for name, complete in store.entries(folder):
        if m := _DIR_NAME.match(name):
            found.append((int(m[1]), m[2], name, complete))
    return sorted(found)


_Payload = tuple[str, dict[str, torch.Tensor], int | None]  # file name, tensors, table index


def _write_checkpoint(
    store: CheckpointStore, folder: str, seq: int, kind: str, payloads: Sequence[_Payload], header: dict[str, Any]
) -> tuple[Manifest, str, str]:
    """Write the files, then the manifest; returns (manifest, manifest sha256, location). Raises StorageError."""
    entry = f"{seq:08d}-{kind}"
    start = time.perf_counter()
    files, records = [], []
    for name, tensors, table in payloads:
        data = safetensors_bytes(tensors)
        files.append((name, data))
        rows = int(next(iter(tensors.values())).shape[0])
        records.append(FileRecord(name, hashlib.sha256(data).hexdigest(), len(data), rows, table))
    # The stored write_s is the serialisation time (the persist time is known only once the manifest is
    # written); the returned manifest's is the whole write, serialising and persisting.
    manifest = Manifest(seq=seq, kind=kind, files=records, write_s=time.perf_counter() - start, **header)
    raw = manifest.to_json()
    store.write_entry(folder, entry, files, raw)
    manifest = dataclasses.replace(manifest, write_s=time.perf_counter() - start)
    return manifest, hashlib.sha256(raw).hexdigest(), store.location(folder, entry)


def _prune(store: CheckpointStore, folder: str, keep: int) -> list[str]:
    """Keep the newest ``keep`` full saves and everything after the oldest of them; drop older
    checkpoints and manifest-less entries older than the newest complete one. Returns removed names."""
    entries = _entries(store, folder)
    fulls = [seq for seq, kind, _, complete in entries if complete and kind in ("full", "dense")]
    complete = [seq for seq, _, _, c in entries if c]
    if not fulls:
        return []
    cutoff = sorted(fulls)[-keep:][0]
    removed = []
    for seq, _, name, is_complete in entries:
        if seq < cutoff or (not is_complete and seq < complete[-1]):
            store.remove_entry(folder, name)
            removed.append(name)
    return removed


def _next_seq(store: CheckpointStore, folder: str) -> int:
    try:
        return max((seq for seq, *_ in _entries(store, folder)), default=0) + 1
    except (OSError, StorageError):
        return 1


def _read_manifest(store: CheckpointStore, folder: str, entry: str) -> Manifest:
    return Manifest.from_json(store.read(folder, entry, MANIFEST_NAME))


def _verify(store: CheckpointStore, folder: str, entry: str, manifest: Manifest) -> str | None:
    """None if every file is present, of the right size and checksum; else why not (for the report)."""
    for record in manifest.files:
        size = store.size(folder, entry, record.name)
        if size is None:
            return f"corrupt (missing {record.name})"
        if size != record.bytes:
            return f"corrupt (size mismatch in {record.name}: {size} != {record.bytes} bytes)"
        if store.sha256(folder, entry, record.name) != record.sha256:
            return f"corrupt (sha256 mismatch in {record.name})"
    return None
