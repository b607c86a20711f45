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

    def lookup(self, ids: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        parts = split_by_table(ids, counts)
        rows = [self.tables.weights[t].index_select(0, self._locals(p, t)) for t, p in enumerate(parts)]
        return torch.cat(rows) if rows else torch.empty(0)

    def update(self, ids: torch.Tensor, counts: torch.Tensor, grads: torch.Tensor) -> None:
        """Row-wise Adagrad (one accumulator per row, as in TorchRec's fused row-wise Adagrad).
        ``ids`` must be unique within each table (the trainer deduplicates)."""
        id_parts = split_by_table(ids, counts)
        grad_parts = split_by_table(grads, counts)
        with self.lock:
            for t, (p, g) in enumerate(zip(id_parts, grad_parts, strict=True)):
                if p.numel() == 0:
                    continue
                local = self._locals(p, t)
                state = self.tables.adagrad[t]
                state.index_add_(0, local, g.pow(2).mean(dim=1))
                scale = self.learning_rate / (state.index_select(0, local).sqrt_() + ADAGRAD_EPS)
                self.tables.weights[t].index_add_(0, local, -g * scale.unsqueeze(1))
                self.tables.access[t].index_add_(0, local, torch.ones_like(local, dtype=torch.int32))
            self.updates += 1
            self.rows_updated += int(ids.numel())


def serve(shard: EmbeddingShard, host: str = "0.0.0.0", port: int = 0, workers: int = 8,
          extra: Mapping[str, Callable[[Message], Message]] | None = None) -> Server:
    def lookup(request: Message) -> Message:
        rows = shard.lookup(request.tensors["ids"], request.tensors["counts"])
        return Message({"rows": rows})

    def update(request: Message) -> Message:
        t = request.tensors
        shard.update(t["ids"], t["counts"], t["grads"])
        return Message(meta={"updates": shard.updates})

    def stats(request: Message) -> Message:
        return Message(meta={"updates": shard.updates, "rows_updated": shard.rows_updated,
                             "rows": shard.tables.num_rows, "bytes": shard.tables.nbytes, "time": time.time()})

    server = Server(SERVICE, {"Lookup": lookup, "Update": update, "Stats": stats, **(extra or {})}, host, port,
                    workers)
    server.start()
    return server
