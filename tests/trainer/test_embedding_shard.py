import math

import pytest
import torch

from dlrm_trainer.embedding_server import ADAGRAD_EPS, EmbeddingShard, ShardTables
from dlrm_trainer.sharding import global_ids, local_index, local_rows, shard_of


@pytest.mark.parametrize(("rows", "shards"), [(10, 3), (7, 7), (5, 8), (100_000, 2)])
def test_shards_partition_every_table_exactly(rows: int, shards: int) -> None:
    assert sum(local_rows(rows, shards, s) for s in range(shards)) == rows
    ids = torch.arange(rows)
    for s in range(shards):
        mine = ids[shard_of(ids, shards) == s]
        assert torch.equal(global_ids(local_index(mine, shards), shards, s), mine)
        if mine.numel():
            assert int(local_index(mine, shards).max()) == local_rows(rows, shards, s) - 1


def test_initialisation_is_deterministic_and_bounded() -> None:
    a = ShardTables.initialise([100, 40], 4, 2, 1, seed=3)
    b = ShardTables.initialise([100, 40], 4, 2, 1, seed=3)
    assert [w.shape for w in a.weights] == [torch.Size([50, 4]), torch.Size([20, 4])]
    assert all(torch.equal(x, y) for x, y in zip(a.weights, b.weights, strict=True))
    assert float(a.weights[0].abs().max()) <= math.sqrt(1 / 100)


def test_lookup_returns_rows_of_the_right_tables_in_request_order() -> None:
    tables = ShardTables.initialise([10, 10], 3, 2, 0, seed=0)
    shard = EmbeddingShard(tables, num_shards=2, shard=0, learning_rate=0.1)
    ids = torch.tensor([4, 0, 8, 2])  # table 0: ids 4, 0; table 1: ids 8, 2
    rows = shard.lookup(ids, torch.tensor([2, 2]))
    expected = torch.cat([tables.weights[0][[2, 0]], tables.weights[1][[4, 1]]])
    assert torch.equal(rows, expected)


def test_lookup_rejects_ids_of_another_shard_range() -> None:
    shard = EmbeddingShard(ShardTables.initialise([10], 3, 2, 0, seed=0), 2, 0, 0.1)
    with pytest.raises(IndexError):
        shard.lookup(torch.tensor([40]), torch.tensor([1]))


def test_update_is_row_wise_adagrad() -> None:
    tables = ShardTables.initialise([6], 2, 1, 0, seed=0)
    before = tables.weights[0].clone()
    shard = EmbeddingShard(tables, 1, 0, learning_rate=0.5)
    grad = torch.tensor([[1.0, 3.0], [2.0, 2.0]])
    shard.update(torch.tensor([1, 4]), torch.tensor([2]), grad)
    state = grad.pow(2).mean(dim=1)  # one accumulator per row
    expected = before.clone()
    expected[[1, 4]] -= 0.5 * grad / (state.sqrt() + ADAGRAD_EPS).unsqueeze(1)
    assert torch.allclose(tables.weights[0], expected)
    assert torch.allclose(tables.adagrad[0][[1, 4]], state)
    assert tables.access[0].tolist() == [0, 1, 0, 0, 1, 0]
    # Untouched rows keep their values exactly (sparse update).
    assert torch.equal(tables.weights[0][[0, 2, 3, 5]], before[[0, 2, 3, 5]])
    # A second update sees the accumulated state: smaller steps.
    shard.update(torch.tensor([1]), torch.tensor([1]), grad[:1])
    assert torch.allclose(tables.adagrad[0][1], 2 * state[0])
