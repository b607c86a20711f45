"""A worker's batches, prepared ahead while it computes: the trainer's input pipeline.

Per batch, a trainer spends milliseconds outside the dense model: generating or parsing the batch,
deduplicating its ids, asking the embedding servers for the rows. On the critical path that is as
long as the forward and backward pass itself. Each Hogwild worker therefore gets a prefetch thread
that does all of it for the next ``depth`` batches (a bounded queue) while the worker computes the
current one; the worker only waits for rows already on their way.

What does not change: the reader hands out cursors in order, under its lock, and a prefetched
batch counts as in flight until its worker has applied it, so the resumable cursor still means
"every batch before it was applied" and a replacement re-reads at most the in-flight batches
(``ShardReader.max_in_flight``). A checkpoint round's pause reaches a worker after every batch
before the round's cursor, as before.

The device plan is the GPU path's part of the same idea: on CUDA, batches are pinned in the
prefetch thread so the worker's host-to-device copies can be asynchronous, each worker computes on
a CUDA stream of its own, and the loss is read back (a host sync) only every few steps.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

QUEUE_POLL_S = 0.1  # how often a blocked worker or prefetcher looks at the stop flag


@dataclass(frozen=True)
class DevicePlan:
    """How a trainer moves data to its dense device; pure, so CPU tests can check the CUDA choices."""

    pin_memory: bool  # page-locked host buffers (asynchronous host-to-device copies need them)
    non_blocking: bool  # copies overlap with compute on the worker's stream
    stream_per_worker: bool  # Hogwild workers do not serialise on the default stream
    loss_every: int  # read the loss back to the host every this many steps (each read is a sync)


def device_plan(device: torch.device, loss_every_on_accelerator: int = 20) -> DevicePlan:
    if device.type == "cuda":
        return DevicePlan(pin_memory=True, non_blocking=True, stream_per_worker=True,
                          loss_every=max(1, loss_every_on_accelerator))
    return DevicePlan(pin_memory=False, non_blocking=False, stream_per_worker=False, loss_every=1)


class End:
    """The reader has no more batches for this worker."""


END = End()

Item = TypeVar("Item")
Prepared = TypeVar("Prepared")


@dataclass
class _Failed:
    error: BaseException


class Prefetcher(Generic[Item, Prepared]):
    """Runs ``prepare`` on what ``take`` hands out, ``depth`` items ahead of the consumer, in a thread.

    ``take`` returns an item to prepare, a marker to pass through unprepared (``passthrough``; after
    one, the thread calls ``after_passthrough`` before taking again: a checkpoint round waits there
    until it is released), or ``None`` at the end. ``depth == 0`` prepares inline in :meth:`get` (the
    unpipelined trainer, kept for comparison). An error in the thread is raised by the next :meth:`get`.
    """

    def __init__(self, take: Callable[[], object], prepare: Callable[[Item], Prepared], depth: int,
                 stop: threading.Event, passthrough: type, after_passthrough: Callable[[], None],
                 name: str = "prefetch") -> None:
        if depth < 0:
            raise ValueError(f"depth must be >= 0, got {depth}")
        self._take, self._prepare, self.depth, self._stop = take, prepare, depth, stop
        self._passthrough, self._after_passthrough = passthrough, after_passthrough
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(1, depth))
        self._thread = threading.Thread(target=self._run, name=name, daemon=True) if depth else None

    def start(self) -> None:
        if self._thread is not None:
            self._thread.start()

    def get(self) -> Prepared | object | End | None:
        """The next prepared item, a passthrough marker, ``END``, or ``None`` once the trainer stops."""
        if self._thread is None:
            return self._next()
        while not self._stop.is_set():
            try:
                got = self._queue.get(timeout=QUEUE_POLL_S)
            except queue.Empty:
                continue
            if isinstance(got, _Failed):
                raise got.error
            return got
        return None

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _next(self) -> Prepared | object | End:
        item = self._take()
        if item is None:
            return END
        if isinstance(item, self._passthrough):
            return item
        return self._prepare(item)  # type: ignore[arg-type]

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                got = self._next()
                if not self._put(got) or got is END:
                    return
                if isinstance(got, self._passthrough):
                    self._after_passthrough()
        except BaseException as exc:  # handed to the consumer, which owns error handling
            self._put(_Failed(exc))

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=QUEUE_POLL_S)
                return True
            except queue.Full:
                continue
        return False
