"""The one batch type every data source produces and every trainer consumes.

Samples are single-hot (exactly one id per categorical feature, as in Criteo), so a dense
``[B, num_sparse]`` id matrix is both the cheapest representation to generate and to ship between
threads; the jagged form torchrec wants is derived only at the point of use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor


def feature_keys(num_sparse: int) -> list[str]:
    """Names of the categorical features, shared by data sources, embedding configs and checkpoints."""
    if num_sparse < 1:
        raise ValueError(f"num_sparse must be >= 1, got {num_sparse}")
    return [f"cat_{i}" for i in range(num_sparse)]


def num_global_batches(batch_size: int, total_samples: int) -> int:
    """Batches in one pass over ``total_samples`` samples (the last one may be short)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if total_samples < 0:
        raise ValueError(f"total_samples must be >= 0, got {total_samples}")
    return -(-total_samples // batch_size)


def shard_num_batches(shard: int, num_shards: int, batch_size: int, total_samples: int) -> int:
    """Batches that trainer ``shard`` consumes in one pass: the cursor value at which it is done.

    Every data source deals global batch ``b`` to shard ``b % num_shards``, so progress, lost-sample
    accounting and resume all reduce to this one number per shard.
    """
    check_shard(shard, num_shards)
    total = num_global_batches(batch_size, total_samples)
    return max(0, -(-(total - shard) // num_shards))


def shard_num_samples(shard: int, num_shards: int, batch_size: int, total_samples: int) -> int:
    """Samples that trainer ``shard`` consumes in one pass (the sum over shards is ``total_samples``)."""
    count = shard_num_batches(shard, num_shards, batch_size, total_samples)
    if count == 0:
        return 0
    last = shard + (count - 1) * num_shards
    return (count - 1) * batch_size + min(batch_size, total_samples - last * batch_size)


def check_shard(shard: int, num_shards: int) -> None:
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"shard must be in [0, num_shards), got shard={shard}, num_shards={num_shards}")


@dataclass(frozen=True)
class Batch:
    """One mini-batch.

    ``dense`` is already normalised (log1p of the raw counts) so that a model never sees raw
    heavy-tailed counts, whichever source produced the batch.
    """

    dense: torch.Tensor  # float32 [B, num_dense]
    sparse: torch.Tensor  # int64 [B, num_sparse], sparse[:, f] in [0, rows[f])
    labels: torch.Tensor  # float32 [B], 0.0 or 1.0

    def __post_init__(self) -> None:
        # Shape mistakes otherwise surface far away, as a cryptic error inside an embedding kernel.
        if self.dense.dim() != 2 or self.sparse.dim() != 2 or self.labels.dim() != 1:
            raise ValueError(
                f"expected dense [B, D], sparse [B, F], labels [B]; got {tuple(self.dense.shape)}, "
                f"{tuple(self.sparse.shape)}, {tuple(self.labels.shape)}"
            )
        size = self.labels.shape[0]
        if self.dense.shape[0] != size or self.sparse.shape[0] != size:
            raise ValueError(
                f"batch sizes differ: dense {self.dense.shape[0]}, sparse {self.sparse.shape[0]}, labels {size}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_dense(self) -> int:
        return int(self.dense.shape[1])

    @property
    def num_sparse(self) -> int:
        return int(self.sparse.shape[1])

    def head(self, size: int) -> Batch:
        """The first ``size`` samples; used to cut the final short batch out of a full one so that a
        sample's content never depends on how many samples were requested in total."""
        if size >= len(self):
            return self
        return Batch(self.dense[:size], self.sparse[:size], self.labels[:size])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(
            self.dense.to(device, non_blocking=non_blocking),
            self.sparse.to(device, non_blocking=non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
        )

    def to_kjt(self, keys: list[str]) -> KeyedJaggedTensor:
        """The sparse features as torchrec expects them: feature-major values, every length 1.

        torchrec is imported here, not at module level, because it costs seconds to import and
        processes that only generate or parse data (embedding servers, tools) never need it.
        """
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

        if len(keys) != self.num_sparse:
            raise ValueError(f"{len(keys)} keys for {self.num_sparse} sparse features")
        values = self.sparse.t().contiguous().view(-1)
        lengths = torch.ones(values.shape[0], dtype=torch.int32, device=values.device)
        return KeyedJaggedTensor(keys=list(keys), values=values, lengths=lengths, stride=len(self))
