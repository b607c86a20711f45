"""The trainer's input pipeline: batches prepared ahead in a thread, the cursor still meaning "applied",
a round's pause in order, the single-hot embedding path equal to TorchRec's KJT + embedding_bag, the
vectorised server update equal to per-table Adagrad, and the device plan's CUDA choices."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future

import pytest
import torch
import torch.nn.functional as F

from dlrm_trainer.data.batch import Batch, feature_keys
from dlrm_trainer.data.synthetic import SyntheticCriteo
from dlrm_trainer.embedding_server import ADAGRAD_EPS, EmbeddingShard, ShardTables
from dlrm_trainer.model import RemoteEmbeddings
from dlrm_trainer.pipeline import END, Prefetcher, device_plan
from dlrm_trainer.rpc import Message
from dlrm_trainer.trainer import PAUSE, Pause, ShardReader, max_in_flight

WAIT_S = 10.0


def _makers(count: int, made: list[int]) -> Iterator[tuple[int, Callable[[], Batch]]]:
    def make(i: int) -> Batch:
        made.append(i)
        return Batch(torch.full((1, 1), float(i)), torch.zeros(1, 1, dtype=torch.int64), torch.zeros(1))

    for i in range(count):
        yield i + 1, functools.partial(make, i)


def _wait_for(condition: Callable[[], bool]) -> None:
    done = threading.Event()
    deadline = threading.Timer(WAIT_S, done.set)
    deadline.start()
    try:
        while not condition():
            if done.wait(0.01):
                raise AssertionError("condition not reached")
    finally:
        deadline.cancel()


def test_the_prefetcher_prepares_ahead_in_order_and_counts_prepared_batches_in_flight() -> None:
    made: list[int] = []
    reader = ShardReader(_makers(6, made), start_cursor=0)
    stop = threading.Event()
    prefetcher: Prefetcher[Callable[[], Batch], Batch] = Prefetcher(
        reader.next, lambda make: make(), 2, stop, Pause, reader.wait_released)
    prefetcher.start()
    # Nobody consumed yet: the thread made two batches for the queue and holds a third it cannot queue.
    _wait_for(lambda: len(made) == 3)
    assert reader.cursor == 0  # made but not applied: a replacement would read them again
    got = prefetcher.get()
    assert isinstance(got, Batch) and float(got.dense) == 0.0
    reader.done_one()
    _wait_for(lambda: len(made) == 4)
    assert reader.cursor == 1
    rest = []
    while (item := prefetcher.get()) is not END:
        assert isinstance(item, Batch)
        rest.append(int(item.dense))
        reader.done_one()
    assert rest == [1, 2, 3, 4, 5] and reader.cursor == 6
    prefetcher.join(WAIT_S)
    stop.set()


def test_a_rounds_pause_reaches_the_worker_after_every_batch_before_its_cursor() -> None:
    made: list[int] = []
    reader = ShardReader(_makers(10, made), start_cursor=0, workers=1)
    assert reader.pause_at(round_id=1, cursor=3)
    stop = threading.Event()
    prefetcher: Prefetcher[Callable[[], Batch], Batch] = Prefetcher(
        reader.next, lambda make: make(), 4, stop, Pause, reader.wait_released)
    prefetcher.start()
    seen = []
    while not isinstance(item := prefetcher.get(), Pause):
        assert isinstance(item, Batch)
        seen.append(int(item.dense))
        reader.done_one()
    assert seen == [0, 1, 2] and reader.cursor == 3
    assert item is PAUSE and made == [0, 1, 2]  # nothing past the round's cursor was made while it held
    joined: list[tuple[int, int]] = []
    reader.wait_at_pause(lambda round_id, cursor: joined.append((round_id, cursor)))
    assert joined == [(1, 3)]
    after = prefetcher.get()
    assert isinstance(after, Batch) and int(after.dense) == 3
    stop.set()
    prefetcher.join(WAIT_S)


def test_an_error_while_preparing_is_raised_to_the_worker() -> None:
    reader = ShardReader(_makers(3, []), start_cursor=0)

    def prepare(make: Callable[[], Batch]) -> Batch:
        raise RuntimeError("bad batch")

    stop = threading.Event()
    prefetcher: Prefetcher[Callable[[], Batch], Batch] = Prefetcher(
        reader.next, prepare, 1, stop, Pause, reader.wait_released)
    prefetcher.start()
    with pytest.raises(RuntimeError, match="bad batch"):
        prefetcher.get()
    stop.set()


def test_depth_zero_prepares_on_the_workers_thread() -> None:
    made: list[int] = []
    reader = ShardReader(_makers(2, made), start_cursor=0)
    threads: list[str] = []

    def prepare(make: Callable[[], Batch]) -> Batch:
        threads.append(threading.current_thread().name)
        return make()

    prefetcher: Prefetcher[Callable[[], Batch], Batch] = Prefetcher(
        reader.next, prepare, 0, threading.Event(), Pause, reader.wait_released)
    prefetcher.start()
    assert made == []  # nothing ahead
    assert isinstance(prefetcher.get(), Batch) and made == [0]
    assert isinstance(prefetcher.get(), Batch) and prefetcher.get() is END
    assert threads == [threading.current_thread().name] * 2
    assert max_in_flight(2, 0) == 2 and max_in_flight(2, 1) == 6


def test_the_device_plan_pins_streams_and_syncs_rarely_only_on_cuda() -> None:
    cpu = device_plan(torch.device("cpu"))
    assert (cpu.pin_memory, cpu.non_blocking, cpu.stream_per_worker, cpu.loss_every) == (False, False, False, 1)
    cuda = device_plan(torch.device("cuda"), loss_every_on_accelerator=20)
    assert (cuda.pin_memory, cuda.non_blocking, cuda.stream_per_worker, cuda.loss_every) == (True, True, True, 20)


class _LocalClient:
    """An embedding server's client without gRPC: the RPC seam is tested elsewhere."""

    def __init__(self, shard: EmbeddingShard) -> None:
        self.shard = shard

    def call_async(self, method: str, message: Message) -> object:
        assert method == "Lookup"
        rows = self.shard.lookup(message.tensors["ids"], message.tensors["counts"])
        done: Future[Message] = Future()
        done.set_result(Message({"rows": rows}))
        return done


def test_single_hot_pooling_equals_torchrecs_kjt_and_embedding_bag() -> None:
    rows = [50, 30, 20]
    source = SyntheticCriteo(rows, num_dense=3, seed=1)
    batch = source.batch("train", 0, 64)
    shards = [EmbeddingShard(ShardTables.initialise(rows, 4, 2, s, seed=2), 2, s, 0.1) for s in range(2)]
    embeddings = RemoteEmbeddings([_LocalClient(s) for s in shards], rows, 4)  # type: ignore[list-item]
    fetched = embeddings.receive(embeddings.request(batch.sparse), torch.device("cpu"))
    pooled = embeddings.pooled(fetched)
    kjt = batch.to_kjt(feature_keys(3))
    full = torch.cat([torch.cat([s.tables.weights[t] for s in shards]) for t in range(3)])
    # The same rows, laid out by global id: shard s holds ids s, s + 2, ... of every table.
    by_id = torch.empty_like(full)
    offset = 0
    for t, n in enumerate(rows):
        for s in range(2):
            ids = torch.arange(s, n, 2)
            by_id[offset + ids] = shards[s].tables.weights[t]
        offset += n
    offsets = torch.tensor([0, *rows[:-1]]).cumsum(0).repeat_interleave(torch.tensor(kjt.length_per_key()))
    reference = F.embedding_bag(kjt.values() + offsets, by_id, kjt.offsets(), mode="sum", include_last_offset=True)
    assert torch.equal(pooled, reference.view(3, 64, 4).transpose(0, 1))


def test_one_vectorised_update_equals_row_wise_adagrad_table_by_table() -> None:
    tables = ShardTables.initialise([9, 5, 7], 3, 2, 1, seed=4)
    before = [w.clone() for w in tables.weights]
    shard = EmbeddingShard(tables, 2, 1, learning_rate=0.3)
    ids = torch.tensor([1, 7, 3, 5, 3, 1])  # table 0: 1, 7; table 1: 3; table 2: 5, 3, 1 (odd ids: shard 1)
    counts = torch.tensor([2, 1, 3])
    grads = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    shard.update(ids, counts, grads)
    start = 0
    for t, n in enumerate(counts.tolist()):
        local, g = ids[start:start + n] // 2, grads[start:start + n]
        state = g.pow(2).mean(dim=1)
        expected = before[t].clone()
        expected[local] -= 0.3 * g / (state.sqrt() + ADAGRAD_EPS).unsqueeze(1)
        assert torch.allclose(tables.weights[t], expected)
        assert torch.allclose(tables.adagrad[t][local], state)
        assert tables.access[t][local].tolist() == [1] * n
        start += n
    with pytest.raises(IndexError, match="table 1"):  # shard 1 of a 5-row table has 2 rows: id 5 is local 2
        shard.update(torch.tensor([5]), torch.tensor([0, 1, 0]), grads[:1])
