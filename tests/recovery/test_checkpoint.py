"""Checkpoints of an embedding shard: selection, snapshot, atomic writes, fallback on corruption, retention."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from dlrm_trainer.checkpoint import (
    BackgroundCheckpointer,
    CheckpointInfo,
    CheckpointWriter,
    SnapshotData,
    StorageError,
    choose_kind,
    fraction_count,
    load_dense,
    load_latest,
    save_dense,
    select_rows,
    snapshot,
    tuned_interval,
)
from dlrm_trainer.checkpoint import store as checkpoint_store
from dlrm_trainer.embedding_server import EmbeddingShard, ShardTables
from tests.recovery.conftest import TABLE_ROWS, make_shard
from trainingjob_operator.api.spec import CheckpointSpec
from trainingjob_operator.coordination import Coordination

# -- helpers --------------------------------------------------------------------------------------------


def touch(shard: EmbeddingShard, per_table: dict[int, list[int]], times: int = 1) -> None:
    """Apply ``times`` sparse updates to the given rows (one-shard server: local row == id)."""
    for _ in range(times):
        ids = [i for t in range(len(TABLE_ROWS)) for i in per_table.get(t, [])]
        counts = torch.tensor([len(per_table.get(t, [])) for t in range(len(TABLE_ROWS))])
        shard.update(torch.tensor(ids, dtype=torch.int64), counts, torch.randn(len(ids), ckpt_dim(shard)))


def ckpt_dim(shard: EmbeddingShard) -> int:
    return int(shard.tables.weights[0].shape[1])


def state(tables: ShardTables) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    return [w.clone() for w in tables.weights], [a.clone() for a in tables.adagrad]


def assert_tables_equal(tables: ShardTables, expected: tuple[list[torch.Tensor], list[torch.Tensor]]) -> None:
    for t, (w, a) in enumerate(zip(*expected, strict=True)):
        assert torch.equal(tables.weights[t], w), f"weights of table {t} differ"
        assert torch.equal(tables.adagrad[t], a), f"adagrad of table {t} differ"


def save(writer: CheckpointWriter, shard: EmbeddingShard, kind: str, progress: int, hot: float = 0.5) -> CheckpointInfo:
    counts = [a.clone() for a in shard.tables.access]
    rows = select_rows(kind, counts, hot, hot, torch.Generator().manual_seed(0))
    return writer.save(snapshot(shard.tables, rows, shard.lock), kind, progress)


def fresh_tables() -> ShardTables:
    return make_shard(seed=99).tables


def flip_byte(path: Path, offset: int = -5) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def spec(**overrides: object) -> CheckpointSpec:
    return CheckpointSpec.model_validate({"minIntervalSeconds": 0.01, **overrides})


# -- pure selection -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fraction", "n", "expected"), [
    pytest.param(0.1, 30, 3, id="no-float-overshoot"),
    pytest.param(0.25, 9, 3, id="rounds-up"),
    pytest.param(1.0, 7, 7, id="all"),
    pytest.param(0.5, 0, 0, id="empty"),
])
def test_fraction_count(fraction: float, n: int, expected: int) -> None:
    assert fraction_count(fraction, n) == expected


@pytest.mark.parametrize(("counts", "fraction", "expected"), [
    pytest.param([5, 0, 5, 3, 9, 1, 0, 2], 0.5, [0, 2, 3, 4], id="top-half"),
    pytest.param([2, 2, 2, 2, 2, 2], 0.5, [0, 1, 2], id="ties-go-to-lower-index"),
    pytest.param([1, 7, 7, 0, 7], 0.4, [1, 2], id="tie-at-the-cut"),
    pytest.param([0, 0, 4, 0, 0, 0, 0, 0], 0.5, [2], id="never-accessed-rows-left-out"),
    pytest.param([0, 0, 0], 1.0, [], id="nothing-accessed"),
])
def test_mfu_selects_exactly_the_hottest_fraction(counts: list[int], fraction: float, expected: list[int]) -> None:
    (rows,) = select_rows("mfu", [torch.tensor(counts, dtype=torch.int32)], fraction, 0.5, torch.Generator())
    assert rows.tolist() == expected
    assert rows.dtype == torch.int64


def test_mfu_ties_are_deterministic_on_large_tables() -> None:
    counts = torch.randint(1, 4, (5000,), generator=torch.Generator().manual_seed(1), dtype=torch.int32)
    (rows,) = select_rows("mfu", [counts], 0.5, 0.5, torch.Generator())
    threes = torch.nonzero(counts == 3).flatten()
    twos = torch.nonzero(counts == 2).flatten()
    expected = torch.cat([threes, twos[: 2500 - threes.numel()]]).sort().values
    assert torch.equal(rows, expected)


def test_ssu_samples_only_accessed_rows_deterministically_per_seed() -> None:
    counts = torch.zeros(1000, dtype=torch.int32)
    accessed = torch.randperm(1000, generator=torch.Generator().manual_seed(3))[:200]
    counts[accessed] = 1

    def pick(seed: int) -> torch.Tensor:
        return select_rows("ssu", [counts], 0.5, 0.25, torch.Generator().manual_seed(seed))[0]

    rows = pick(7)
    assert rows.numel() == 50
    assert bool((counts[rows] > 0).all())
    assert rows.tolist() == sorted(set(rows.tolist()))
    assert torch.equal(rows, pick(7))
    assert not torch.equal(rows, pick(8))


def test_ssu_favours_frequently_accessed_rows() -> None:
    """CPR's SSU samples accesses, so hot rows are kept far more often than their share of rows."""
    counts = torch.ones(1000, dtype=torch.int32)
    hot = torch.arange(0, 1000, 100)  # 10 rows updated 100 times, 990 rows once
    counts[hot] = 100
    kept_hot, saved_share = [], []
    for seed in range(20):
        rows = select_rows("ssu", [counts], 0.5, 0.02, torch.Generator().manual_seed(seed))[0]
        assert rows.numel() == 20
        kept_hot.append(int(torch.isin(hot, rows).sum()))
        saved_share.append(float(counts[rows].sum()) / float(counts.sum()))
    # Uniform sampling would keep 0.2 hot rows per save and about 2% of the updates.
    assert sum(kept_hot) / len(kept_hot) >= 7
    assert sum(saved_share) / len(saved_share) >= 0.35


def test_full_selects_every_row_and_unknown_strategy_is_rejected() -> None:
    rows = select_rows("full", [torch.zeros(3), torch.zeros(0)], 0.5, 0.5, torch.Generator())
    assert [r.tolist() for r in rows] == [[0, 1, 2], []]
    with pytest.raises(ValueError, match="'lru': expected full, mfu or ssu"):
        select_rows("lru", [torch.zeros(3)], 0.5, 0.5, torch.Generator())


@pytest.mark.parametrize(("strategy", "since_full", "full_every", "expected"), [
    pytest.param("full", 2, 4, "full", id="full-strategy"),
    pytest.param("mfu", None, 4, "full", id="first-save-is-full"),
    pytest.param("mfu", 0, 4, "mfu", id="after-full"),
    pytest.param("ssu", 2, 4, "ssu", id="third"),
    pytest.param("mfu", 3, 4, "full", id="every-fourth"),
    pytest.param("ssu", 0, 1, "full", id="full-every-1"),
])
def test_choose_kind(strategy: str, since_full: int | None, full_every: int, expected: str) -> None:
    assert choose_kind(strategy, since_full, full_every) == expected


# -- snapshot -------------------------------------------------------------------------------------------


def test_snapshot_copies_rows_and_resets_only_their_counters(shard: EmbeddingShard) -> None:
    touch(shard, {0: [1, 2, 3], 2: [4]}, times=2)
    rows = [torch.tensor([1, 3]), torch.tensor([], dtype=torch.int64), torch.tensor([4])]
    snap = snapshot(shard.tables, rows, shard.lock)
    assert torch.equal(snap.weights[0], shard.tables.weights[0][[1, 3]])
    assert torch.equal(snap.adagrad[2], shard.tables.adagrad[2][[4]])
    assert shard.tables.access[0].tolist()[:4] == [0, 0, 2, 0]  # row 2 accessed but not saved: keeps counting
    assert int(shard.tables.access[2][4]) == 0
    before = snap.weights[0].clone()
    shard.tables.weights[0].add_(1.0)
    assert torch.equal(snap.weights[0], before), "snapshot must not alias the live tables"
    assert snap.num_rows == 3 and snap.table_rows == TABLE_ROWS and snap.dim == 4


# -- save and load --------------------------------------------------------------------------------------


def test_full_round_trip_restores_bit_identical_weights_and_adagrad(tmp_path: Path, shard: EmbeddingShard) -> None:
    touch(shard, {0: [0, 5], 1: [3]})
    expected = state(shard.tables)
    info = save(CheckpointWriter(tmp_path, 0), shard, "full", progress=1234)
    assert info.id == "00000001-full" and info.rows == sum(TABLE_ROWS)

    restored = fresh_tables()
    restored.access[0][0] = 5
    report = load_latest(tmp_path, 0, restored)
    assert_tables_equal(restored, expected)
    assert report.loaded == ("00000001-full",) and report.progress == 1234 and not report.skipped
    assert int(restored.access[0].sum()) == 0, "a restored shard's rows all equal their saved values"
    assert "restored 00000001-full" in report.describe()


def test_manifest_lists_files_with_checksums_sizes_and_chain(tmp_path: Path, shard: EmbeddingShard) -> None:
    writer = CheckpointWriter(tmp_path, 3)
    save(writer, shard, "full", 10)
    touch(shard, {1: [2]})
    info = save(writer, shard, "mfu", 20)
    manifest = json.loads((info.path / "MANIFEST.json").read_text())
    assert info.path == tmp_path / "shard-3" / "00000002-mfu"
    assert (manifest["kind"], manifest["seq"], manifest["base"], manifest["parent"]) == ("mfu", 2, 1, 1)
    assert manifest["progress"] == 20 and manifest["table_rows"] == TABLE_ROWS
    assert [f["name"] for f in manifest["files"]] == [f"table-{t}.safetensors" for t in range(3)]
    assert [f["rows"] for f in manifest["files"]] == [0, 1, 0]
    for f in manifest["files"]:
        assert (info.path / f["name"]).stat().st_size == f["bytes"]
        assert len(f["sha256"]) == 64


def test_partial_on_top_of_full_restores_the_union(tmp_path: Path, shard: EmbeddingShard) -> None:
    writer = CheckpointWriter(tmp_path, 0)
    save(writer, shard, "full", 100)
    at_full = state(shard.tables)
    touch(shard, {0: [1, 2, 3, 4], 1: [7]}, times=3)
    touch(shard, {0: [9]})  # accessed once: below the hot cut of table 0 (ceil(0.1 * 40) = 4 rows)
    info = save(writer, shard, "mfu", 200, hot=0.1)
    at_partial = state(shard.tables)
    touch(shard, {0: [1, 30]})  # after the last save: lost

    restored = fresh_tables()
    report = load_latest(tmp_path, 0, restored)
    assert report.loaded == ("00000001-full", info.id) and report.progress == 200
    saved = {0: [1, 2, 3, 4], 1: [7]}
    for t in range(3):
        expected_w, expected_a = at_full[0][t].clone(), at_full[1][t].clone()
        idx = torch.tensor(saved.get(t, []), dtype=torch.int64)
        expected_w[idx], expected_a[idx] = at_partial[0][t][idx], at_partial[1][t][idx]
        assert torch.equal(restored.weights[t], expected_w)
        assert torch.equal(restored.adagrad[t], expected_a)
    assert not torch.equal(restored.weights[0][9], at_partial[0][0][9]), "row 9 was not hot: keeps the full's value"


def test_a_partial_needs_a_full_first(tmp_path: Path, shard: EmbeddingShard) -> None:
    with pytest.raises(ValueError, match="needs a full one first"):
        save(CheckpointWriter(tmp_path, 0), shard, "ssu", 1)


def test_no_checkpoint_leaves_tables_untouched(tmp_path: Path) -> None:
    tables = fresh_tables()
    before = state(tables)
    report = load_latest(tmp_path, 0, tables)
    assert not report.found and report.progress is None
    assert_tables_equal(tables, before)
    assert report.describe() == "shard 0: no checkpoint, starting from initial weights"


def test_a_restored_chain_says_what_no_partial_save_holds(tmp_path: Path, shard: EmbeddingShard) -> None:
    """Lost-sample accounting weighs the rows an MFU chain left out: the last save's pending updates over
    every update counted since the full save (core.accounting)."""
    writer = CheckpointWriter(tmp_path, 0)
    full = save(writer, shard, "full", 100)
    touch(shard, {0: [1, 2, 3]}, times=3)
    touch(shard, {0: [10]})
    partial = save(writer, shard, "mfu", 300, hot=0.075)  # 3 of table 0's 40 rows: 1, 2, 3, not 10
    manifest = json.loads((partial.path / "MANIFEST.json").read_text())
    assert (manifest["access_saved"], manifest["access_pending"]) == (9, 1)

    report = load_latest(tmp_path, 0, fresh_tables())
    assert report.loaded == ("00000001-full", "00000002-mfu")
    assert (report.base_progress, report.progress, report.uncovered) == (100, 300, pytest.approx(0.1))
    assert report.saved_unix == pytest.approx(partial.created_unix)
    lone = load_latest(tmp_path, 0, fresh_tables(), only=full.id)
    assert (lone.base_progress, lone.uncovered) == (100, 0.0)


# -- atomicity ------------------------------------------------------------------------------------------


class Crash(BaseException):
    """Stands in for the process dying: not an OSError, so nothing cleans up after it."""


def test_crash_between_files_and_manifest_keeps_the_previous_checkpoint(
    tmp_path: Path, shard: EmbeddingShard, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = CheckpointWriter(tmp_path, 0)
    save(writer, shard, "full", 1)
    expected = state(shard.tables)
    touch(shard, {0: [0, 1]})
    real_write = checkpoint_store._write_atomically

    def crash_on_manifest(path: Path, data: bytes) -> None:
        if path.name == "MANIFEST.json":
            raise Crash
        real_write(path, data)

    monkeypatch.setattr(checkpoint_store, "_write_atomically", crash_on_manifest)
    with pytest.raises(Crash):
        save(writer, shard, "full", 2)
    monkeypatch.undo()
    crashed = tmp_path / "shard-0" / "00000002-full"
    assert (crashed / "table-0.safetensors").exists() and not (crashed / "MANIFEST.json").exists()

    restored = fresh_tables()
    report = load_latest(tmp_path, 0, restored)
    assert report.loaded == ("00000001-full",) and report.incomplete == ("00000002-full",)
    assert_tables_equal(restored, expected)

    restarted = CheckpointWriter(tmp_path, 0)  # a replacement process: never reuses the crashed seq
    assert save(restarted, shard, "full", 3).id == "00000003-full"
    assert not crashed.exists(), "retention removes manifest-less directories older than the newest checkpoint"


def test_a_directory_without_manifest_is_not_a_checkpoint(tmp_path: Path, shard: EmbeddingShard) -> None:
    info = save(CheckpointWriter(tmp_path, 0), shard, "full", 1)
    fake = tmp_path / "shard-0" / "00000009-full"
    fake.mkdir()
    for f in info.path.glob("table-*"):
        (fake / f.name).write_bytes(b"garbage")
    report = load_latest(tmp_path, 0, fresh_tables())
    assert report.loaded == ("00000001-full",) and not report.skipped


# -- corruption and fallback ----------------------------------------------------------------------------


def test_corrupt_byte_falls_back_to_previous_full_and_names_the_file(tmp_path: Path, shard: EmbeddingShard) -> None:
    writer = CheckpointWriter(tmp_path, 0)
    save(writer, shard, "full", 1)
    expected = state(shard.tables)
    touch(shard, {0: [0], 2: [1]})
    newest = save(writer, shard, "full", 2)
    flip_byte(newest.path / "table-1.safetensors")

    restored = fresh_tables()
    report = load_latest(tmp_path, 0, restored)
    assert_tables_equal(restored, expected)
    assert report.loaded == ("00000001-full",) and report.progress == 1
    assert "checkpoint 00000002-full corrupt (sha256 mismatch in table-1.safetensors); fell back to 00000001-full" \
        in report.describe()


def test_missing_file_falls_back_to_previous_full(tmp_path: Path, shard: EmbeddingShard) -> None:
    writer = CheckpointWriter(tmp_path, 0)
    save(writer, shard, "full", 1)
    (save(writer, shard, "full", 2).path / "table-0.safetensors").unlink()
    report = load_latest(tmp_path, 0, fresh_tables())
    assert report.loaded == ("00000001-full",)
    assert report.skipped[0].reason == "corrupt (missing table-0.safetensors)"


def test_corrupt_manifest_is_skipped_with_reason(tmp_path: Path, shard: EmbeddingShard) -> None:
    writer = CheckpointWriter(tmp_path, 0)
    save(writer, shard, "full", 1)
    (save(writer, shard, "full", 2).path / "MANIFEST.json").write_text("{not json")
    report = load_latest(tmp_path, 0, fresh_tables())
    assert report.loaded == ("00000001-full",)
    assert report.skipped[0].reason.startswith("unreadable manifest (JSONDecodeError")


def test_chain_stops_at_the_first_corrupt_partial(tmp_path: Path, shard: EmbeddingShard) -> None:
    writer = CheckpointWriter(tmp_path, 0)
    save(writer, shard, "full", 1)
    touch(shard, {0: [1]})
    save(writer, shard, "mfu", 2)
    touch(shard, {0: [2]})
    bad = save(writer, shard, "mfu", 3)
    touch(shard, {0: [3]})
    save(writer, shard, "mfu", 4)
    flip_byte(bad.path / "table-0.safetensors")
    report = load_latest(tmp_path, 0, fresh_tables())
    assert report.loaded == ("00000001-full", "00000002-mfu") and report.progress == 2
    assert {s.id: s.reason for s in report.skipped} == {
        "00000003-mfu": "corrupt (sha256 mismatch in table-0.safetensors)",
        "00000004-mfu": "not applied (follows unusable 00000003-mfu)",
    }


def test_partial_whose_parent_is_gone_is_not_applied(tmp_path: Path, shard: EmbeddingShard) -> None:
    import shutil

    writer = CheckpointWriter(tmp_path, 0)
    save(writer, shard, "full", 1)
    touch(shard, {0: [1]})
    gone = save(writer, shard, "mfu", 2)
    touch(shard, {0: [2]})
    save(writer, shard, "mfu", 3)
    shutil.rmtree(gone.path)
    report = load_latest(tmp_path, 0, fresh_tables())
    assert report.loaded == ("00000001-full",) and report.progress == 1
    assert report.skipped[0].reason == "not applied (its parent 2 was not restored)"


def test_fallback_past_a_corrupt_full_keeps_the_older_fulls_partials(tmp_path: Path, shard: EmbeddingShard) -> None:
    writer = CheckpointWriter(tmp_path, 0)
    save(writer, shard, "full", 1)
    touch(shard, {1: [1]})
    save(writer, shard, "ssu", 2)
    expected = state(shard.tables)
    touch(shard, {1: [2]})
    bad = save(writer, shard, "full", 3)
    touch(shard, {1: [3]})
    save(writer, shard, "ssu", 4)
    flip_byte(bad.path / "table-2.safetensors")
    restored = fresh_tables()
    report = load_latest(tmp_path, 0, restored)
    assert report.loaded == ("00000001-full", "00000002-ssu")
    assert_tables_equal(restored, expected)
    assert [s.id for s in report.skipped] == ["00000004-ssu", "00000003-full"]
    assert "fell back to 00000001-full" in report.describe()


def test_every_full_corrupt_leaves_tables_untouched(tmp_path: Path, shard: EmbeddingShard) -> None:
    flip_byte(save(CheckpointWriter(tmp_path, 0), shard, "full", 1).path / "table-0.safetensors")
    tables = fresh_tables()
    before = state(tables)
    report = load_latest(tmp_path, 0, tables)
    assert not report.found
    assert_tables_equal(tables, before)
    assert report.describe().startswith("shard 0: no intact checkpoint, starting from initial weights: "
                                        "checkpoint 00000001-full corrupt")


def test_checkpoint_of_other_table_shapes_is_skipped(tmp_path: Path) -> None:
    small = make_shard(table_rows=[10, 10, 10])
    save(CheckpointWriter(tmp_path, 0), small, "full", 1)
    report = load_latest(tmp_path, 0, fresh_tables())
    assert not report.found
    assert report.skipped[0].reason == "incompatible (tables [10, 10, 10] x 4, shard has [40, 25, 9] x 4)"


# -- retention ------------------------------------------------------------------------------------------


def test_retention_keeps_newest_fulls_and_their_partials(tmp_path: Path, shard: EmbeddingShard) -> None:
    writer = CheckpointWriter(tmp_path, 0, keep=2)
    for i, kind in enumerate(["full", "mfu", "full", "mfu", "full", "mfu", "ssu"], start=1):
        touch(shard, {0: [i]})
        save(writer, shard, kind, i)
    names = sorted(p.name for p in (tmp_path / "shard-0").iterdir())
    assert names == ["00000003-full", "00000004-mfu", "00000005-full", "00000006-mfu", "00000007-ssu"]
    assert load_latest(tmp_path, 0, fresh_tables()).loaded == ("00000005-full", "00000006-mfu", "00000007-ssu")


# -- unwritable storage ---------------------------------------------------------------------------------


def unwritable_root(tmp_path: Path) -> Path:
    """A path under a regular file: not writable even for root (chmod would not stop root)."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    return blocker / "checkpoints"


def test_unwritable_storage_raises_storage_error(tmp_path: Path, shard: EmbeddingShard) -> None:
    root = unwritable_root(tmp_path)
    with pytest.raises(StorageError, match=r"checkpoint storage .*blocker/checkpoints/shard-0 not writable: Not a dir"):
        save(CheckpointWriter(root, 0), shard, "full", 1)


def test_background_checkpointer_keeps_running_when_storage_is_unwritable(
    tmp_path: Path, shard: EmbeddingShard
) -> None:
    root = unwritable_root(tmp_path)
    errors: list[Exception] = []
    touch(shard, {0: [1]})  # once, then no more updates: a failed save is retried all the same
    bg = BackgroundCheckpointer(shard, CheckpointWriter(root, 0), spec(strategy="mfu", fullEvery=3),
                                lambda: 0.01, lambda: 7, on_error=errors.append).start()
    try:
        deadline = time.monotonic() + 5
        while bg.stats().failures < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        touch(shard, {0: [1]})  # training goes on
        stats = bg.stats()
        assert bg.alive and stats.failures >= 3 and stats.saves == 0
        assert stats.last_error is not None and "not writable" in stats.last_error
        assert all(isinstance(e, StorageError) for e in errors)

        (root.parent).unlink()  # storage comes back
        while bg.stats().saves == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        bg.stop()
    saved = sorted(p.name for p in (root / "shard-0").iterdir())
    assert saved[0].endswith("-full"), "the first save after storage comes back is full"
    last = bg.stats().last
    assert last is not None and last.progress == 7


# -- background checkpointer ----------------------------------------------------------------------------


def test_background_checkpointer_cycles_full_and_partials(tmp_path: Path, shard: EmbeddingShard) -> None:
    settings = spec(strategy="mfu", fullEvery=3, hotFraction=0.1)
    bg = BackgroundCheckpointer(shard, CheckpointWriter(tmp_path, 0), settings, lambda: 3600.0, lambda: 5)
    kinds = []
    for i in range(5):
        touch(shard, {0: list(range(i, i + 8))}, times=1)
        touch(shard, {0: [20, 21, 22, 23]}, times=2)
        info = bg.save_once()
        assert info is not None
        kinds.append(info.kind)
    assert kinds == ["full", "mfu", "mfu", "full", "mfu"]
    manifest = json.loads((tmp_path / "shard-0" / "00000005-mfu" / "MANIFEST.json").read_text())
    assert [f["rows"] for f in manifest["files"]] == [4, 0, 0]
    stats = bg.stats()
    assert stats.saves == 5 and len(stats.stall_s) == 5 and stats.bytes_written > 0


def test_ssu_save_contains_only_accessed_rows(tmp_path: Path, shard: EmbeddingShard) -> None:
    bg = BackgroundCheckpointer(shard, CheckpointWriter(tmp_path, 0),
                                spec(strategy="ssu", sampleFraction=0.5), lambda: 3600.0, lambda: 0)
    bg.save_once()
    accessed = [1, 4, 9, 16, 25, 36]
    touch(shard, {0: accessed})
    info = bg.save_once()
    assert info is not None and info.kind == "ssu" and info.rows == 3
    from safetensors.torch import load_file
    rows = load_file(str(info.path / "table-0.safetensors"))["rows"].tolist()
    assert set(rows) <= set(accessed) and len(rows) == 3


class FailingOnceWriter:
    """Wraps a writer; the next save after ``fail_next`` is set fails like a full disk."""

    def __init__(self, inner: CheckpointWriter) -> None:
        self.inner = inner
        self.fail_next = False

    def save(self, snap: SnapshotData, kind: str, progress_marker: int | None) -> CheckpointInfo:
        if self.fail_next:
            self.fail_next = False
            raise StorageError(self.inner.store.location(self.inner.folder), OSError(28, "No space left on device"))
        return self.inner.save(snap, kind, progress_marker)


def test_save_after_a_failed_one_is_full(tmp_path: Path, shard: EmbeddingShard) -> None:
    writer = FailingOnceWriter(CheckpointWriter(tmp_path, 0))
    bg = BackgroundCheckpointer(shard, writer, spec(strategy="mfu", fullEvery=10), lambda: 3600.0, lambda: 0)
    kinds = []
    for fail in [False, False, True, False, False]:
        touch(shard, {0: [1, 2]})
        writer.fail_next = fail
        info = bg.save_once()
        kinds.append(info.kind if info else None)
    assert kinds == ["full", "mfu", None, "full", "mfu"]
    assert bg.stats().last_error == "StorageError: checkpoint storage " + str(tmp_path / "shard-0") + \
        " not writable: No space left on device"


class BlockingWriter:
    """Wraps a writer; its save waits until released, like a slow volume."""

    def __init__(self, inner: CheckpointWriter) -> None:
        self.inner = inner
        self.writing = threading.Event()
        self.release = threading.Event()

    def save(self, snap: SnapshotData, kind: str, progress_marker: int | None) -> CheckpointInfo:
        self.writing.set()
        self.release.wait(5)
        return self.inner.save(snap, kind, progress_marker)


def test_training_proceeds_while_a_slow_write_is_in_progress(tmp_path: Path, shard: EmbeddingShard) -> None:
    writer = BlockingWriter(CheckpointWriter(tmp_path, 0))
    bg = BackgroundCheckpointer(shard, writer, spec(), lambda: 3600.0, lambda: 0).start()
    try:
        bg.request_save()
        assert writer.writing.wait(5)
        acquired = shard.lock.acquire(timeout=1.0)
        assert acquired, "the shard lock must not be held during the write"
        shard.lock.release()
        touch(shard, {0: [1, 2]}, times=5)  # a real update goes through while the write is in progress
        assert bg.stats().saves == 0
    finally:
        writer.release.set()
        bg.stop()
    stats = bg.stats()
    assert stats.saves == 1 and stats.stall_s[0] < 0.5


def wait_for(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


class Trainer(threading.Thread):
    """Updates the shard every few milliseconds, as trainers' gradient pushes do."""

    def __init__(self, shard: EmbeddingShard) -> None:
        super().__init__(daemon=True)
        self.shard, self.stopped = shard, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.002):
            touch(self.shard, {0: [1, 2]})


def test_saves_follow_the_interval_and_stop_final_makes_a_last_save(tmp_path: Path, shard: EmbeddingShard) -> None:
    interval = [0.01]
    trainer = Trainer(shard)
    trainer.start()
    bg = BackgroundCheckpointer(shard, CheckpointWriter(tmp_path, 0), spec(), lambda: interval[0], lambda: 1,
                                reread_s=0.01).start()
    try:
        wait_for(lambda: bg.stats().saves >= 2)
        interval[0] = 3600.0
        time.sleep(0.05)
        saves = bg.stats().saves
        time.sleep(0.1)
        assert bg.stats().saves == saves, "a long interval stops the saves"
    finally:
        trainer.stopped.set()
    bg.stop(final=True, timeout_s=5)
    assert not bg.alive and bg.stats().saves == saves + 1


def test_a_shortened_interval_applies_without_waiting_out_the_old_one(tmp_path: Path, shard: EmbeddingShard) -> None:
    interval = [3600.0]
    touch(shard, {0: [1]})
    bg = BackgroundCheckpointer(shard, CheckpointWriter(tmp_path, 0), spec(), lambda: interval[0], lambda: 1,
                                reread_s=0.01, last_saved_unix=time.time()).start()
    try:
        time.sleep(0.05)
        assert bg.stats().saves == 0
        interval[0] = 0.02
        wait_for(lambda: bg.stats().saves >= 1)
    finally:
        bg.stop()


def test_the_schedule_is_the_jobs_a_replacement_with_an_old_checkpoint_saves_once_it_has_updates(
        tmp_path: Path, shard: EmbeddingShard) -> None:
    # Issue #9: every restart restarted the interval clock, so servers living shorter than one interval
    # never saved. The clock is the shard's last checkpoint: already overdue here, so the first update
    # is saved at once, not an interval after the process started.
    bg = BackgroundCheckpointer(shard, CheckpointWriter(tmp_path, 0), spec(), lambda: 30.0, lambda: 1,
                                reread_s=0.01, last_saved_unix=time.time() - 60.0).start()
    try:
        time.sleep(0.3)
        assert bg.stats().saves == 0, "nothing new to save: a restored shard equals its checkpoint"
        touch(shard, {0: [3]})
        wait_for(lambda: bg.stats().saves == 1, timeout_s=2.0)
        touch(shard, {0: [4]})
        time.sleep(0.3)
        assert bg.stats().saves == 1, "then every 30 s, counted from that save"
    finally:
        bg.stop()


def test_a_recent_checkpoint_is_not_saved_again_before_its_interval(tmp_path: Path, shard: EmbeddingShard) -> None:
    touch(shard, {0: [1]})
    bg = BackgroundCheckpointer(shard, CheckpointWriter(tmp_path, 0), spec(), lambda: 0.5, lambda: 1,
                                reread_s=0.01, last_saved_unix=time.time() - 0.3).start()
    try:
        started = time.monotonic()
        wait_for(lambda: bg.stats().saves == 1)
        assert 0.1 < time.monotonic() - started < 0.45  # the rest of the job's interval: 0.5 - 0.3 s
    finally:
        bg.stop()


def test_broken_interval_source_falls_back_to_the_spec(tmp_path: Path, shard: EmbeddingShard) -> None:
    def broken() -> float:
        raise ConnectionError("redis down")

    touch(shard, {0: [1]})
    bg = BackgroundCheckpointer(shard, CheckpointWriter(tmp_path, 0), spec(initialIntervalSeconds=0.01), broken,
                                lambda: 1, reread_s=0.01).start()
    try:
        wait_for(lambda: bg.stats().saves >= 1)
    finally:
        bg.stop()


def test_tuned_interval_prefers_fixed_then_redis_then_initial(coord: Coordination) -> None:
    assert tuned_interval(spec(intervalSeconds=9.0), coord)() == 9.0
    source = tuned_interval(spec(initialIntervalSeconds=30.0), coord)
    assert source() == 30.0
    coord.set_interval(7.5)
    assert source() == 7.5
    assert tuned_interval(spec(initialIntervalSeconds=30.0), None)() == 30.0

    class Down:
        def interval(self) -> float | None:
            raise ConnectionError("redis down")

    assert tuned_interval(spec(initialIntervalSeconds=30.0), Down())() == 30.0  # type: ignore[arg-type]


# -- Redis pointer ----------------------------------------------------------------------------------------


def test_pointer_is_published_after_the_manifest_with_costs(tmp_path: Path, shard: EmbeddingShard,
                                                            coord: Coordination) -> None:
    seen: list[bool] = []

    class Spy:
        def record_cost(self, name: str, seconds: float) -> None:
            coord.record_cost(name, seconds)

        def set_checkpoint_pointer(self, shard_index: int, pointer: dict) -> None:
            seen.append((Path(pointer["path"]) / "MANIFEST.json").is_file())
            coord.set_checkpoint_pointer(shard_index, pointer)

        def interval(self) -> float | None:
            return coord.interval()

        def holds(self) -> bool:
            return True

    info = save(CheckpointWriter(tmp_path, 2, Spy()), shard, "full", 42)
    assert seen == [True] and info.pointer_published
    pointer = coord.checkpoint_pointer(2)
    assert pointer == info.pointer()
    assert pointer is not None and pointer["checksum"].startswith("sha256:") and pointer["rows"] == sum(TABLE_ROWS)
    assert coord.costs("stall_full") == [pytest.approx(info.stall_s)]
    assert coord.costs("write_full") == [pytest.approx(info.write_s)]

    with pytest.raises(StorageError):
        save(CheckpointWriter(unwritable_root(tmp_path), 2, coord), shard, "full", 43)
    assert coord.checkpoint_pointer(2) == pointer, "a failed save publishes nothing"

    load_latest(tmp_path, 2, fresh_tables(), coord)
    assert len(coord.costs("o_load")) == 1

    # Costs are kept per kind: a partial save's stall and write, and the share of updates it left out.
    writer = CheckpointWriter(tmp_path, 2, coord)
    save(writer, shard, "full", 46)
    touch(shard, {0: [1, 2, 3]}, times=2)
    partial = save(writer, shard, "mfu", 47, hot=0.05)  # 2 of table 0's 40 rows: a third of the updates left out
    assert len(coord.costs("stall_full")) == 2
    assert coord.costs("stall_partial") == [pytest.approx(partial.stall_s)]
    assert coord.costs("write_partial") == [pytest.approx(partial.write_s)]
    assert coord.checkpoint_pointer(2)["uncovered"] == pytest.approx(1 / 3, abs=1e-6)  # type: ignore[index]


# -- dense state ------------------------------------------------------------------------------------------


def test_dense_round_trip_and_fallback(tmp_path: Path) -> None:
    assert load_dense(tmp_path).flat is None
    first = torch.randn(1000)
    save_dense(tmp_path, first, 10)
    second = save_dense(tmp_path, first * 2, 20)
    loaded = load_dense(tmp_path)
    assert loaded.id == "00000002-dense" and loaded.progress == 20
    assert loaded.flat is not None and torch.equal(loaded.flat, first * 2)

    flip_byte(second.path / "dense.safetensors")
    loaded = load_dense(tmp_path)
    assert loaded.id == "00000001-dense" and loaded.flat is not None and torch.equal(loaded.flat, first)
    assert loaded.skipped[0].reason == "corrupt (sha256 mismatch in dense.safetensors)"

    with pytest.raises(StorageError):
        save_dense(unwritable_root(tmp_path), first, 1)
