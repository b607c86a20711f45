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
ROUND_WAIT_S = 5.0  # an MA/BMUF round closes without a trainer that has not come by then


class SyncService:
    def __init__(self, trainers: int, block_momentum: float | None, block_lr: float,
                 round_wait_s: float = ROUND_WAIT_S) -> None:
        self.state = algo.CentralState()
        self.trainers = trainers
        self.block_momentum = block_momentum
        self.block_lr = block_lr
        self.ma = algo.AveragingRounds(self.state, STALENESS_S, round_wait_s, algo.ma_close)
        self.bmuf = algo.AveragingRounds(self.state, STALENESS_S, round_wait_s,
                                         algo.bmuf_close(block_momentum, block_lr, trainers))

    def exchange(self, request: Message) -> Message:
        x_i = request.tensors["params"]
        meta = request.meta
        algorithm, rank = meta["algorithm"], int(meta["rank"])
        now = time.monotonic()
        if algorithm == "easgd":
            d = algo.easgd_server(self.state, x_i, float(meta["alpha"]))
            return Message({"delta": d}, {"exchanges": self.state.exchanges})
        if algorithm in ("ma", "bmuf"):
            rounds = self.ma if algorithm == "ma" else self.bmuf
            target, version = rounds.exchange(rank, x_i, now, leaving=bool(meta.get("leaving", False)))
            return Message({"target": target}, {"exchanges": self.state.exchanges, "version": version})
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
                 progress: Callable[[], int], periodic: Callable[[], bool] = lambda: True,
                 on_result: Callable[[Exception | None], None] = lambda error: None) -> None:
        super().__init__(name="dense-checkpoint", daemon=True)
        self.service, self.root, self.interval, self.progress = service, root, interval, progress
        self.on_result = on_result  # each save's outcome (None: saved), for the job's CheckpointFailing condition
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
                self._report(exc)
            else:
                self._report(None)

    def _report(self, error: Exception | None) -> None:
        try:
            self.on_result(error)
        except Exception as exc:  # Redis away: the next save reports again
            log.warning("checkpoint outcome not recorded: %s", exc)

    def stop(self) -> None:
        self.stopped.set()


def serve(service: SyncService, host: str = "0.0.0.0", port: int = 0,
          extra: Mapping[str, Callable[[Message], Message]] | None = None) -> Server:
    # MA/BMUF exchanges wait in a round for every trainer: each needs a worker thread of its own, with room
    # for Pull and checkpoint-round calls beside them.
    server = Server(SERVICE, {"Exchange": service.exchange, "Pull": service.pull, **(extra or {})}, host, port,
                    workers=max(8, 2 * service.trainers + 4))
    server.start()
    return server
