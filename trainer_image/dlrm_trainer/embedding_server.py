"""Embedding server: one hash shard of every table, row-wise Adagrad, sparse updates over gRPC.

Trainers send the unique global ids they need per table (``Lookup``) and the gradients of those
rows (``Update``). Updates are applied Hogwild-style in the server's RPC threads; a short lock
only serialises writers against each other and against checkpoint snapshots.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from dlrm_trainer.rpc import Message, Server
from dlrm_trainer.sharding import local_index, local_rows

SERVICE = "tj.EmbeddingServer"
ADAGRAD_EPS = 1e-8


@dataclass
class ShardTables:
    """The rows of one shard: weights, row-wise Adagrad state and per-row access counters (for MFU).

    Each kind of state is one buffer over all tables (``flat_*``, tables one after another) and the
    per-table tensors are views of it, so an update touches every table with one ``index_add_`` while
    checkpoints keep addressing tables one by one (loading copies into the views in place).
    """

    weights: list[torch.Tensor]
    adagrad: list[torch.Tensor]
    access: list[torch.Tensor]
    flat_weights: torch.Tensor
    flat_adagrad: torch.Tensor
    flat_access: torch.Tensor
    row_offsets: torch.Tensor  # [T + 1]: table t's rows are flat rows row_offsets[t]:row_offsets[t + 1]

    @classmethod
    def initialise(cls, table_rows: list[int], dim: int, num_shards: int, shard: int, seed: int) -> ShardTables:
        counts = [local_rows(rows, num_shards, shard) for rows in table_rows]
        offsets = torch.tensor([0, *counts], dtype=torch.int64).cumsum(0)
        total = int(offsets[-1])
        flat_weights, flat_adagrad = torch.empty(total, dim), torch.zeros(total)
        flat_access = torch.zeros(total, dtype=torch.int32)
        weights, adagrad, access = [], [], []
        for t, rows in enumerate(table_rows):
            lo, hi = int(offsets[t]), int(offsets[t + 1])
            # TorchRec's default EmbeddingBag init: U(-sqrt(1/rows), sqrt(1/rows)).
            gen = torch.Generator().manual_seed(seed * 1_000_003 + t * 131 + shard)
            bound = math.sqrt(1.0 / rows)
            weights.append(flat_weights[lo:hi].uniform_(-bound, bound, generator=gen))
            adagrad.append(flat_adagrad[lo:hi])
            access.append(flat_access[lo:hi])
        return cls(weights, adagrad, access, flat_weights, flat_adagrad, flat_access, offsets)

    @property
    def num_rows(self) -> int:
        return int(self.flat_weights.shape[0])

    @property
    def nbytes(self) -> int:
        return self.flat_weights.nbytes + self.flat_adagrad.nbytes


class EmbeddingShard:
    """The state machine behind the RPCs; usable without gRPC in tests."""

    def __init__(self, tables: ShardTables, num_shards: int, shard: int, learning_rate: float) -> None:
        self.tables = tables
        self.num_shards = num_shards
        self.shard = shard
        self.learning_rate = learning_rate
        self.lock = threading.Lock()
        self.updates = 0
        self.rows_updated = 0

    def _checked(self, ids: torch.Tensor, counts: torch.Tensor, grads: torch.Tensor | None = None) -> None:
        """A request's tensors as the trainer sends them, else ValueError (INVALID_ARGUMENT to the caller):
        ``ids`` 1-D integers, ``counts`` one non-negative count per table summing to ``len(ids)``, ``grads`` one
        row of the embedding width per id. Checked before anything is touched."""
        tables = len(self.tables.weights)
        if ids.dim() != 1 or ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"ids must be a 1-D integer tensor, got {tuple(ids.shape)} {ids.dtype}")
        if counts.dim() != 1 or counts.dtype not in (torch.int64, torch.int32) or counts.numel() != tables:
            raise ValueError(f"counts must be {tables} integers (one per table), got {tuple(counts.shape)}")
        if bool((counts < 0).any()) or int(counts.sum()) != ids.numel():
            raise ValueError(f"counts must be non-negative and sum to the {ids.numel()} ids, got {counts.tolist()}")
        if grads is not None:
            dim = int(self.tables.weights[0].shape[1]) if tables else 0
            if grads.dim() != 2 or grads.shape != (ids.numel(), dim) or not grads.is_floating_point():
                raise ValueError(f"grads must be {ids.numel()} x {dim} floats, got {tuple(grads.shape)} {grads.dtype}")

    def _flat_rows(self, ids: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Rows of the shard's flat buffers for a request's (table-grouped) global ids, range-checked per
        table: a bad id raises before anything is read or written."""
        tables = self.tables
        table = torch.repeat_interleave(torch.arange(len(tables.weights)), counts.to(torch.int64))
        local = local_index(ids.to(torch.int64), self.num_shards)
        sizes = tables.row_offsets[1:] - tables.row_offsets[:-1]
        if local.numel():
            bad = (local < 0) | (local >= sizes[table])
            if bool(bad.any()):
                t = int(table[bad.nonzero()[0, 0]])
                raise IndexError(f"table {t}: id out of range for shard {self.shard}")
        return local + tables.row_offsets[table]

    def lookup(self, ids: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        self._checked(ids, counts)
        return self.tables.flat_weights.index_select(0, self._flat_rows(ids, counts))

    def update(self, ids: torch.Tensor, counts: torch.Tensor, grads: torch.Tensor) -> None:
        """Row-wise Adagrad (one accumulator per row, as in TorchRec's fused row-wise Adagrad), every table at
        once. ``ids`` must be unique within each table (the trainer deduplicates)."""
        self._checked(ids, counts, grads)
        rows = self._flat_rows(ids, counts)  # every id mapped and range-checked before any row changes
        if rows.numel() == 0:
            return
        tables = self.tables
        grads = grads.to(tables.flat_weights.dtype)
        with self.lock:
            tables.flat_adagrad.index_add_(0, rows, grads.pow(2).mean(dim=1))
            scale = tables.flat_adagrad.index_select(0, rows).sqrt_().add_(ADAGRAD_EPS).reciprocal_()
            tables.flat_weights.index_add_(0, rows, grads * scale.mul_(-self.learning_rate).unsqueeze(1))
            tables.flat_access.index_add_(0, rows, torch.ones_like(rows, dtype=torch.int32))
            self.updates += 1
            self.rows_updated += int(ids.numel())


def _tensor(request: Message, name: str) -> torch.Tensor:
    if name not in request.tensors:
        raise ValueError(f"the request has no {name!r} tensor")
    return request.tensors[name]


def serve(shard: EmbeddingShard, host: str = "0.0.0.0", port: int = 0, workers: int = 8,
          extra: Mapping[str, Callable[[Message], Message]] | None = None) -> Server:
    def lookup(request: Message) -> Message:
        rows = shard.lookup(_tensor(request, "ids"), _tensor(request, "counts"))
        return Message({"rows": rows})

    def update(request: Message) -> Message:
        shard.update(_tensor(request, "ids"), _tensor(request, "counts"), _tensor(request, "grads"))
        return Message(meta={"updates": shard.updates})

    def stats(request: Message) -> Message:
        return Message(meta={"updates": shard.updates, "rows_updated": shard.rows_updated,
                             "rows": shard.tables.num_rows, "bytes": shard.tables.nbytes, "time": time.time()})

    server = Server(SERVICE, {"Lookup": lookup, "Update": update, "Stats": stats, **(extra or {})}, host, port,
                    workers)
    server.start()
    return server
