"""The synthetic Criteo generator: determinism, sharding, skew, the teacher's calibration, and
that a model can actually learn from it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dlrm_trainer.data import (
    Batch,
    SyntheticCriteo,
    feature_keys,
    num_global_batches,
    shard_num_batches,
    shard_num_samples,
)
from dlrm_trainer.metrics import auc

SMALL_ROWS = [1000, 500, 2000, 50, 1000, 300, 1000, 4000]


@pytest.fixture(scope="module")
def small() -> SyntheticCriteo:
    return SyntheticCriteo(SMALL_ROWS, num_dense=13, seed=3)


@pytest.fixture(scope="module")
def default() -> SyntheticCriteo:
    return SyntheticCriteo([100_000] * 26)


def assert_same(a: Batch, b: Batch) -> None:
    assert torch.equal(a.dense, b.dense)
    assert torch.equal(a.sparse, b.sparse)
    assert torch.equal(a.labels, b.labels)


def test_batch_shapes_types_and_ranges(small: SyntheticCriteo) -> None:
    batch = small.batch("train", 0, 512)
    assert len(batch) == 512
    assert batch.dense.dtype == torch.float32 and batch.dense.shape == (512, 13)
    assert batch.sparse.dtype == torch.int64 and batch.sparse.shape == (512, len(SMALL_ROWS))
    assert batch.labels.dtype == torch.float32 and batch.labels.shape == (512,)
    assert set(batch.labels.unique().tolist()) <= {0.0, 1.0}
    assert (batch.dense >= 0).all()
    # log1p-normalised counts: small values, and the raw counts are integers.
    raw = small.raw_batch("train", 0, 512)
    assert np.array_equal(raw.counts, np.floor(raw.counts))
    assert torch.allclose(batch.dense, torch.log1p(torch.from_numpy(raw.counts)))
    assert (raw.counts == 0).mean() > 0.05  # many exact zeros, as in Criteo
    for f, rows in enumerate(SMALL_ROWS):
        assert int(batch.sparse[:, f].min()) >= 0 and int(batch.sparse[:, f].max()) < rows


def test_batches_are_deterministic_and_order_independent(small: SyntheticCriteo) -> None:
    other = SyntheticCriteo(SMALL_ROWS, num_dense=13, seed=3)
    later = [small.batch("train", i, 256) for i in (5, 1, 3)]
    for i, batch in zip((5, 1, 3), later, strict=True):
        assert_same(batch, other.batch("train", i, 256))
    assert not torch.equal(small.batch("train", 1, 256).sparse, small.batch("train", 2, 256).sparse)
    assert not torch.equal(small.batch("train", 1, 256).sparse, small.batch("eval", 1, 256).sparse)
    reseeded = SyntheticCriteo(SMALL_ROWS, num_dense=13, seed=4)
    assert not torch.equal(small.batch("train", 1, 256).sparse, reseeded.batch("train", 1, 256).sparse)


@pytest.mark.parametrize(("num_shards", "batch_size", "total"), [(3, 300, 10_000), (4, 256, 1024), (5, 100, 250)])
def test_shards_partition_the_pass_exactly(
    small: SyntheticCriteo, num_shards: int, batch_size: int, total: int
) -> None:
    seen: dict[int, Batch] = {}
    sizes = []
    for shard in range(num_shards):
        batches = list(small.train_batches(shard, num_shards, 0, batch_size, total))
        assert [cursor for cursor, _ in batches] == list(range(1, len(batches) + 1))
        assert len(batches) == shard_num_batches(shard, num_shards, batch_size, total)
        assert sum(len(b) for _, b in batches) == shard_num_samples(shard, num_shards, batch_size, total)
        sizes.append(len(batches))
        for cursor, batch in batches:
            index = shard + (cursor - 1) * num_shards
            assert index not in seen
            seen[index] = batch
    assert max(sizes) - min(sizes) <= 1
    assert sorted(seen) == list(range(num_global_batches(batch_size, total)))
    assert sum(len(b) for b in seen.values()) == total
    # Every global batch is the generator's batch of that index (the last one cut short).
    for index, batch in seen.items():
        assert_same(batch, small.batch("train", index, batch_size).head(len(batch)))


def test_shard_without_batches_and_bad_arguments(small: SyntheticCriteo) -> None:
    assert list(small.train_batches(3, 4, 0, 100, 250)) == []
    assert shard_num_samples(3, 4, 100, 250) == 0
    with pytest.raises(ValueError):
        list(small.train_batches(4, 4, 0, 100, 250))
    with pytest.raises(ValueError):
        list(small.train_batches(0, 1, -1, 100, 250))


def test_resume_from_cursor_yields_the_same_batches(small: SyntheticCriteo) -> None:
    full = list(small.train_batches(1, 3, 0, 128, 5000))
    resumed = list(small.train_batches(1, 3, 4, 128, 5000))
    assert [c for c, _ in resumed] == [c for c, _ in full[4:]]
    for (_, a), (_, b) in zip(resumed, full[4:], strict=True):
        assert_same(a, b)
    assert list(small.train_batches(1, 3, len(full), 128, 5000)) == []


def test_eval_stream_is_held_out_and_exact(small: SyntheticCriteo) -> None:
    batches = list(small.eval_batches(1000, 384))
    assert [len(b) for b in batches] == [384, 384, 232]
    assert_same(batches[1], small.batch("eval", 1, 384))


def test_ids_are_zipf_skewed_and_hot_ids_scattered(default: SyntheticCriteo) -> None:
    ids = torch.cat([default.batch("train", i, 4096).sparse[:, 0] for i in range(12)]).numpy()
    counts = np.bincount(ids, minlength=100_000)
    top = np.sort(counts)[::-1]
    top_share = top[:1000].sum() / counts.sum()
    assert top_share > 0.6  # top 1% of ids get most occurrences (truncated Zipf 1.1: ~0.75)
    hottest = np.argsort(counts)[::-1][:200]
    # The permutation scatters hot ids: not the low ids, and balanced over id % num_servers.
    assert hottest.max() > 50_000
    for servers in (2, 4):
        per_server = np.bincount(hottest % servers, minlength=servers)
        assert per_server.min() > 200 / servers * 0.6


def test_teacher_is_calibrated(default: SyntheticCriteo) -> None:
    result = default.teacher_evaluation(100_000, 4096)
    assert 0.77 <= result.auc <= 0.81
    assert 0.23 <= result.ctr <= 0.27
    assert result.normalized_entropy < 0.9
    assert default.teacher_auc(100_000, 4096) == pytest.approx(result.auc)


def test_teacher_probability_matches_generation(small: SyntheticCriteo) -> None:
    raw = small.raw_batch("eval", 2, 1000)
    probability = small.teacher_probability(raw.to_batch())
    assert torch.allclose(probability, torch.from_numpy(raw.probability), atol=1e-6)
    # Labels are Bernoulli(teacher): their mean tracks the mean probability.
    labels = torch.cat([small.batch("eval", i, 4096).labels for i in range(4)])
    probs = torch.cat([small.teacher_probability(small.batch("eval", i, 4096)) for i in range(4)])
    assert abs(labels.mean().item() - probs.mean().item()) < 0.02


def test_teacher_scale_strengthens_the_signal_not_the_ctr() -> None:
    weak = SyntheticCriteo(SMALL_ROWS, seed=1, teacher_scale=0.5)
    strong = SyntheticCriteo(SMALL_ROWS, seed=1, teacher_scale=2.0)
    weak_auc, strong_auc = weak.teacher_auc(20_000, 4096), strong.teacher_auc(20_000, 4096)
    assert strong_auc > weak_auc + 0.05
    for generator in (weak, strong):
        ctr = torch.cat([b.labels for b in generator.eval_batches(20_000, 4096)]).mean().item()
        assert 0.22 <= ctr <= 0.28


def test_huge_tables_use_affine_permutation_and_power_law_tail() -> None:
    rows = [2**31 - 1, 50_000_000, 1000]
    generator = SyntheticCriteo(rows, num_dense=3, seed=2, zipf_exponent=1.05)
    raw = generator.raw_batch("train", 0, 20_000)
    for f, size in enumerate(rows):
        assert raw.ids[:, f].min() >= 0 and raw.ids[:, f].max() < size
    # Ranks past the tabulated head are sampled (the tail of a 2**31-row Zipf 1.05 is most of it).
    assert len(np.unique(raw.ids[:, 0])) > 5000
    probability = generator.teacher_probability(raw.to_batch())
    assert torch.allclose(probability, torch.from_numpy(raw.probability), atol=1e-6)


def test_to_kjt_is_single_hot_feature_major(small: SyntheticCriteo) -> None:
    from torchrec.modules.embedding_configs import EmbeddingBagConfig
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    batch = small.batch("train", 0, 64)
    keys = feature_keys(len(SMALL_ROWS))
    assert keys[0] == "cat_0" and keys[-1] == f"cat_{len(SMALL_ROWS) - 1}"
    kjt = batch.to_kjt(keys)
    assert kjt.keys() == keys
    assert kjt.stride() == 64
    assert torch.equal(kjt.lengths(), torch.ones(64 * len(SMALL_ROWS), dtype=torch.int32))
    for f, key in enumerate(keys):
        assert torch.equal(kjt[key].values(), batch.sparse[:, f])
    with pytest.raises(ValueError):
        batch.to_kjt(keys[:-1])

    tables = [
        EmbeddingBagConfig(name=f"t_{key}", embedding_dim=4, num_embeddings=rows, feature_names=[key])
        for key, rows in zip(keys, SMALL_ROWS, strict=True)
    ]
    collection = EmbeddingBagCollection(tables=tables)
    pooled = collection(kjt)
    weight = collection.embedding_bags["t_cat_2"].weight
    # Sum pooling over one id is that id's row.
    assert torch.allclose(pooled["cat_2"], weight[batch.sparse[:, 2]])


def test_a_small_model_learns_the_teacher(small: SyntheticCriteo) -> None:
    """Logistic regression on dense features plus one learnt scalar per (table, id): the first-order
    part of the teacher, which a few hundred steps should pick up well above chance."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: extra intra-op threads only contend on a small machine
    try:
        _train_and_check(small)
    finally:
        torch.set_num_threads(threads)


def _train_and_check(small: SyntheticCriteo) -> None:
    torch.manual_seed(0)
    offsets = torch.tensor(np.r_[0, np.cumsum(SMALL_ROWS)[:-1]])
    id_bias = torch.nn.Embedding(sum(SMALL_ROWS), 1)
    torch.nn.init.zeros_(id_bias.weight)
    dense = torch.nn.Linear(13, 1)
    optimizer = torch.optim.Adagrad([*id_bias.parameters(), *dense.parameters()], lr=0.1)

    def logits(batch: Batch) -> torch.Tensor:
        return dense(batch.dense).squeeze(1) + id_bias(batch.sparse + offsets).sum(dim=(1, 2))

    for _, batch in small.train_batches(0, 1, 0, 256, 300 * 256):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits(batch), batch.labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    with torch.no_grad():
        eval_batches = list(small.eval_batches(20_000, 4096))
        scores = torch.cat([torch.sigmoid(logits(b)) for b in eval_batches])
        labels = torch.cat([b.labels for b in eval_batches])
    model_auc = auc(labels, scores)
    teacher_auc = small.teacher_auc(20_000, 4096)
    assert model_auc > 0.70
    assert model_auc < teacher_auc + 0.01  # the teacher is the ceiling
