"""The trainer: Hogwild worker threads on one dense replica, plus ShadowSync's shadow thread.

Each worker thread takes the next batch of this trainer's data shard, fetches the rows it needs
from the embedding servers, runs forward/backward on the dense DLRM, applies Adagrad to the
shared dense replica without locks (Hogwild) and pushes the rows' gradients back. A prefetch
thread per worker makes the next batches, deduplicates their ids and requests their rows while the
worker computes (``pipeline``). In background
mode a shadow thread exchanges the replica with the sync server in a loop, off the critical
path (S-EASGD, S-MA or S-BMUF); in foreground mode the exchange happens inside the loop every
``everySteps`` steps (the baseline ShadowSync is compared against).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from dlrm_trainer import rounds
from dlrm_trainer import sync_algorithms as algo
from dlrm_trainer.data.batch import Batch
from dlrm_trainer.metrics import StreamingEval
from dlrm_trainer.model import DenseDLRM, PendingFetch, RemoteEmbeddings, flatten_parameters
from dlrm_trainer.pipeline import END, Prefetcher, device_plan
from dlrm_trainer.rpc import Client, Message
from dlrm_trainer.sources import DataSource, common_cursor_limit, epoch_batch_makers
from trainingjob_operator.api.spec import SyncMode, TrainingJobSpec, warmup_steps
from trainingjob_operator.coordination import Coordination, Progress

log = logging.getLogger("dlrm_trainer.trainer")
ADAGRAD_EPS = 1e-10
EVAL_BATCH = 8192
ROUND_POLL_S = 0.1  # how often a trainer looks for an announced checkpoint round (full recovery)


def choose_device(preference: str) -> torch.device:
    """CUDA for the dense part when asked for or available (``auto``); the CPU otherwise."""
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def max_in_flight(workers: int, prefetch: int) -> int:
    """Batches a trainer may have handed out but not applied: per worker, one computing, ``prefetch``
    queued and one being prepared (one in all without prefetching). A replacement re-reads them."""
    return workers * (prefetch + 2 if prefetch else 1)


def warmed_up(lr: float, step: int, warmup_steps: int) -> float:
    """Linear warmup: with a zero Adagrad accumulator the first updates move every weight by the
    full learning rate, which silences the ReLUs at the end of the bottom MLP for good."""
    if warmup_steps <= 0:
        return lr
    return lr * min(1.0, (step + 1) / warmup_steps)


@dataclass
class Counters:
    samples: int = 0
    steps: int = 0
    loss_ema: float | None = None
    syncs: int = 0
    sync_seconds: float = 0.0
    round_seconds: float = 0.0  # paused at checkpoint rounds (full recovery's consistent cut)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, batch_size: int, loss: float | None) -> int:
        """One applied batch; ``loss`` when it was read back (every step on CPU, every few on a GPU)."""
        with self.lock:
            self.samples += batch_size
            self.steps += 1
            if loss is not None:
                self.loss_ema = loss if self.loss_ema is None else 0.98 * self.loss_ema + 0.02 * loss
            return self.steps


@dataclass
class Ready:
    """A batch prepared ahead of its worker: made, on pinned memory where that helps, rows requested."""

    size: int
    dense: torch.Tensor
    labels: torch.Tensor
    rows: PendingFetch


class Pause:
    """What ``ShardReader.next`` hands a worker at a checkpoint round's cursor (see ``rounds``)."""


PAUSE = Pause()


class ShardReader:
    """Hands out this trainer's batches (each still to be made: see ``sources.epoch_batch_makers``) to
    worker threads; tracks the resumable cursor; pauses every worker at a checkpoint round's cursor
    (``pause_at``) until the round is saved."""

    def __init__(self, batches: Iterator[tuple[int, Callable[[], Batch]]], start_cursor: int,
                 workers: int = 1) -> None:
        self._batches = batches
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self.dispatched = start_cursor
        self.in_flight = 0
        self.workers = workers
        self._pause: tuple[int, int] | None = None  # (round, cursor)
        self._paused = 0
        self._closed = False

    def pause_at(self, round_id: int, cursor: int) -> bool:
        """Stop handing out batches at ``cursor``; False when this trainer is already past it."""
        with self._lock:
            if self._pause is not None or cursor <= self.dispatched:
                return False
            self._pause = (round_id, cursor)
            return True

    def wait_at_pause(self, all_paused: Callable[[int, int], None]) -> None:
        """A worker at the pause, its updates applied, waits here; the last to arrive runs
        ``all_paused(round, cursor)`` (the round's RPCs) and then releases everyone."""
        with self._cond:
            if self._pause is None:
                return
            pause = self._pause
            self._paused += 1
            if self._paused < self.workers:
                self._cond.wait_for(lambda: self._pause != pause or self._closed)
                return
        try:
            all_paused(*pause)
        finally:
            with self._cond:
                self._pause, self._paused = None, 0
                self._cond.notify_all()

    def wait_released(self) -> None:
        """Block while a round's pause holds (a prefetch thread that handed its worker the pause)."""
        with self._cond:
            self._cond.wait_for(lambda: self._pause is None or self._closed)

    def close(self) -> None:
        """Release paused workers (the trainer is stopping)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def next(self) -> Callable[[], Batch] | Pause | None:
        with self._lock:
            if self._pause is not None and self.dispatched >= self._pause[1] and not self._closed:
                return PAUSE
            item = next(self._batches, None)
            if item is None:
                return None
            self.dispatched, batch = item
            self.in_flight += 1
            return batch

    def done_one(self) -> None:
        with self._lock:
            self.in_flight -= 1

    @property
    def cursor(self) -> int:
        """Batches fully processed: a replacement resumes here (in-flight batches are re-read)."""
        with self._lock:
            return self.dispatched - self.in_flight


class Trainer:
    def __init__(self, spec: TrainingJobSpec, rank: int, coord: Coordination, source: DataSource,
                 embedding_clients: list[Client], sync_client: Client | None, device: torch.device) -> None:
        self.spec = spec
        self.rank = rank
        self.coord = coord
        self.source = source
        self.device = device
        self.trainers = spec.replicas.trainer.replicas
        torch.manual_seed(spec.data.seed)  # every trainer starts from the same replica
        self.model = DenseDLRM(spec.model, device).to(device)
        self.flat = flatten_parameters(self.model)
        self.params = list(self.model.parameters())
        self.adagrad = torch.zeros_like(self.flat)
        self.embeddings = RemoteEmbeddings(embedding_clients, spec.model.rows(), spec.model.embedding_dim)
        self.sync_client = sync_client
        self.counters = Counters()
        self.stop = threading.Event()
        self.sync_version = -1
        self._exchange_lock = threading.Lock()
        self.warmup_steps = warmup_steps(spec)
        self.plan = device_plan(device)
        self.resumed_samples = 0  # a replacement's predecessor trained these (see train)
        self._progress_unreported = False
        self.errors: list[BaseException] = []
        self._joined_round = 0
        self._started_at = self._last_round_at = time.monotonic()

    # --- dense synchronisation ---------------------------------------------------------------
    def initialise_from_center(self) -> bool:
        """A replacement trainer starts from the sync server's central copy (when it has one)."""
        if self.sync_client is None:
            return False
        reply = self.sync_client.call("Pull", Message())
        if reply.meta.get("seeded"):
            with torch.no_grad():
                self.flat.copy_(reply.tensors["center"].to(self.device))
            return True
        return False

    def exchange(self, leaving: bool = False) -> None:
        """One ShadowSync exchange of the live replica with the sync server. One at a time per trainer: two
        Hogwild workers exchanging at once (foreground mode) would apply an MA/BMUF answer twice (at two
        trainers a replica simply became its peer). ``leaving``: the last one, its data is done."""
        assert self.sync_client is not None
        sync = self.spec.training.sync
        with self._exchange_lock:
            started = time.monotonic()
            snapshot = self.flat.detach().clone()
            reply = self.sync_client.call("Exchange", Message(
                {"params": snapshot}, {"algorithm": sync.algorithm.value, "rank": self.rank,
                                       "alpha": sync.elastic_alpha, "leaving": leaving}))
            with torch.no_grad():
                if sync.algorithm == "easgd":
                    algo.easgd_trainer(self.flat, reply.tensors["delta"])
                elif sync.algorithm == "ma" or int(reply.meta["version"]) != self.sync_version:
                    algo.replace_keeping_progress(self.flat, snapshot, reply.tensors["target"])
                self.sync_version = int(reply.meta.get("version", -1))
            with self.counters.lock:
                self.counters.syncs += 1
                self.counters.sync_seconds += time.monotonic() - started

    def _shadow_loop(self) -> None:
        period = self.spec.training.sync.min_interval_seconds
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                self.exchange()
            except Exception as exc:  # sync server down: training goes on, retry later
                log.warning("shadow sync failed: %s", exc)
            self.stop.wait(max(0.0, period - (time.monotonic() - started)))

    # --- training ----------------------------------------------------------------------------
    def prepare(self, make: Callable[[], Batch]) -> Ready:
        """Everything a batch needs before its worker computes it; runs in the worker's prefetch thread."""
        batch = make()
        dense, labels = batch.dense, batch.labels
        if self.plan.pin_memory:
            dense, labels = dense.pin_memory(), labels.pin_memory()
        return Ready(len(batch), dense, labels, self.embeddings.request(batch.sparse))

    def step(self, ready: Ready, pending: list) -> tuple[torch.Tensor, list]:
        plan = self.plan
        fetched = self.embeddings.receive(ready.rows, self.device, plan.pin_memory, plan.non_blocking)
        dense = ready.dense.to(self.device, non_blocking=plan.non_blocking)
        labels = ready.labels.to(self.device, non_blocking=plan.non_blocking)
        logits = self.model(dense, self.embeddings.pooled(fetched))
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        *dense_grads, row_grad = torch.autograd.grad(loss, [*self.params, fetched.rows])
        grad = torch.cat([g.reshape(-1) for g in dense_grads])
        lr = warmed_up(self.spec.training.dense_learning_rate, self.counters.steps, self.warmup_steps)
        with torch.no_grad():  # Hogwild: no lock around the shared replica
            self.adagrad.addcmul_(grad, grad)
            self.flat.addcdiv_(grad, self.adagrad.sqrt().add_(ADAGRAD_EPS), value=-lr)
        # Overlap: the previous batch's sparse updates finished while this one computed.
        self.embeddings.wait(pending)
        return loss.detach(), self.embeddings.push_gradients(fetched, row_grad)

    def _stream(self) -> AbstractContextManager[Any]:
        """A CUDA stream of this worker's own (Hogwild workers would otherwise serialise on one)."""
        if self.plan.stream_per_worker:
            return torch.cuda.stream(torch.cuda.Stream(device=self.device))
        return nullcontext()

    def _worker(self, reader: ShardReader) -> None:
        sync = self.spec.training.sync
        pending: list = []
        batches: Prefetcher[Callable[[], Batch], Ready] = Prefetcher(
            reader.next, self.prepare, self.spec.training.prefetch_batches, self.stop, Pause, reader.wait_released,
            name=f"{threading.current_thread().name}-prefetch")
        try:
            batches.start()
            with self._stream():
                while not self.stop.is_set():
                    item = batches.get()
                    if item is None or item is END:
                        break
                    if isinstance(item, Pause):  # a checkpoint round: every update applied before it is saved
                        self.embeddings.wait(pending)
                        pending = []
                        reader.wait_at_pause(self._join_round)
                        continue
                    assert isinstance(item, Ready)
                    loss, pending = self.step(item, pending)
                    read_loss = (self.counters.steps + 1) % self.plan.loss_every == 0
                    steps = self.counters.add(item.size, float(loss) if read_loss else None)
                    reader.done_one()
                    if sync.mode is SyncMode.FOREGROUND and self.sync_client is not None and \
                            steps % sync.every_steps == 0:
                        self.exchange()
                self.embeddings.wait(pending)
        except BaseException as exc:
            self.errors.append(exc)
            self.stop.set()
            reader.close()
            raise

    def _report(self, reader: ShardReader, started: float, done: bool = False) -> None:
        """Progress for the coordinator. The rate counts what this incarnation trained: a replacement resumes
        its predecessor's samples, which it did not train (counting them made a job training 13k samples/s
        show 916k samples/s after trainer restarts)."""
        elapsed = max(1e-9, time.monotonic() - started)
        c = self.counters
        try:
            self.coord.report_progress(Progress(
                rank=self.rank, samples=c.samples, cursor=reader.cursor, loss=c.loss_ema,
                samples_per_second=(c.samples - self.resumed_samples) / elapsed, updated=time.time(), done=done,
                waiting_for=self.waiting_for()))
        except Exception as exc:  # Redis away: the workers keep training (the hot path needs no Redis)
            if not self._progress_unreported:
                log.warning("progress not reported, Redis unreachable; training goes on: %s", exc)
            self._progress_unreported = True
            if done:
                raise  # the last report says this trainer is done: it must not be lost
        else:
            self._progress_unreported = False

    # --- checkpoint rounds (full recovery's consistent cut, see ``rounds``) ----------------------------
    def _round_clients(self) -> list[Client]:
        return [*self.embeddings.clients, *([self.sync_client] if self.sync_client is not None else [])]

    def _join_round(self, round_id: int, cursor: int, abandon: bool = False) -> None:
        """Tell every server this trainer is at the round's cursor; each call returns once all trainers are."""
        request = rounds.round_request(round_id, self.rank, cursor, abandon)
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=len(self._round_clients())) as pool:
            calls = [pool.submit(c.call, rounds.ROUND_METHOD, request, rounds.ROUND_TIMEOUT_S + 30)
                     for c in self._round_clients()]
            saved = []
            for call in calls:
                try:
                    saved.append(bool(call.result().meta.get("saved")))
                except Exception as exc:  # a server failed meanwhile: its recovery restarts everyone anyway
                    log.warning("round %d: %s", round_id, exc)
                    saved.append(False)
        with self.counters.lock:
            self.counters.round_seconds += time.monotonic() - started
        if not abandon:
            log.info("trainer-%d: round %d at batch %d %s in %.3fs", self.rank, round_id, cursor,
                     "saved" if all(saved) else "not saved", time.monotonic() - started)

    def _rounds_loop(self, reader: ShardReader) -> None:
        while not self.stop.wait(ROUND_POLL_S):
            self._follow_rounds(reader)

    def _follow_rounds(self, reader: ShardReader) -> None:
        """While the effective mode is full, rounds replace the servers' own saves: trainer 0 announces
        them, every trainer pauses at the announced cursor."""
        try:
            if self.coord.recovery_mode() != "full":
                return
            if self.rank == 0:
                self._maybe_announce_round()
            announced = self.coord.announced_round()
        except Exception as exc:  # Redis unreachable: no round now
            log.warning("checkpoint rounds: %s", exc)
            return
        if announced is None or int(announced["round"]) <= self._joined_round:
            return
        round_id, cursor = int(announced["round"]), int(announced["cursor"])
        self._joined_round = round_id
        if not reader.pause_at(round_id, cursor):  # heard of it too late: release the others now
            threading.Thread(target=self._join_round, args=(round_id, cursor, True), daemon=True).start()

    def _maybe_announce_round(self) -> None:
        interval = self.spec.recovery.checkpoint.interval_seconds or self.coord.interval() or \
            self.spec.recovery.checkpoint.initial_interval_seconds
        now = time.monotonic()
        if now - self._last_round_at < interval:
            return
        progress = self.coord.all_progress(self.trainers)
        if len(progress) < self.trainers or any(p.done for p in progress.values()):
            return
        elapsed = max(1e-3, now - self._started_at)
        batches_per_s = self.counters.steps / elapsed
        # Far enough ahead that every trainer reads the announcement (each polls it every ROUND_POLL_S) and
        # that the cursors it was computed from (reported every progress tick) have not moved past it.
        training = self.spec.training
        lead = math.ceil(batches_per_s * (ROUND_POLL_S * 3 + training.progress_every_seconds)) + \
            max_in_flight(training.hogwild_threads, training.prefetch_batches)
        data = self.spec.data
        per_trainer = common_cursor_limit(self.source, self.trainers, data.batch_size, data.train_samples, data.epochs)
        cursor = rounds.next_round_cursor([p.cursor for p in progress.values()], lead, per_trainer - lead)
        if cursor is None:
            return
        last = self.coord.announced_round()
        self.coord.announce_round((int(last["round"]) if last else 0) + 1, cursor)
        self._last_round_at = now

    def waiting_for(self) -> tuple[str, ...]:
        """The servers a call of this trainer is blocked on right now (a lost shard's replacement)."""
        clients = [*self.embeddings.clients, *([self.sync_client] if self.sync_client is not None else [])]
        return tuple(c.peer for c in clients if c.waiting)

    def train(self, start_cursor: int = 0, resumed_samples: int = 0) -> dict:
        spec = self.spec
        batches = epoch_batch_makers(self.source, self.rank, self.trainers, start_cursor, spec.data.batch_size,
                                     spec.data.train_samples, spec.data.epochs)
        reader = ShardReader(batches, start_cursor, workers=spec.training.hogwild_threads)
        self.counters.samples = self.resumed_samples = resumed_samples
        started = time.monotonic()
        self._started_at = self._last_round_at = started
        announced = self.coord.announced_round()
        self._joined_round = int(announced["round"]) if announced else 0  # rounds before this incarnation
        threads = [threading.Thread(target=self._worker, args=(reader,), name=f"hogwild-{i}", daemon=True)
                   for i in range(spec.training.hogwild_threads)]
        shadow = None
        if spec.training.sync.mode is SyncMode.BACKGROUND and self.sync_client is not None:
            shadow = threading.Thread(target=self._shadow_loop, name="shadow-sync", daemon=True)
            shadow.start()
        for t in threads:
            t.start()
        rounds_thread = threading.Thread(target=self._rounds_loop, args=(reader,), name="rounds", daemon=True)
        rounds_thread.start()
        every = spec.training.eval_every_samples
        next_eval = (self.counters.samples // every + 1) * every if every else None
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(timeout=spec.training.progress_every_seconds)
            self._report(reader, started)
            if next_eval is not None and every and self.rank == 0 and self.counters.samples >= next_eval:
                next_eval = (self.counters.samples // every + 1) * every
                self._curve_point()
        self.stop.set()
        reader.close()
        if shadow is not None:
            shadow.join()
        if self.errors:
            raise RuntimeError(f"worker thread failed: {self.errors[0]!r}") from self.errors[0]
        wall = time.monotonic() - started
        if self.sync_client is not None and spec.training.sync.mode is not SyncMode.NONE:
            self.exchange(leaving=True)  # one last exchange so the final replica reflects the others
        self._report(reader, started, done=True)
        trained = self.counters.samples - resumed_samples
        return {
            "samples": self.counters.samples, "trained_samples": trained, "wall_seconds": wall,
            "samples_per_second": trained / max(wall, 1e-9), "syncs": self.counters.syncs,
            "sync_seconds": self.counters.sync_seconds, "steps": self.counters.steps,
            "round_seconds": round(self.counters.round_seconds, 3),
            "sync_gap_steps": self.counters.steps / max(1, self.counters.syncs), "cursor": reader.cursor,
            "start_cursor": start_cursor,
            "loss": self.counters.loss_ema,
        }

    def _curve_point(self) -> None:
        """One point of the learning curve, measured while the workers keep training."""
        try:
            result = self.evaluate(self.spec.training.eval_curve_samples)
            total = self.coord.total_samples(self.trainers)
            self.coord.log_curve_point(samples=total, auc=result["auc"], time=time.time())
        except Exception as exc:  # a shard being replaced: skip this point, training goes on
            log.warning("curve evaluation skipped: %s", exc)

    @torch.no_grad()
    def evaluate(self, samples: int) -> dict:
        """Held-out AUC, log loss and normalized entropy of this trainer's replica."""
        acc = StreamingEval()
        for batch in self.source.eval_batches(samples, EVAL_BATCH):
            fetched = self.embeddings.fetch(batch.sparse, self.device)
            logits = self.model(batch.dense.to(self.device), self.embeddings.pooled(fetched))
            acc.add(batch.labels.numpy(), torch.sigmoid(logits).float().cpu().numpy())
        return acc.result().to_dict()
