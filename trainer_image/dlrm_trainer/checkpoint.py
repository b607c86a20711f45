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

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

if TYPE_CHECKING:
    from trainingjob_operator.api.spec import CheckpointSpec

log = logging.getLogger("dlrm_trainer.checkpoint")

Kind = Literal["full", "mfu", "ssu"]
MANIFEST_NAME = "MANIFEST.json"
FORMAT = "tj-checkpoint/1"
DENSE_DIR = "dense"
_STALLS_KEPT = 1000  # BackgroundCheckpointer keeps this many recent stall measurements
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
    """
    with lock:
        start = time.perf_counter()
        weights = [_copy_rows(w, r) for w, r in zip(tables.weights, rows_per_table, strict=True)]
        adagrad = [_copy_rows(a, r) for a, r in zip(tables.adagrad, rows_per_table, strict=True)]
        for access, r in zip(tables.access, rows_per_table, strict=True):
            if r.numel() == access.shape[0]:
                access.zero_()
            else:
                access.index_fill_(0, r, 0)
        stall_s = time.perf_counter() - start
    dim = int(tables.weights[0].shape[1]) if tables.weights else 0
    return SnapshotData([r.clone() for r in rows_per_table], weights, adagrad,
                        [int(w.shape[0]) for w in tables.weights], dim, stall_s, time.time())


def _copy_rows(source: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``source[rows]``; every row (``rows`` being sorted and unique, as :func:`select_rows` returns them)
    is a plain clone, which is two orders of magnitude faster than ``index_select`` over ``arange`` on CPU
    and keeps full saves' stall short."""
    return source.clone() if rows.numel() == source.shape[0] else source.index_select(0, rows)


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


# -- writer ---------------------------------------------------------------------------------------------


class CheckpointWriter:
    """Writes one shard's checkpoints under ``<root>/shard-<shard>/`` and publishes pointers and costs.

    ``save`` is synchronous: :class:`BackgroundCheckpointer` calls it from its own thread.
    """

    def __init__(
        self, root: Path | str, shard: int, coord: CheckpointCoordination | None = None, keep: int = 3
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.root = Path(root)
        self.shard = shard
        self.directory = self.root / f"shard-{shard}"
        self.coord = coord
        self.keep = keep
        self._seq = _next_seq(self.directory)
        self._last_seq: int | None = None
        self._base_seq: int | None = None

    def save(self, snapshot: SnapshotData, kind: str, progress_marker: int | None) -> CheckpointInfo:
        """Persist ``snapshot`` as a ``kind`` checkpoint; raises :class:`StorageError` if storage fails.

        A partial (mfu/ssu) builds on the last full save made by this writer; a writer that made none
        raises ValueError (a replacement's first save is full, see :func:`choose_kind`).
        """
        if kind not in ("full", "mfu", "ssu"):
            raise ValueError(f"checkpoint kind {kind!r}: expected full, mfu or ssu")
        if kind != "full" and self._base_seq is None:
            raise ValueError(f"shard {self.shard}: a {kind} checkpoint needs a full one first")
        seq, self._seq = self._seq, self._seq + 1
        base = seq if kind == "full" else self._base_seq
        header = {"shard": self.shard, "base": base, "parent": None if kind == "full" else self._last_seq,
                  "created_unix": time.time(), "progress": progress_marker, "table_rows": snapshot.table_rows,
                  "dim": snapshot.dim, "stall_s": snapshot.stall_s}
        manifest, checksum, path = _write_checkpoint(self.directory, seq, kind, _table_payloads(snapshot, kind), header)
        self._last_seq, self._base_seq = seq, base
        info = CheckpointInfo(manifest.id, seq, kind, path, manifest.rows_saved, manifest.nbytes, f"sha256:{checksum}",
                              manifest.created_unix, progress_marker, snapshot.stall_s, manifest.write_s)
        info = dataclasses.replace(info, pointer_published=self._publish(info))
        try:
            _prune(self.directory, self.keep)
        except OSError as e:
            log.warning("shard %d: checkpoint retention failed: %s", self.shard, e)
        return info

    def _publish(self, info: CheckpointInfo) -> bool:
        """Pointer and costs to Redis; best effort, the manifest on storage is already the truth."""
        if self.coord is None:
            return False
        try:
            self.coord.record_cost("o_save", info.stall_s)
            self.coord.record_cost("write", info.write_s)
            self.coord.set_checkpoint_pointer(self.shard, info.pointer())
        except Exception as e:
            log.warning("shard %d: checkpoint %s saved, but Redis pointer not published: %s", self.shard, info.id, e)
            return False
        return True


def _table_payloads(snap: SnapshotData, kind: str) -> list[_Payload]:
    payloads: list[_Payload] = []
    for t, (rows, w, a) in enumerate(zip(snap.rows, snap.weights, snap.adagrad, strict=True)):
        tensors = {"weights": w.contiguous(), "adagrad": a.contiguous()}
        if kind != "full":
            tensors["rows"] = rows.to(torch.int64).contiguous()
        elif not torch.equal(rows, torch.arange(snap.table_rows[t], dtype=rows.dtype)):
            # A full file has no ``rows`` tensor: its order must be 0..n-1, or a restore would scramble rows.
            raise ValueError(f"table {t}: a full save needs rows 0..{snap.table_rows[t] - 1} in order")
        payloads.append((f"table-{t}.safetensors", tensors, t))
    return payloads


# -- background checkpointer ------------------------------------------------------------------------


class SnapshotWriter(Protocol):
    def save(self, snapshot: SnapshotData, kind: str, progress_marker: int | None) -> CheckpointInfo: ...


@dataclasses.dataclass
class CheckpointerStats:
    saves: int = 0
    failures: int = 0
    last_error: str | None = None
    last: CheckpointInfo | None = None
    stall_s: list[float] = dataclasses.field(default_factory=list)
    bytes_written: int = 0


def tuned_interval(spec: CheckpointSpec, coord: CheckpointCoordination | None) -> Callable[[], float]:
    """The interval the checkpointer follows: the spec's fixed one, else Redis's tuned one, else the spec's
    initial one (also while Redis is unreachable, so an outage never stops checkpointing)."""

    def read() -> float:
        if spec.interval_seconds is not None:
            return spec.interval_seconds
        try:
            tuned = coord.interval() if coord is not None else None
        except Exception as e:
            log.warning("tuned checkpoint interval unreadable, using %ss: %s", spec.initial_interval_seconds, e)
            tuned = None
        return tuned if tuned is not None and tuned > 0 else spec.initial_interval_seconds

    return read


class BackgroundCheckpointer:
    """A daemon thread that checkpoints a shard every interval without holding up its RPC threads.

    Each cycle: pick the kind (:func:`choose_kind`), rank rows from a lock-free copy of the access
    counters, :func:`snapshot` under the shard lock (the only stall), write with ``writer`` in this
    thread. The next cycle starts only after the write, so saves never pile up (CheckFreq's rule).
    Saves start ``interval_source()`` seconds apart; the interval is re-read every ``reread_s`` while
    waiting, so a re-planned (shorter) interval takes effect without waiting out the old one.
    A failed save (e.g. :class:`StorageError`) is counted, reported through ``on_error`` and the stats,
    and makes the next save full: the failed snapshot already reset counters of rows that are now
    in no checkpoint, so the next partial could not be trusted to contain them.
    """

    def __init__(self, shard: LockedShard, writer: SnapshotWriter, spec: CheckpointSpec,
                 interval_source: Callable[[], float], progress: Callable[[], int],
                 on_error: Callable[[Exception], None] | None = None, seed: int = 0, reread_s: float = 5.0,
                 periodic: Callable[[], bool] = lambda: True) -> None:
        self.shard = shard
        self.periodic = periodic  # False while checkpoint rounds own the saves (full recovery, see rounds)
        self.reread_s = reread_s
        self.writer = writer
        self.spec = spec
        self.interval_source = interval_source
        self.progress = progress
        self.on_error = on_error
        self._rng = torch.Generator().manual_seed(seed)
        self._partials_since_full: int | None = None
        self._stats = CheckpointerStats()
        self._stats_lock = threading.Lock()
        self._cycle_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._final = False
        self._thread = threading.Thread(target=self._run, name="checkpointer", daemon=True)

    def start(self) -> BackgroundCheckpointer:
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def request_save(self) -> None:
        """Save now instead of at the end of the current interval."""
        self._wake.set()

    def stop(self, final: bool = False, timeout_s: float | None = None) -> None:
        """Stop the thread; with ``final``, it makes one last save first (graceful shutdown)."""
        self._final = final
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        elif final:
            self.save_once()

    def stats(self) -> CheckpointerStats:
        with self._stats_lock:
            return dataclasses.replace(self._stats, stall_s=list(self._stats.stall_s))

    def _interval(self) -> float:
        fallback = self.spec.interval_seconds or self.spec.initial_interval_seconds
        try:
            value = float(self.interval_source())
        except Exception as e:
            log.warning("checkpoint interval source failed, using %ss: %s", fallback, e)
            return fallback
        return value if value > 0 and math.isfinite(value) else fallback

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stopping:
            due_in = last + self._interval() - time.monotonic()
            if due_in > 0 and not self._wake.wait(min(due_in, self.reread_s)):
                continue  # not due yet: re-read the interval
            self._wake.clear()
            if self._stopping:
                break
            last = time.monotonic()
            if self._periodic():
                self.save_once()
        if self._final:
            self.save_once()

    def _periodic(self) -> bool:
        try:
            return bool(self.periodic())
        except Exception as e:  # Redis unreachable: keep saving on the interval
            log.warning("checkpoint mode unreadable, saving on the interval: %s", e)
            return True

    def write_full(self, snap: SnapshotData, progress_marker: int) -> CheckpointInfo | None:
        """Write a full snapshot taken elsewhere (a checkpoint round's); serialised with the periodic saves."""
        with self._cycle_lock:
            try:
                info = self.writer.save(snap, "full", progress_marker)
            except Exception as e:
                self._failed(e)
                return None
            self._partials_since_full = 0
            with self._stats_lock:
                self._stats.saves += 1
                self._stats.last = info
                self._stats.stall_s = [*self._stats.stall_s[-(_STALLS_KEPT - 1):], snap.stall_s]
                self._stats.bytes_written += info.bytes
            return info

    def save_once(self) -> CheckpointInfo | None:
        """One cycle in the calling thread; returns None when the save failed (see the stats)."""
        with self._cycle_lock:
            kind = choose_kind(self.spec.strategy, self._partials_since_full, self.spec.full_every)
            try:
                marker = self._progress_marker()
                counts = [a.clone() for a in self.shard.tables.access]  # racy read is fine: ranking only
                rows = select_rows(kind, counts, self.spec.hot_fraction, self.spec.sample_fraction, self._rng)
                snap = snapshot(self.shard.tables, rows, self.shard.lock)
                info = self.writer.save(snap, kind, marker)
            except Exception as e:
                self._failed(e)
                return None
            self._partials_since_full = 0 if kind == "full" else (self._partials_since_full or 0) + 1
            with self._stats_lock:
                self._stats.saves += 1
                self._stats.last = info
                self._stats.stall_s = [*self._stats.stall_s[-(_STALLS_KEPT - 1):], snap.stall_s]
                self._stats.bytes_written += info.bytes
            return info

    def _progress_marker(self) -> int | None:
        try:
            return int(self.progress())
        except Exception as e:
            log.warning("progress unreadable; checkpoint saved without a progress marker: %s", e)
            return None

    def _failed(self, error: Exception) -> None:
        self._partials_since_full = None
        with self._stats_lock:
            self._stats.failures += 1
            self._stats.last_error = f"{type(error).__name__}: {error}"
        log.error("checkpoint failed, training continues: %s", error, exc_info=not isinstance(error, StorageError))
        if self.on_error is not None:
            try:
                self.on_error(error)
            except Exception:
                log.exception("checkpoint on_error callback failed")


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


def _shape_problem(manifest: Manifest, tables: ShardState) -> str | None:
    have = [int(w.shape[0]) for w in tables.weights]
    dim = int(tables.weights[0].shape[1]) if tables.weights else 0
    if manifest.table_rows != have or manifest.dim != dim:
        return f"incompatible (tables {manifest.table_rows} x {manifest.dim}, shard has {have} x {dim})"
    if sorted(f.table for f in manifest.files if f.table is not None) != list(range(len(have))):
        return "corrupt (manifest does not list one file per table)"
    return None


def _apply(path: Path, manifest: Manifest, tables: ShardState) -> int:
    """Copy a verified checkpoint into the tables; returns rows written."""
    for record in manifest.files:
        t = record.table
        assert t is not None
        with safe_open(str(path / record.name), framework="pt") as f:
            weights, adagrad = f.get_tensor("weights"), f.get_tensor("adagrad")
            if manifest.kind == "full":
                tables.weights[t].copy_(weights)
                tables.adagrad[t].copy_(adagrad)
            else:
                rows = f.get_tensor("rows")
                tables.weights[t].index_copy_(0, rows, weights)
                tables.adagrad[t].index_copy_(0, rows, adagrad)
    return manifest.rows_saved


def _check(path: Path, tables: ShardState) -> tuple[Manifest | None, str | None]:
    try:
        manifest = _read_manifest(path)
    except (OSError, ValueError, TypeError, KeyError) as e:
        return None, f"unreadable manifest ({type(e).__name__}: {e})"
    problem = _shape_problem(manifest, tables) or _verify(path, manifest)
    return manifest, problem


def load_latest(
    root: Path | str, shard: int, tables: ShardState, coord: CheckpointCoordination | None = None,
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
    entries = _entries(Path(root) / f"shard-{shard}")
    skipped: list[Skipped] = []
    chosen: tuple[int, Manifest, Path] | None = None
    for seq, kind, path, complete in reversed(entries):
        if only is not None and path.name != only:
            continue
        if complete and kind == "full":
            manifest, problem = _check(path, tables)
            if problem is None and manifest is not None:
                chosen = (seq, manifest, path)
                break
            skipped.append(Skipped(path.name, problem or "unusable"))
    loaded: list[str] = []
    rows = 0
    progress: int | None = None
    if chosen is not None:
        seq0, manifest0, path0 = chosen
        rows = _apply(path0, manifest0, tables)
        loaded.append(manifest0.id)
        progress = manifest0.progress
        if only is None:
            rows, progress = _apply_partials(entries, seq0, tables, loaded, skipped, rows, progress)
        for access in tables.access:
            access.zero_()
    duration = time.perf_counter() - start
    if coord is not None and loaded:
        try:
            coord.record_cost("o_load", duration)
        except Exception as e:
            log.warning("shard %d: o_load not recorded: %s", shard, e)
    incomplete = tuple(p.name for _, _, p, complete in entries if not complete)
    return LoadReport(shard, tuple(loaded), tuple(sorted(skipped, key=lambda s: s.id, reverse=True)), incomplete,
                      progress, rows, duration)


def _apply_partials(entries: list[tuple[int, str, Path, bool]], base_seq: int, tables: ShardState, loaded: list[str],
                    skipped: list[Skipped], rows: int, progress: int | None) -> tuple[int, int | None]:
    last, broken = base_seq, None
    for seq, kind, path, complete in entries:
        if seq <= base_seq or not complete or kind == "full":
            broken = broken or (path.name if seq > base_seq and complete else None)
            continue
        if broken is not None:
            skipped.append(Skipped(path.name, f"not applied (follows unusable {broken})"))
            continue
        manifest, problem = _check(path, tables)
        if problem is None and manifest is not None and manifest.parent != last:
            problem = f"not applied (its parent {manifest.parent} was not restored)"
        if problem is not None or manifest is None:
            skipped.append(Skipped(path.name, problem or "unusable"))
            broken = path.name
            continue
        rows += _apply(path, manifest, tables)
        loaded.append(manifest.id)
        last, progress = seq, manifest.progress
    return rows, progress


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
