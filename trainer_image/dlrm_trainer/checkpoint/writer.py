"""Writing checkpoints: the writer (one shard's directory) and the background checkpointer thread."""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch

from dlrm_trainer.checkpoint.format import (
    _STALLS_KEPT,
    CheckpointCoordination,
    CheckpointInfo,
    LockedShard,
    StorageError,
    _next_seq,
    _Payload,
    _prune,
    _write_checkpoint,
)
from dlrm_trainer.checkpoint.selection import choose_kind, select_rows
from dlrm_trainer.checkpoint.snapshot import SnapshotData, snapshot
from dlrm_trainer.checkpoint.store import CheckpointStore, open_store
from trainingjob_operator.coordination import Fenced

if TYPE_CHECKING:
    from trainingjob_operator.api.spec import CheckpointSpec

log = logging.getLogger("dlrm_trainer.checkpoint")
_IDLE_POLL_S = 0.2  # a due save of a shard with no new updates looks again this often


# -- writer ---------------------------------------------------------------------------------------------


class CheckpointWriter:
    """Writes one shard's checkpoints under ``<root>/shard-<shard>/`` (a directory or an ``s3://`` location,
    see :mod:`~dlrm_trainer.checkpoint.store`) and publishes pointers and costs.

    ``save`` is synchronous: :class:`BackgroundCheckpointer` calls it from its own thread.
    """

    def __init__(
        self, root: Path | str | CheckpointStore, shard: int, coord: CheckpointCoordination | None = None,
        keep: int = 3,
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.store = open_store(root)
        self.shard = shard
        self.folder = f"shard-{shard}"
        self.coord = coord
        self.keep = keep
        self._seq = _next_seq(self.store, self.folder)
        self._last_seq: int | None = None
        self._base_seq: int | None = None
        self._saved_since_base = 0  # updates the partial saves since the base full hold

    def save(self, snapshot: SnapshotData, kind: str, progress_marker: int | None) -> CheckpointInfo:
        """Persist ``snapshot`` as a ``kind`` checkpoint; raises :class:`StorageError` if storage fails.

        A partial (mfu/ssu) builds on the last full save made by this writer; a writer that made none
        raises ValueError (a replacement's first save is full, see :func:`choose_kind`).
        """
        if kind not in ("full", "mfu", "ssu"):
            raise ValueError(f"checkpoint kind {kind!r}: expected full, mfu or ssu")
        if kind != "full" and self._base_seq is None:
            raise ValueError(f"shard {self.shard}: a {kind} checkpoint needs a full one first")
        if self.coord is not None and not self.coord.holds():
            # Replaced while away (hung): the shard is its replacement's; a save would put a stale shard on storage.
            raise Fenced(f"shard {self.shard}: this incarnation was replaced; not saving")
        seq, self._seq = self._seq, self._seq + 1
        base = seq if kind == "full" else self._base_seq
        header = {"shard": self.shard, "base": base, "parent": None if kind == "full" else self._last_seq,
                  "created_unix": time.time(), "progress": progress_marker, "table_rows": snapshot.table_rows,
                  "dim": snapshot.dim, "stall_s": snapshot.stall_s, "access_saved": snapshot.access_saved,
                  "access_pending": snapshot.access_pending}
        manifest, checksum, location = _write_checkpoint(self.store, self.folder, seq, kind,
                                                         _table_payloads(snapshot, kind), header)
        self._last_seq, self._base_seq = seq, base
        self._saved_since_base = 0 if kind == "full" else self._saved_since_base + snapshot.access_saved
        counted = self._saved_since_base + snapshot.access_pending
        info = CheckpointInfo(manifest.id, seq, kind, location, manifest.rows_saved, manifest.nbytes,
                              f"sha256:{checksum}", manifest.created_unix, progress_marker, snapshot.stall_s,
                              manifest.write_s, uncovered=snapshot.access_pending / counted if counted else 0.0)
        info = dataclasses.replace(info, pointer_published=self._publish(info))
        try:
            _prune(self.store, self.folder, self.keep)
        except (OSError, StorageError) as e:
            log.warning("shard %d: checkpoint retention failed: %s", self.shard, e)
        return info

    def _publish(self, info: CheckpointInfo) -> bool:
        """Pointer and costs to Redis; best effort, the manifest on storage is already the truth."""
        if self.coord is None:
            return False
        try:
            kind = "full" if info.kind == "full" else "partial"
            self.coord.record_cost(f"stall_{kind}", info.stall_s)
            self.coord.record_cost(f"write_{kind}", info.write_s)
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

    The schedule belongs to the job, not to this process: ``last_saved_unix`` is when the shard's newest
    checkpoint was taken (what a replacement restored; None: there is none), and the first save is due one
    interval after it. A replacement whose checkpoint is already older than the interval saves as soon as it
    has taken updates: a server that lives shorter than one interval would otherwise never save (issue #9:
    80 restarts, 0 saves). A shard with no update since its last save is not saved again (there is nothing
    new to keep); it is saved as soon as it takes one.

    A failed save (e.g. :class:`StorageError`) is counted, reported through ``on_error`` and the stats,
    and makes the next save full: the failed snapshot already reset counters of rows that are now
    in no checkpoint, so the next partial could not be trusted to contain them.
    """

    def __init__(self, shard: LockedShard, writer: SnapshotWriter, spec: CheckpointSpec,
                 interval_source: Callable[[], float], progress: Callable[[], int],
                 on_error: Callable[[Exception], None] | None = None, seed: int = 0, reread_s: float = 5.0,
                 periodic: Callable[[], bool] = lambda: True, last_saved_unix: float | None = None) -> None:
        self.shard = shard
        self.periodic = periodic  # False while checkpoint rounds own the saves (full recovery, see rounds)
        self.reread_s = reread_s
        self.writer = writer
        self.spec = spec
        self.interval_source = interval_source
        self.progress = progress
        self.on_error = on_error
        self.last_saved_unix = last_saved_unix
        self._unsaved = False  # a save failed: its snapshot reset counters of rows that are in no checkpoint
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
        # The job's clock: the last save happened (time.time() - last_saved_unix) seconds ago.
        last = (-math.inf if self.last_saved_unix is None
                else time.monotonic() - max(0.0, time.time() - self.last_saved_unix))
        while not self._stopping:
            due_in = last + self._interval() - time.monotonic()
            if due_in > 0 and not self._wake.wait(min(due_in, self.reread_s)):
                continue  # not due yet: re-read the interval
            requested = self._wake.is_set()
            self._wake.clear()
            if self._stopping:
                break
            if not requested and not self._has_updates():
                self._wake.wait(min(self.reread_s, _IDLE_POLL_S))  # due, but nothing new to save yet
                continue
            last = time.monotonic()
            if self._periodic():
                self.save_once()
        if self._final:
            self.save_once()

    def _has_updates(self) -> bool:
        """Any row updated since it was last saved (a racy, lock-free read: a miss waits one poll)."""
        return self._unsaved or any(bool(access.any()) for access in self.shard.tables.access)

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
            self._unsaved = False
            self._count(info, snap)
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
            self._unsaved = False
            self._count(info, snap)
            return info

    def _count(self, info: CheckpointInfo, snap: SnapshotData) -> None:
        with self._stats_lock:
            self._stats.saves += 1
            self._stats.last = info
            self._stats.stall_s = [*self._stats.stall_s[-(_STALLS_KEPT - 1):], snap.stall_s]
            self._stats.bytes_written += info.bytes

    def _progress_marker(self) -> int | None:
        try:
            return int(self.progress())
        except Exception as e:
            log.warning("progress unreadable; checkpoint saved without a progress marker: %s", e)
            return None

    def _failed(self, error: Exception) -> None:
        self._partials_since_full = None
        self._unsaved = True
        with self._stats_lock:
            self._stats.failures += 1
            self._stats.last_error = f"{type(error).__name__}: {error}"
        log.error("checkpoint failed, training continues: %s", error, exc_info=not isinstance(error, StorageError))
        if self.on_error is not None:
            try:
                self.on_error(error)
            except Exception:
                log.exception("checkpoint on_error callback failed")
