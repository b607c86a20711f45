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
    """The rows of one shard: weights, row-wise Adagrad state and per-row access counters (for MFU)."""

    weights: list[torch.Tensor]
    adagrad: list[torch.Tensor]
    access: list[torch.Tensor]

    @classmethod
    def initialise(cls, table_rows: list[int], dim: int, num_shards: int, shard: int, seed: int) -> ShardTables:
        weights, adagrad, access = [], [], []
        for t, rows in enumerate(table_rows):
            n = local_rows(rows, num_shards, shard)
            # TorchRec's default EmbeddingBag init: U(-sqrt(1/rows), sqrt(1/rows)).
            gen = torch.Generator().manual_seed(seed * 1_000_003 + t * 131 + shard)
            bound = math.sqrt(1.0 / rows)
            weights.append(torch.empty(n, dim).uniform_(-bound, bound, generator=gen))
            adagrad.append(torch.zeros(n))
            access.append(torch.zeros(n, dtype=torch.int32))
        return cls(weights, adagrad, access)

    @property
    def num_rows(self) -> int:
        return sum(w.shape[0] for w in self.weights)

    @property
    def nbytes(self) -> int:
        return sum(w.nbytes + a.nbytes for w, a in zip(self.weights, self.adagrad, strict=True))


def split_by_table(flat: torch.Tensor, counts: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.split(flat, [int(c) for c in counts.tolist()]))


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

    def _locals(self, ids: torch.Tensor, table: int) -> torch.Tensor:
        local = local_index(ids, self.num_shards)
        if local.numel() and (int(local.max()) >= self.tables.weights[table].shape[0] or int(local.min()) < 0):
            raise IndexError(f"table {table}: id out of range for shard {self.shard}")
        return local

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

    def lookup(self, ids: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        self._checked(ids, counts)
        parts = split_by_table(ids, counts)
        rows = [self.tables.weights[t].index_select(0, self._locals(p, t)) for t, p in enumerate(parts)]
        return torch.cat(rows) if rows else torch.empty(0)

    def update(self, ids: torch.Tensor, counts: torch.Tensor, grads: torch.Tensor) -> None:
        """Row-wise Adagrad (one accumulator per row, as in TorchRec's fused row-wise Adagrad).
        ``ids`` must be unique within each table (the trainer deduplicates)."""
        self._checked(ids, counts, grads)
        # Every id mapped (and range-checked) before any row changes: a bad request changes nothing.
        local_parts = [self._locals(p, t) for t, p in enumerate(split_by_table(ids, counts))]
        grad_parts = split_by_table(grads, counts)
        with self.lock:
            for t, (local, g) in enumerate(zip(local_parts, grad_parts, strict=True)):
                if local.numel() == 0:
                    continue
                state = self.tables.adagrad[t]
                state.index_add_(0, local, g.pow(2).mean(dim=1))
                scale = self.learning_rate / (state.index_select(0, local).sqrt_() + ADAGRAD_EPS)
                self.tables.weights[t].index_add_(0, local, -g * scale.unsqueeze(1))
                self.tables.access[t].index_add_(0, local, torch.ones_like(local, dtype=torch.int32))
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
