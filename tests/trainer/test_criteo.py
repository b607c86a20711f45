"""The Criteo TSV reader: parsing of missing fields, hashing, sharding, resume, and the round trip
through files written from the synthetic generator."""

from __future__ import annotations

import gzip
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from dlrm_trainer.data import Batch, CriteoTSV, SyntheticCriteo, hash_category, write_synthetic_tsv

ROWS = [1000, 50, 70_000, 3000]


def criteo_line(label: str, dense: list[str], sparse: list[str]) -> str:
    return "\t".join([label, *dense, *sparse]) + "\n"


def test_parse_hand_written_lines_with_missing_fields(tmp_path: Path) -> None:
    path = tmp_path / "day_0.tsv"
    path.write_text(
        # complete line
        criteo_line("1", ["1", "0", "5"], ["68fd1e64", "80e26c9b", "fb936136", "7b4723c4"])
        # missing dense values, a negative count, an empty categorical
        + criteo_line("0", ["", "-2", "3"], ["68fd1e64", "", "0000000a", "05db9164"])
        # truncated line: the trailing tabs of empty fields are gone, Windows line ending
        + "0\t7\t\t\tZZ\r\n"
    )
    reader = CriteoTSV(path, ROWS, num_dense=3, num_sparse=4)
    ((cursor, batch),) = list(reader.batches(batch_size=8))
    assert cursor == 1
    assert batch.labels.tolist() == [1.0, 0.0, 0.0]
    expected_counts = torch.tensor([[1.0, 0.0, 5.0], [0.0, 0.0, 3.0], [7.0, 0.0, 0.0]])
    assert torch.allclose(batch.dense, torch.log1p(expected_counts))
    assert batch.sparse.dtype == torch.int64
    assert batch.sparse[0].tolist() == [0x68FD1E64 % 1000, 0x80E26C9B % 50, 0xFB936136 % 70_000, 0x7B4723C4 % 3000]
    assert batch.sparse[1].tolist() == [0x68FD1E64 % 1000, 0, 10, 0x05DB9164 % 3000]
    # "ZZ" is not hex: the crc32 fallback; the remaining missing fields are id 0.
    assert batch.sparse[2].tolist() == [zlib.crc32(b"ZZ") % 1000, 0, 0, 0]


def test_bad_label_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "bad.tsv"
    path.write_text(criteo_line("x", ["1"], ["a"]))
    with pytest.raises(ValueError, match="label"):
        list(CriteoTSV(path, [10], num_dense=1, num_sparse=1).batches(4))


def test_hash_category_is_stable_across_processes() -> None:
    tokens = ["68fd1e64", "not-hex", "", "FFFFFFFF"]
    here = [hash_category(token, 12345) for token in tokens]
    assert here[2] == 0
    assert here[0] == 0x68FD1E64 % 12345 and here[3] == 0xFFFFFFFF % 12345
    assert all(0 <= value < 12345 for value in here)
    # A fresh interpreter with a different hash seed must agree (Python's hash() would not).
    code = f"from dlrm_trainer.data.criteo import hash_category; print([hash_category(t, 12345) for t in {tokens!r}])"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": "123"}
    )
    assert out.stdout.strip() == str(here)


@pytest.fixture(scope="module")
def generator() -> SyntheticCriteo:
    return SyntheticCriteo(ROWS, num_dense=13, seed=5)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, generator: SyntheticCriteo) -> Path:
    # Two files in one directory: the reader treats them as one stream in name order.
    folder = tmp_path_factory.mktemp("criteo")
    write_synthetic_tsv(folder / "part_0.tsv", generator, 1000, batch_size=100)
    first = CriteoTSV(folder / "part_0.tsv", ROWS, num_sparse=4)
    assert first.num_samples() == 1000
    # The second file continues the stream: batches 10.. of the same generator.
    path = folder / "tmp.tsv"
    write_synthetic_tsv(path, generator, 2300, batch_size=100)
    with path.open() as handle:
        lines = handle.readlines()[1000:]
    path.unlink()
    (folder / "part_1.tsv").write_text("".join(lines))
    return folder


def assert_same(a: Batch, b: Batch) -> None:
    assert torch.equal(a.labels, b.labels)
    assert torch.equal(a.sparse, b.sparse)
    assert torch.equal(a.dense, b.dense)


def test_round_trip_of_synthetic_files(written: Path, generator: SyntheticCriteo) -> None:
    reader = CriteoTSV(written, ROWS, num_sparse=4)
    assert [p.name for p in reader.files] == ["part_0.tsv", "part_1.tsv"]
    batches = list(reader.batches(batch_size=100))
    assert [cursor for cursor, _ in batches] == list(range(1, 24))
    for index, (_, batch) in enumerate(batches):
        # Bit-identical: integer counts and hex ids survive the text format exactly.
        assert_same(batch, generator.batch("train", index, 100))


def test_shards_limit_and_resume(written: Path, generator: SyntheticCriteo) -> None:
    reader = CriteoTSV(written, ROWS, num_sparse=4)
    limit = 1750  # 17 full global batches of 100 and one of 50
    seen: dict[int, Batch] = {}
    for shard in range(3):
        for cursor, batch in reader.batches(100, shard=shard, num_shards=3, limit=limit):
            seen[shard + (cursor - 1) * 3] = batch
    assert sorted(seen) == list(range(18))
    assert sum(len(b) for b in seen.values()) == limit
    assert len(seen[17]) == 50
    for index, batch in seen.items():
        assert_same(batch, generator.batch("train", index, 100).head(len(batch)))

    full = list(reader.batches(100, shard=2, num_shards=3))
    resumed = list(reader.batches(100, shard=2, num_shards=3, start_cursor=3))
    assert [c for c, _ in resumed] == [4, 5, 6, 7, 8][: len(full) - 3]
    for (_, a), (_, b) in zip(resumed, full[3:], strict=True):
        assert_same(a, b)
    # The pass ends at the end of the data: 2300 lines are 23 batches, shard 2 owns 2, 5, ..., 20.
    assert len(full) == 7


def test_offset_reads_a_tail_as_held_out_data(written: Path, generator: SyntheticCriteo) -> None:
    reader = CriteoTSV(written, ROWS, num_sparse=4)
    tail = [batch for _, batch in reader.batches(100, offset=2000)]
    assert [len(b) for b in tail] == [100, 100, 100]
    assert_same(tail[0], generator.batch("train", 20, 100))


def test_skipped_batches_are_not_parsed(tmp_path: Path) -> None:
    """Lines of other shards' batches may be garbage: only the owned batches are parsed."""
    good = criteo_line("1", ["4"], ["ff"])
    lines = [good, good, "garbage\n", "garbage\n", good, good]
    path = tmp_path / "mixed.tsv"
    path.write_text("".join(lines))
    reader = CriteoTSV(path, [100], num_dense=1, num_sparse=1)
    batches = list(reader.batches(2, shard=0, num_shards=2))
    assert [c for c, _ in batches] == [1, 2]
    assert batches[1][1].sparse.tolist() == [[0xFF % 100], [0xFF % 100]]


def test_gzip_files(tmp_path: Path, generator: SyntheticCriteo) -> None:
    path = write_synthetic_tsv(tmp_path / "day_0.gz", generator, 250, stream="eval", batch_size=100)
    with gzip.open(path, "rt") as handle:
        first = handle.readline().rstrip("\n").split("\t")
    assert len(first) == 1 + 13 + 4
    assert all(len(token) == 8 for token in first[14:])
    batches = [b for _, b in CriteoTSV(path, ROWS, num_sparse=4).batches(100)]
    assert [len(b) for b in batches] == [100, 100, 50]
    assert_same(batches[2], generator.batch("eval", 2, 100).head(50))
    assert np.isclose(batches[0].labels.mean().item(), generator.batch("eval", 0, 100).labels.mean().item())


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        CriteoTSV(tmp_path / "nope", ROWS, num_sparse=4)
    with pytest.raises(FileNotFoundError):
        CriteoTSV(tmp_path, ROWS, num_sparse=4)  # an empty directory
    with pytest.raises(ValueError):
        CriteoTSV(tmp_path, ROWS, num_sparse=3)
