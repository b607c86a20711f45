"""Sync server: the central copy of the dense parameters for ShadowSync (S-EASGD, S-MA, S-BMUF).

It needs no checkpoint: a replacement starts empty and is re-seeded by the first trainer that
exchanges with it (ARCHITECTURE.md §4).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from dlrm_trainer import sync_algorithms as algo
from dlrm_trainer.checkpoint import CheckpointStore, save_dense
from dlrm_trainer.rpc import Message, Server

log = logging.getLogger("dlrm_trainer.sync_server")

SERVICE = "tj.SyncServer"
STALENESS_S = 10.0  # a trainer silent this long no longer counts toward MA/BMUF averages


class SyncService:
    def __init__(self, trainers: int, block_momentum: float | None, block_lr: float) -> None:
        self.state = algo.CentralState()
        self.trainers = trainers
        self.block_momentum = block_momentum
        self.block_lr = block_lr

    def exchange(self, request: Message) -> Message:
        x_i = request.tensors["params"]
        meta = request.meta
        algorithm, rank = meta["algorithm"], int(meta["rank"])
        now = time.monotonic()
        if algorithm == "easgd":
            d = algo.easgd_server(self.state, x_i, float(meta["alpha"]))
            return Message({"delta": d}, {"exchanges": self.state.exchanges})
        if algorithm == "ma":
            mean = algo.ma_server(self.state, rank, x_i, now, STALENESS_S)
            return Message({"target": mean}, {"exchanges": self.state.exchanges, "version": self.state.exchanges})
        if algorithm == "bmuf":
            start, version = algo.bmuf_server(self.state, rank, x_i, now, STALENESS_S, self.trainers,
                                              self.block_momentum, self.block_lr)
            return Message({"target": start}, {"exchanges": self.state.exchanges, "version": version})
        raise ValueError(f"unknown sync algorithm {algorithm!r}")

    def pull(self, request: Message) -> Message:
        """The central copy, for a replacement trainer; empty when not seeded yet."""
        with self.state.lock:
            center = self.state.center
            return Message({"center": center.clone()} if center is not None else {},
                           {"seeded": center is not None})


class DenseCheckpointer(threading.Thread):
    """Saves the central copy at the checkpoint interval: full recovery rolls it back to this."""

    def __init__(self, service: SyncService, root: Path | str | CheckpointStore, interval: Callable[[], float],
                 progress: Callable[[], int], periodic: Callable[[], bool] = lambda: True) -> None:
        super().__init__(name="dense-checkpoint", daemon=True)
        self.service, self.root, self.interval, self.progress = service, root, interval, progress
        self.periodic = periodic  # False while checkpoint rounds own the saves (full recovery)
        self.stopped = threading.Event()

    def start(self) -> DenseCheckpointer:  # type: ignore[override]
        super().start()
        return self

    def run(self) -> None:
        while not self.stopped.wait(self.interval()):
            try:
                if not self.periodic():
                    continue
            except Exception as exc:  # Redis unreachable: keep saving on the interval
                log.warning("checkpoint mode unreadable: %s", exc)
            with self.service.state.lock:
                center = None if self.service.state.center is None else self.service.state.center.clone()
            if center is None:
                continue
            try:
                save_dense(self.root, center, self.progress())
            except Exception as exc:  # storage trouble must not stop the sync server
                log.error("dense checkpoint failed: %s", exc)

    def stop(self) -> None:
        self.stopped.set()


def serve(service: SyncService, host: str = "0.0.0.0", port: int = 0,
          extra: Mapping[str, Callable[[Message], Message]] | None = None) -> Server:
    server = Server(SERVICE, {"Exchange": service.exchange, "Pull": service.pull, **(extra or {})}, host, port,
                    workers=8)
    server.start()
    return server
