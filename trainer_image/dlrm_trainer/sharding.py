"""Hash sharding of embedding rows over embedding servers: row ``id`` lives on server ``id % M``
at local row ``id // M``. Modulo keeps every shard's share of every table within one row and
scatters the Zipf head (the generator permutes ids) across shards."""

from __future__ import annotations

import torch


def shard_of(ids: torch.Tensor, num_shards: int) -> torch.Tensor:
    return torch.remainder(ids, num_shards)


def local_index(ids: torch.Tensor, num_shards: int) -> torch.Tensor:
    return torch.div(ids, num_shards, rounding_mode="floor")


def local_rows(rows: int, num_shards: int, shard: int) -> int:
    """Rows of a table of ``rows`` rows that shard ``shard`` owns."""
    return max(0, (rows - shard + num_shards - 1) // num_shards)


def global_ids(local: torch.Tensor, num_shards: int, shard: int) -> torch.Tensor:
    return local * num_shards + shard
