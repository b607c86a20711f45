"""Checkpoint rounds (full recovery's consistent cut): the servers' barrier, the trainer's pause, and a
round saved and restored through real gRPC servers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import torch

from dlrm_trainer import checkpoint
from dlrm_trainer.data.batch import Batch
from dlrm_trainer.embedding_server import EmbeddingShard, ShardTables, serve
from dlrm_trainer.rounds import ROUND_METHOD, RoundBarrier, next_round_cursor, round_request
from dlrm_trainer.rpc import Client, Message
from dlrm_trainer.trainer import PAUSE, ShardReader
from trainingjob_operator.api.spec import CheckpointSpec


def test_the_round_is_saved_once_when_the_last_trainer_arrives() -> None:
    saved: list[tuple[int, int]] = []
    barrier = RoundBarrier(2, lambda r, c: saved.append((r, c)), timeout_s=10)
    results: list[bool] = []
    first = threading.Thread(target=lambda: results.append(barrier.arrive(1, 0, 40)))
    first.start()
    time.sleep(0.2)
    assert saved == [] and first.is_alive()  # trainer 0 waits for trainer 1
    assert barrier.arrive(1, 1, 40) is True
    first.join(5)
    assert results == [True] and saved == [(1, 40)]
    assert barrier.arrive(1, 0, 40) is True and saved == [(1, 40)]  # a retried call does not save again


def test_a_round_not_every_trainer_reaches_is_abandoned() -> None:
    saved: list[int] = []
    barrier = RoundBarrier(2, lambda r, c: saved.append(r), timeout_s=0.3)
    assert barrier.arrive(1, 0, 40) is False  # trainer 1 never came
    waiter = threading.Thread(target=lambda: saved.append(-1 if not barrier.arrive(2, 0, 80) else 2))
    waiter.start()
    time.sleep(0.1)
    assert barrier.arrive(2, 1, 80, abandon=True) is False  # trainer 1 was already past batch 80
    waiter.join(5)
    assert saved == [-1]


def test_the_next_round_lies_ahead_of_every_trainer_and_before_the_data_ends() -> None:
    assert next_round_cursor([10, 14], lead=5, batches_per_trainer=100) == 19
    assert next_round_cursor([10, 96], lead=5, batches_per_trainer=100) is None
    assert next_round_cursor([], lead=5, batches_per_trainer=100) is None


def _batches(start: int) -> Iterator[tuple[int, Batch]]:
    cursor = start
    while True:
        cursor += 1
        yield cursor, Batch(torch.zeros(1, 1), torch.zeros(1, 1, dtype=torch.int64), torch.zeros(1))


def test_every_worker_stops_at_the_rounds_cursor_and_the_last_one_joins_the_round() -> None:
    reader = ShardReader(_batches(0), 0, workers=2)
    assert reader.pause_at(1, 3)
    joined: list[tuple[int, int, int]] = []
    processed: list[int] = []

    def worker() -> None:
        while (batch := reader.next()) is not None:
            if batch is PAUSE:
                reader.wait_at_pause(lambda r, c: joined.append((r, c, reader.cursor)))
                return
            processed.append(1)
            reader.done_one()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert joined == [(1, 3, 3)]  # once, with every batch before the cursor done and none after it
    assert len(processed) == 3
    assert not reader.pause_at(2, 2)  # already past it: the trainer cannot join that round


def test_a_round_snapshot_is_restored_exactly_and_nothing_newer(tmp_path: object) -> None:
    from pathlib import Path

    root = Path(str(tmp_path))
    tables = ShardTables.initialise([16, 8], 4, 1, 0, seed=0)
    shard = EmbeddingShard(tables, 1, 0, 0.1)
    writer = checkpoint.CheckpointWriter(root, 0)
    saver = checkpoint.BackgroundCheckpointer(shard, writer, CheckpointSpec(interval_seconds=3600),
                                              lambda: 3600.0, progress=lambda: 0)
    ids: list[str] = []

    def save_round(round_id: int, cursor: int) -> None:
        snap = checkpoint.snapshot(tables, checkpoint.select_rows("full", tables.access, 0, 0, torch.Generator()),
                                   shard.lock)
        info = saver.write_full(snap, cursor * 10)
        assert info is not None
        ids.append(info.id)

    barrier = RoundBarrier(1, save_round)
    server = serve(shard, host="127.0.0.1", extra={ROUND_METHOD: barrier.handler})
    client = Client("tj.EmbeddingServer", lambda: f"127.0.0.1:{server.port}", deadline_s=10)
    try:
        assert client.call(ROUND_METHOD, round_request(1, 0, 7)).meta["saved"] is True
        at_round = [w.clone() for w in tables.weights]
        client.call("Update", Message({"ids": torch.tensor([3]), "counts": torch.tensor([1, 0]),
                                       "grads": torch.ones(1, 4)}))
        assert client.call(ROUND_METHOD, round_request(2, 0, 9)).meta["saved"] is True
    finally:
        server.stop(grace=0)
        client.close()
    fresh = ShardTables.initialise([16, 8], 4, 1, 0, seed=1)
    report = checkpoint.load_latest(root, 0, fresh, only=ids[0])
    assert report.loaded == (ids[0],) and report.progress == 70
    assert all(torch.equal(a, b) for a, b in zip(fresh.weights, at_round, strict=True))
    assert not torch.equal(fresh.weights[0], tables.weights[0])  # round 2 (newer) was not applied
