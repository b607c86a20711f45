"""The Criteo TSV reader: parsing of missing fields, hashing, sharding, resume, and the round trip
through files written from the synthetic generator; what is held out for evaluation (never a
training sample), natural file order, each trainer reading only its own part, and epochs."""

from __future__ import annotations

import gzip
import logging
import random
import subprocess
import sys
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch

from dlrm_trainer.data import Batch, CriteoTSV, SyntheticCriteo, criteo, hash_category, write_synthetic_tsv
from dlrm_trainer.data.criteo import FilePart, data_files, layout, natural_key, tail_offset
from dlrm_trainer.runtime import ConfigError
from dlrm_trainer.sources import CriteoSource, SyntheticSource, common_cursor_limit, data_source, epoch_batches
from trainingjob_operator.api.spec import TrainingJobSpec

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


def cat(batches: list[Batch]) -> Batch:
    return Batch(torch.cat([b.dense for b in batches]), torch.cat([b.sparse for b in batches]),
                 torch.cat([b.labels for b in batches]))


def test_round_trip_of_synthetic_files(written: Path, generator: SyntheticCriteo) -> None:
    reader = CriteoTSV(written, ROWS, num_sparse=4)
    assert [p.name for p in reader.files] == ["part_0.tsv", "part_1.tsv"]
    batches = list(reader.batches(batch_size=100))
    assert [cursor for cursor, _ in batches] == list(range(1, 24))
    for index, (_, batch) in enumerate(batches):
        # Bit-identical: integer counts and hex ids survive the text format exactly.
        assert_same(batch, generator.batch("train", index, 100))


def test_shards_limit_and_resume(written: Path, generator: SyntheticCriteo) -> None:
    # Changed by design: trainers no longer take every third global batch of one shared stream; each
    # reads a contiguous byte range of the uncompressed files, and the budget is dealt out evenly.
    reader = CriteoTSV(written, ROWS, num_sparse=4)
    assert reader.sharding(3) == "bytes"
    stream = cat([generator.batch("train", index, 100) for index in range(23)])
    parts = [list(reader.batches(100, shard=shard, num_shards=3)) for shard in range(3)]
    for part in parts:
        assert [cursor for cursor, _ in part] == list(range(1, len(part) + 1))
        assert all(len(batch) == 100 for _, batch in part[:-1])
    # The parts, one after the other, are the whole stream: every line once, in order.
    assert_same(cat([batch for part in parts for _, batch in part]), stream)

    limit = 1750  # shares of 584, 583 and 583 samples
    for shard, part in enumerate(parts):
        limited = list(reader.batches(100, shard=shard, num_shards=3, limit=limit))
        assert len(limited) == reader.batches_per_pass(100, shard, 3, limit) == 6
        assert sum(len(b) for _, b in limited) == [584, 583, 583][shard]
        assert_same(cat([b for _, b in limited]), cat([b for _, b in part]).head(584 if shard == 0 else 583))

    full = parts[2]
    resumed = list(reader.batches(100, shard=2, num_shards=3, start_cursor=3))
    assert [c for c, _ in resumed] == list(range(4, len(full) + 1))
    for (_, a), (_, b) in zip(resumed, full[3:], strict=True):
        assert_same(a, b)
    # Resuming past the end of the budget yields nothing.
    assert list(reader.batches(100, shard=2, num_shards=3, start_cursor=6, limit=limit)) == []


def test_positional_fallback_for_too_few_gzip_files(
    written: Path, generator: SyntheticCriteo, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two gzip files for three trainers: every trainer reads the whole stream and keeps global batches
    shard, shard + 3, ... (the partition every trainer used before), and says why."""
    for path in sorted(written.iterdir()):
        with gzip.open(tmp_path / f"{path.stem}.gz", "wb") as out:
            out.write(path.read_bytes())
    reader = CriteoTSV(tmp_path, ROWS, num_sparse=4)
    assert reader.sharding(3) == "positional" and reader.sharding(2) == "files"
    limit = 1750  # 17 full global batches of 100 and one of 50
    seen: dict[int, Batch] = {}
    with caplog.at_level(logging.WARNING, logger="dlrm_trainer.data.criteo"):
        for shard in range(3):
            batches = list(reader.batches(100, shard=shard, num_shards=3, limit=limit))
            assert len(batches) == reader.batches_per_pass(100, shard, 3, limit)
            for cursor, batch in batches:
                seen[shard + (cursor - 1) * 3] = batch
    assert "gzip cannot be sought" in caplog.text
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
    """Lines of other shards' batches may be garbage: only the owned batches are parsed.

    Changed by design: positional skipping is now only the fallback for gzip data with fewer files
    than trainers, so the file is compressed; uncompressed data is split into byte ranges instead
    (``test_each_trainer_parses_only_its_own_range``)."""
    good = criteo_line("1", ["4"], ["ff"])
    lines = [good, good, "garbage\n", "garbage\n", good, good]
    path = tmp_path / "mixed.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("".join(lines))
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


# --- what is held out, and which trainer reads what ----------------------------------------------------

BIG = [2**31 - 1]  # one table so large that a line's token, its number, is its id


def numbered_line(number: int) -> str:
    """A line whose token is its number (its identity); the count varies the line's length, so byte
    ranges end anywhere inside lines."""
    return criteo_line(str(number % 2), [str(number * 7919 % 10 ** (1 + number % 6))], [f"{number:08x}"])


def write_numbered(path: Path, numbers: range | list[int], blank_every: int = 0) -> Path:
    text = "".join(numbered_line(n) + ("\n" if blank_every and n % blank_every == 0 else "") for n in numbers)
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as handle:
            handle.write(text)
    else:
        path.write_text(text)
    return path


def numbers(batches: Iterable[tuple[int, Batch]]) -> list[int]:
    return [int(i) for _, batch in batches for i in batch.sparse[:, 0]]


def split_numbers(split: criteo.Layout, num_shards: int, eval_samples: int) -> tuple[list[list[int]], list[int]]:
    """What each of ``num_shards`` trainers trains on, and what is evaluated on."""
    train = CriteoTSV(list(split.train), BIG, num_dense=1, num_sparse=1)
    held_out = CriteoTSV(list(split.eval), BIG, num_dense=1, num_sparse=1)
    parts = [numbers(train.batches(7, shard, num_shards)) for shard in range(num_shards)]
    return parts, numbers(held_out.batches(7, limit=eval_samples))


def test_natural_order_of_day_files(tmp_path: Path) -> None:
    for name in ["day_10", "day_2", "day_1", "day_0", "day_11", "day_9", ".hidden"]:
        write_numbered(tmp_path / name, [0])
    (tmp_path / "subdir").mkdir()
    expected = ["day_0", "day_1", "day_2", "day_9", "day_10", "day_11"]
    assert [p.name for p in data_files(tmp_path)] == expected
    assert [p.name for p in CriteoTSV(tmp_path, BIG, num_dense=1, num_sparse=1).files] == expected
    assert sorted(["b10", "a2", "b9", "a10"], key=natural_key) == ["a2", "a10", "b9", "b10"]
    assert natural_key("day_01") != natural_key("day_1")  # equal numbers: the name decides


@pytest.mark.parametrize("num_shards", [1, 3])
def test_the_last_day_of_a_directory_is_held_out(tmp_path: Path, num_shards: int) -> None:
    for day in range(11):  # day_10 is the last in natural order (in name order it would be day_9)
        write_numbered(tmp_path / f"day_{day}", range(20 * day, 20 * day + 20))
    split = layout(tmp_path, None, eval_samples=15)
    assert [p.path.name for p in split.train] == [f"day_{d}" for d in range(10)]
    assert [p.path.name for p in split.eval] == ["day_10"]
    parts, held_out = split_numbers(split, num_shards, eval_samples=15)
    trained = [n for part in parts for n in part]
    assert not set(trained) & set(held_out)  # no training sample is evaluated on
    assert trained == list(range(200)) and held_out == list(range(200, 215))


@pytest.mark.parametrize("suffix", [".tsv", ".gz"])
@pytest.mark.parametrize("num_shards", [1, 2, 3])
def test_the_tail_of_a_single_file_is_held_out(tmp_path: Path, suffix: str, num_shards: int) -> None:
    path = write_numbered(tmp_path / f"day_0{suffix}", range(500), blank_every=97)  # blank lines are skipped
    split = layout(path, None, eval_samples=120)
    ((train,),), ((held,),) = [split.train], [split.eval]
    assert train.path == held.path == path and train.stop == held.start
    parts, held_out = split_numbers(split, num_shards, eval_samples=120)
    trained = [n for part in parts for n in part]
    assert not set(trained) & set(held_out)
    # Each line trained on once (a single gzip file is shared positionally: interleaved batches).
    assert sorted(trained) == list(range(380)) and held_out == list(range(380, 500))
    if suffix == ".tsv":  # an uncompressed tail is found from the end: a byte offset of a line start
        assert path.read_bytes()[: held.start].count(b"\n") == 380 + len(range(0, 380, 97))


def test_eval_path_is_held_out_and_may_not_overlap_path(tmp_path: Path) -> None:
    train_dir, eval_dir = tmp_path / "train", tmp_path / "eval"
    train_dir.mkdir()
    eval_dir.mkdir()
    write_numbered(train_dir / "day_0", range(50))
    write_numbered(train_dir / "day_1", range(50, 100))
    write_numbered(eval_dir / "day_2", range(100, 130))
    split = layout(train_dir, eval_dir, eval_samples=1000)
    parts, held_out = split_numbers(split, 2, eval_samples=1000)
    trained = [n for part in parts for n in part]
    assert not set(trained) & set(held_out)
    assert trained == list(range(100)) and held_out == list(range(100, 130))

    (eval_dir / "link").symlink_to(train_dir / "day_1")
    overlaps: list[Path | str] = [train_dir, train_dir / "day_1", eval_dir, str(train_dir) + "/"]
    for overlapping in overlaps:
        with pytest.raises(ValueError, match=r"data\.evalPath .*leave it unset to hold out the tail"):
            layout(train_dir, overlapping, eval_samples=10)
    with pytest.raises(ValueError, match=r"data\.evalPath"):
        layout(train_dir / "day_1", train_dir / "day_1", eval_samples=10)
    with pytest.raises(FileNotFoundError):
        layout(train_dir, tmp_path / "missing", eval_samples=10)


def test_eval_samples_must_leave_something_to_train_on(tmp_path: Path) -> None:
    for suffix in (".tsv", ".gz"):
        path = write_numbered(tmp_path / f"small{suffix}", range(10))
        with pytest.raises(ValueError, match=r"data\.evalSamples \(10\) leaves nothing to train on"):
            layout(path, None, eval_samples=10)
        split = layout(path, None, eval_samples=9)
        assert split_numbers(split, 1, eval_samples=9) == ([[0]], list(range(1, 10)))


@pytest.mark.parametrize("block", [1, 2, 5, 64, 1 << 20])
def test_tail_offset_reads_backwards_in_blocks(tmp_path: Path, block: int) -> None:
    for text in [b"a\nbb\n\nccc\r\n  \ndddd\n\n", b"a\nbb\nccc", b"\n\na\n", b"x"]:
        path = tmp_path / "f.tsv"
        path.write_bytes(text)
        starts, position = [], 0
        for line in text.splitlines(keepends=True):
            if line.strip():
                starts.append(position)
            position += len(line)
        for lines in range(1, len(starts) + 2):
            expected = starts[-lines] if lines < len(starts) else None
            assert tail_offset(path, lines, block) == expected, (text, lines)


def test_a_single_gzip_file_is_counted_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_numbered(tmp_path / "day_0.gz", range(30))
    counted: list[Path] = []
    count = criteo.count_lines

    def counting(p: Path) -> int:
        counted.append(p)
        return count(p)

    monkeypatch.setattr(criteo, "count_lines", counting)
    split = layout(path, None, eval_samples=5)
    assert counted == [path]
    assert (split.train, split.eval) == ((FilePart(path, stop=25),), (FilePart(path, start=25),))


@pytest.mark.parametrize("num_shards", [1, 2, 3, 5, 8])
def test_byte_ranges_give_every_line_to_exactly_one_trainer(tmp_path: Path, num_shards: int) -> None:
    write_numbered(tmp_path / "part_0", range(37), blank_every=11)
    write_numbered(tmp_path / "part_1", range(37, 40))
    write_numbered(tmp_path / "part_2", range(40, 90))
    split = layout(tmp_path / "part_2", None, eval_samples=20)  # part_2's tail is held out
    reader = CriteoTSV([tmp_path / "part_0", tmp_path / "part_1", *split.train], BIG, num_dense=1, num_sparse=1)
    assert reader.sharding(num_shards) == "bytes"
    parts = [numbers(reader.batches(4, shard, num_shards)) for shard in range(num_shards)]
    # Contiguous ranges in order: concatenated they are every training line exactly once.
    assert [n for part in parts for n in part] == list(range(70))
    # Ranges of about equal size in bytes.
    assert max(map(len, parts)) - min(map(len, parts)) <= 70 // num_shards // 2 + 2


def test_each_trainer_parses_only_its_own_range(tmp_path: Path) -> None:
    good = criteo_line("1", ["4"], ["ff"])
    path = tmp_path / "mixed.tsv"
    path.write_text(good * 50 + "garbag\n" * 50)  # lines of 7 bytes: the second half is the second range
    reader = CriteoTSV(path, [100], num_dense=1, num_sparse=1)
    assert sum(len(b) for _, b in reader.batches(8, shard=0, num_shards=2)) == 50
    with pytest.raises(ValueError, match="label must be 0 or 1"):
        list(reader.batches(8, shard=1, num_shards=2))


def test_gzip_files_are_dealt_out_whole(tmp_path: Path) -> None:
    for day in range(5):
        write_numbered(tmp_path / f"day_{day}.gz", range(10 * day, 10 * day + 10))
    reader = CriteoTSV(tmp_path, BIG, num_dense=1, num_sparse=1)
    assert reader.sharding(2) == "files" and reader.sharding(5) == "files" and reader.sharding(6) == "positional"
    assert numbers(reader.batches(3, 0, 2)) == [*range(10), *range(20, 30), *range(40, 50)]
    assert numbers(reader.batches(3, 1, 2)) == [*range(10, 20), *range(30, 40)]
    # A budget of 25 samples: 13 for trainer 0, 12 for trainer 1, ending its pass early if its files run out.
    assert numbers(reader.batches(3, 0, 2, limit=25)) == [*range(10), 20, 21, 22]
    assert [reader.batches_per_pass(3, shard, 2, 25) for shard in (0, 1)] == [5, 4]
    assert numbers(reader.batches(3, 1, 2, start_cursor=2, limit=25)) == [16, 17, 18, 19, 30, 31]
    assert len(numbers(reader.batches(3, 0, 2, limit=200))) == 30  # the data ends first


# --- epochs ------------------------------------------------------------------------------------------


def test_epochs_repeat_the_pass_and_cursors_count_on() -> None:
    source = SyntheticSource(ROWS, num_dense=13, seed=3)
    per_epoch = source.batches_per_epoch(1, 2, 100, 950)  # global batches 1, 3, 5, 7, 9 (the last one 50)
    assert per_epoch == 5
    one = list(source.train_batches(1, 2, 0, 100, 950))
    three = list(epoch_batches(source, 1, 2, 0, 100, 950, epochs=3))
    assert [c for c, _ in three] == list(range(1, 16))
    for epoch in range(3):
        for (_, a), (_, b) in zip(three[5 * epoch : 5 * epoch + 5], one, strict=True):
            assert_same(a, b)  # every epoch trains on the same samples
    resumed = list(epoch_batches(source, 1, 2, 7, 100, 950, epochs=3))  # epoch 1, its third batch
    assert [c for c, _ in resumed] == list(range(8, 16))
    for (_, a), (_, b) in zip(resumed, three[7:], strict=True):
        assert_same(a, b)
    assert list(epoch_batches(source, 1, 2, 15, 100, 950, epochs=3)) == []
    assert common_cursor_limit(source, 2, 100, 950, epochs=3) == 15  # shard 0 has 5 batches too
    assert common_cursor_limit(source, 3, 100, 950, epochs=2) == 6  # shards get 4, 3 and 3 batches


def criteo_spec(path: Path, **data: object) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate({
        "model": {"denseFeatures": 1, "sparseFeatures": 1, "tableRows": BIG},
        "data": {"source": "criteo", "path": str(path), "batchSize": 4, **data},
    })


def test_criteo_source_epochs_never_touch_the_held_out_tail(tmp_path: Path) -> None:
    path = write_numbered(tmp_path / "train.tsv", range(100))
    spec = criteo_spec(path, trainSamples=60, evalSamples=30, epochs=2)
    assert spec.data.planned_samples == 120
    source = data_source(spec)
    assert isinstance(source, CriteoSource)
    held_out = [int(i) for b in source.eval_batches(spec.data.eval_samples, 8) for i in b.sparse[:, 0]]
    assert held_out == list(range(70, 100))
    seen = []
    for shard in range(3):
        per_epoch = source.batches_per_epoch(shard, 3, 4, 60)
        assert per_epoch == 5  # 20 samples each
        batches = list(epoch_batches(source, shard, 3, 0, 4, 60, epochs=2))
        assert [c for c, _ in batches] == list(range(1, 11))
        first, second = numbers(batches[:5]), numbers(batches[5:])
        assert first == second and len(first) == 20
        seen += first
    assert len(set(seen)) == 60 and not set(seen) & set(held_out)

    # Too short a part ends its epoch early; the next epoch starts at the cursor it would have had.
    short = data_source(criteo_spec(path, trainSamples=150, evalSamples=30, epochs=2))
    cursors = [c for c, _ in epoch_batches(short, 0, 2, 0, 4, 150, epochs=2)]
    assert short.batches_per_epoch(0, 2, 4, 150) == 19 and len(cursors) == 18
    assert cursors == [*range(1, 10), *range(20, 29)]


def test_criteo_source_reports_bad_layouts_as_configuration_errors(tmp_path: Path) -> None:
    path = write_numbered(tmp_path / "train.tsv", range(10))
    with pytest.raises(ConfigError, match=r"data\.evalPath"):
        CriteoSource(criteo_spec(path, evalPath=str(path)))
    with pytest.raises(ConfigError, match=r"data\.evalSamples"):
        CriteoSource(criteo_spec(path, evalSamples=10))


def test_epochs_in_the_spec() -> None:
    data = TrainingJobSpec.model_validate({}).data
    assert data.epochs == 1 and data.planned_samples == data.train_samples
    assert TrainingJobSpec.model_validate({"data": {"epochs": 3, "trainSamples": 10}}).data.planned_samples == 30
    with pytest.raises(pydantic.ValidationError, match="epochs"):
        TrainingJobSpec.model_validate({"data": {"epochs": 0}})


# --- parsing -----------------------------------------------------------------------------------------


def reference_parse(lines: list[str], rows: list[int], num_dense: int, num_sparse: int) -> Batch:
    """Field by field, the way the reader parsed before it was vectorised."""
    width = 1 + num_dense + num_sparse
    labels, dense, sparse = [], [], []
    for line in lines:
        fields = line.rstrip("\r\n").split("\t")
        fields += [""] * (width - len(fields))
        labels.append(1.0 if fields[0].strip() == "1" else 0.0)
        dense.append([float(value) if value else 0.0 for value in fields[1 : 1 + num_dense]])
        sparse.append([hash_category(token, r) for token, r in zip(fields[1 + num_dense : width], rows, strict=True)])
    counts = np.array(dense, dtype=np.float32).reshape(len(lines), num_dense)
    np.maximum(counts, 0.0, out=counts)
    np.nan_to_num(counts, copy=False, nan=0.0, posinf=0.0)
    return Batch(torch.from_numpy(np.log1p(counts)), torch.tensor(sparse, dtype=torch.int64).reshape(len(lines), -1),
                 torch.tensor(labels, dtype=torch.float32))


def odd_line(rng: random.Random) -> str:
    def count() -> str:
        if rng.random() < 0.6:
            return str(rng.randrange(10 ** rng.randint(1, 10)))
        return rng.choice(["", "-2", "-0", "nan", "inf", "-inf", "1.5", "1e3", " 3", "+4", "1_0", "0017",
                           "123456789012345", "1234567890123456789", "Infinity"])

    def token() -> str:
        if rng.random() < 0.5:
            return f"{rng.getrandbits(32):08x}"
        if rng.random() < 0.5:
            return "".join(rng.choice("0123456789abcdefABCDEF") for _ in range(rng.randint(0, 20)))
        return rng.choice(["ZZ", "0x1f", " ab", "-1a", "+ff", "1_f", "é", "g", "ffffffffffffffff", "\r", "a\x00"])

    fields = [rng.choice(["0", "1", " 1", "0 "]), *(count() for _ in range(3)), *(token() for _ in range(4))]
    if rng.random() < 0.1:
        fields = fields[: rng.randint(1, len(fields))]  # truncated
    elif rng.random() < 0.05:
        fields += ["extra"]
    return "\t".join(fields) + rng.choice(["\n", "\r\n", ""])


def test_parse_is_bit_identical_to_field_by_field_conversion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [1000, 50, 70_000, 2**31 - 1]
    rng = random.Random(0)
    parser = CriteoTSV(write_numbered(tmp_path / "any.tsv", [0]), rows, num_dense=3, num_sparse=4)
    monkeypatch.setattr(criteo, "PARSE_ROWS", 16)  # batches span several chunks too
    for _ in range(200):
        lines = [odd_line(rng) for _ in range(rng.randint(1, 60))]
        expected = reference_parse(lines, rows, 3, 4)
        for batch in (parser.parse(lines), parser.parse([line.encode() for line in lines])):
            assert_same(batch, expected)
            assert batch.dense.numpy().tobytes() == expected.dense.numpy().tobytes()  # -0.0 included


def test_bad_count_is_reported(tmp_path: Path) -> None:
    parser = CriteoTSV(write_numbered(tmp_path / "any.tsv", [0]), [10], num_dense=2, num_sparse=1)
    with pytest.raises(ValueError, match=r"line 1 of batch: count 1 must be a number, got 'x'"):
        parser.parse([criteo_line("1", ["1", "2"], ["a"]), criteo_line("0", ["1", "x"], ["a"])])
    with pytest.raises(ValueError, match="line break"):
        parser.parse(["1\t2\n3\t4\ta\n"])

