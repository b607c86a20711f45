"""The DLRM from TorchRec pieces, with its embedding rows held by remote embedding servers.

Dense, interaction and over arches are ``torchrec.models.dlrm``'s; inputs are single-hot id
matrices (what a TorchRec ``KeyedJaggedTensor`` with all lengths 1 holds). What TorchRec's
``EmbeddingBagCollection`` would do locally is done here by ``RemoteEmbeddings``: deduplicate ids,
fetch the rows from their shards, pool them and send the rows' gradients back. The dense
parameters live in one flat buffer so ShadowSync can snapshot and update them with single vector
operations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.models.dlrm import DenseArch, InteractionArch, OverArch

from dlrm_trainer.rpc import Client, Message
from dlrm_trainer.sharding import shard_of
from trainingjob_operator.api.spec import ModelSpec


class DenseDLRM(nn.Module):
    """DLRM without its embedding tables: (dense features, pooled embeddings) -> logits."""

    def __init__(self, spec: ModelSpec, device: torch.device | None = None) -> None:
        super().__init__()
        d, f = spec.embedding_dim, spec.sparse_features
        self.dense_arch = DenseArch(spec.dense_features, [*spec.bottom_mlp, d], device=device)
        self.inter_arch = InteractionArch(num_sparse_features=f)
        over_in = d + f + (f * (f - 1)) // 2  # dense + its dots with the F features + F choose 2
        self.over_arch = OverArch(over_in, [*spec.top_mlp, 1], device=device)

    def forward(self, dense: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """dense [B, dense_features], pooled [B, F, D] -> logits [B]."""
        x = self.dense_arch(dense)
        return self.over_arch(self.inter_arch(x, pooled)).squeeze(-1)


def flatten_parameters(module: nn.Module) -> torch.Tensor:
    """Move every parameter into one contiguous buffer and make the parameters views of it."""
    params = list(module.parameters())
    flat = torch.cat([p.detach().reshape(-1) for p in params]).contiguous()
    offset = 0
    for p in params:
        n = p.numel()
        p.data = flat[offset:offset + n].view_as(p)
        offset += n
    return flat


@dataclass
class Fetched:
    """Rows fetched for one batch: ``rows`` is a leaf whose gradient goes back to the servers."""

    rows: torch.Tensor  # [U, D], requires grad
    inverse: torch.Tensor  # [F*B]: the row of every (feature, sample), feature-major like a KJT's values
    groups: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # per shard: (positions, ids, counts)
    batch_size: int
    num_features: int


@dataclass
class PendingFetch:
    """A batch's rows on their way: ids deduplicated and grouped by shard, one lookup in flight per shard."""

    unique: int
    inverse: torch.Tensor
    groups: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    futures: list[Any]
    batch_size: int
    num_features: int


class RemoteEmbeddings:
    """Client side of the embedding servers for one trainer.

    Samples are single-hot (one id per feature, as in Criteo): the KeyedJaggedTensor TorchRec would build
    has lengths all 1, so its values are the id matrix read feature by feature and sum-pooling a bag is
    taking its one row. Both are computed from the ``[B, F]`` id matrix directly (building the KJT and
    pooling with ``embedding_bag`` cost more than the lookup itself).
    """

    def __init__(self, clients: list[Client], table_rows: list[int], dim: int) -> None:
        self.clients = clients
        self.dim = dim
        self.num_tables = len(table_rows)
        self.table_offsets = torch.tensor([0, *torch.tensor(table_rows).cumsum(0).tolist()], dtype=torch.int64)

    def _group(self, unique_keys: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        table = torch.searchsorted(self.table_offsets, unique_keys, right=True) - 1
        ids = unique_keys - self.table_offsets[table]
        shard = shard_of(ids, len(self.clients))
        groups = []
        for s in range(len(self.clients)):
            positions = torch.nonzero(shard == s).squeeze(1)
            counts = torch.bincount(table[positions], minlength=self.num_tables)
            groups.append((positions, ids[positions], counts))
        return groups

    def request(self, sparse: torch.Tensor) -> PendingFetch:
        """Deduplicate a batch's ids (``sparse`` [B, F]) and send every shard its lookup; returns at once."""
        batch_size, features = sparse.shape
        if features != self.num_tables:
            raise ValueError(f"expected ids for {self.num_tables} features, got {features}")
        keys = (sparse.to(torch.int64) + self.table_offsets[:-1]).t().reshape(-1)
        unique_keys, inverse = torch.unique(keys, sorted=True, return_inverse=True)
        groups = self._group(unique_keys)
        futures = [
            client.call_async("Lookup", Message({"ids": ids, "counts": counts}))
            for client, (_, ids, counts) in zip(self.clients, groups, strict=True)
        ]
        return PendingFetch(int(unique_keys.numel()), inverse, groups, futures, batch_size, features)

    def receive(self, pending: PendingFetch, device: torch.device, pin_memory: bool = False,
                non_blocking: bool = False) -> Fetched:
        """Wait for a batch's rows (a shard being replaced: retry until its deadline) and put them on ``device``."""
        rows = torch.empty(pending.unique, self.dim, pin_memory=pin_memory)
        for client, future, (positions, ids, counts) in zip(self.clients, pending.futures, pending.groups,
                                                            strict=True):
            try:
                reply = future.result()
            except Exception:  # shard unavailable: wait for its replacement (bounded)
                reply = client.call("Lookup", Message({"ids": ids, "counts": counts}))
            rows[positions] = reply.tensors["rows"]
        leaf = rows.to(device, non_blocking=non_blocking).requires_grad_(True)
        return Fetched(leaf, pending.inverse.to(device, non_blocking=non_blocking), pending.groups,
                       pending.batch_size, pending.num_features)

    def fetch(self, sparse: torch.Tensor, device: torch.device) -> Fetched:
        return self.receive(self.request(sparse), device)

    def pooled(self, fetched: Fetched) -> torch.Tensor:
        """Each (sample, feature)'s row -> [B, F, D] (sum-pooling a single-id bag)."""
        bags = F.embedding(fetched.inverse, fetched.rows)
        return bags.view(fetched.num_features, fetched.batch_size, self.dim).transpose(0, 1)

    def push_gradients(self, fetched: Fetched, grad: torch.Tensor) -> list:
        """Send each shard its rows' gradients; returns futures (the caller waits before reusing state)."""
        grad = grad.detach().cpu()
        pending = []
        for client, (positions, ids, counts) in zip(self.clients, fetched.groups, strict=True):
            if ids.numel():
                message = Message({"ids": ids, "counts": counts, "grads": grad.index_select(0, positions)})
                pending.append((client, client.call_async("Update", message), message))
        return pending

    @staticmethod
    def wait(pending: list) -> None:
        for client, future, message in pending:
            try:
                future.result()
            except Exception:  # shard being replaced: retry until its deadline
                client.call("Update", message)
