"""ShadowSync's three algorithms as plain functions on flat parameter vectors.

Server side (the central copy on the sync server) and trainer side (applying the answer to the
live replica while Hogwild threads keep writing to it). PAPERS.md §2.3 gives the update rules;
the background form keeps the progress a trainer made while the exchange was in flight
(``x_i <- result + (x_i_now - x_i_snapshot)``) so no worker update is silently dropped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class CentralState:
    """The sync server's state. ``center`` is None until the first trainer seeds it."""

    center: torch.Tensor | None = None
    block_delta: torch.Tensor | None = None  # BMUF momentum term
    block_version: int = 0
    exchanges: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def easgd_server(state: CentralState, x_i: torch.Tensor, alpha: float) -> torch.Tensor:
    """Elastic averaging: the center moves toward the worker by d; the worker gets d back
    and moves toward the center by the same amount. Returns d."""
    with state.lock:
        state.exchanges += 1
        if state.center is None:
            state.center = x_i.clone()  # seed (first start, or a replaced sync server: CPR §4)
            return torch.zeros_like(x_i)
        d = alpha * (x_i - state.center)
        state.center += d
        return d


def easgd_trainer(x_live: torch.Tensor, d: torch.Tensor) -> None:
    """Pull the live replica toward the center by d, in place."""
    x_live.sub_(d.to(x_live.device))


class AveragingRounds:
    """S-MA and S-BMUF as rounds: every live trainer's replica *of the same round* is averaged.

    The shadow threads of the trainers call in at their own times. The first to arrive opens round ``r``;
    each caller adds its replica and waits until every live trainer (one that exchanged within
    ``staleness_s``, itself included) has added one, or ``wait_s`` passed (a trainer that died or stalls
    cannot hold the others longer), then every caller gets the same answer: the round's mean (MA) or the
    block's Nesterov start point (BMUF), and the round number as the version. Averaging one trainer's fresh
    replica with its peers' stale snapshots instead (each exchange on its own) throws progress away: with
    every trainer adding the same update, replicas kept only 0.80 / 0.73 / 0.70 of it at 2 / 4 / 8 trainers
    (issue #9). A trainer keeps what its workers did while it waited (:func:`replace_keeping_progress`).
    """

    def __init__(self, state: CentralState, staleness_s: float, wait_s: float,
                 close: Callable[[CentralState, torch.Tensor], torch.Tensor]) -> None:
        self.state, self.staleness_s, self.wait_s, self.close = state, staleness_s, wait_s, close
        self._cond = threading.Condition(state.lock)
        self._round = 0
        self._parts: dict[int, torch.Tensor] = {}  # the open round's replicas, by rank
        self._results: dict[int, torch.Tensor] = {}  # closed round -> answer (the last few)
        self._seen: dict[int, float] = {}  # rank -> when it last exchanged

    def exchange(self, rank: int, x_i: torch.Tensor, now: float, leaving: bool = False) -> tuple[torch.Tensor, int]:
        """Add ``x_i`` to the open round and wait for its answer. ``leaving``: the trainer's last exchange (its
        data is done): later rounds do not wait for it."""
        with self._cond:
            self.state.exchanges += 1
            self._seen[rank] = now
            if self.state.center is None:
                self.state.center = x_i.clone()  # seed: the first replica (first start, or a replaced server)
            round_id = self._round
            self._parts[rank] = x_i.clone()
            if self._complete(now):
                self._close_round()
            else:
                self._cond.wait_for(lambda: round_id in self._results, timeout=self.wait_s)
                if round_id not in self._results:  # timed out: close with whoever came
                    self._close_round()
            if leaving:
                self._seen.pop(rank, None)
            return self._results[round_id].clone(), round_id

    def _complete(self, now: float) -> bool:
        live = {r for r, t in self._seen.items() if now - t <= self.staleness_s}
        return live <= self._parts.keys()

    def _close_round(self) -> None:
        mean = torch.stack(list(self._parts.values())).mean(dim=0)
        self._results[self._round] = self.close(self.state, mean)
        self._results.pop(self._round - 8, None)
        self._parts = {}
        self._round += 1
        self._cond.notify_all()


def ma_close(state: CentralState, mean: torch.Tensor) -> torch.Tensor:
    """Model averaging: the center is the round's mean, and every trainer takes it."""
    state.center = mean
    return mean.clone()


def bmuf_close(block_momentum: float | None, block_lr: float, trainers: int
               ) -> Callable[[CentralState, torch.Tensor], torch.Tensor]:
    """Blockwise model-update filtering, one block per round: ``G = mean - x_g; Delta = eta*Delta + zeta*G;
    x_g += Delta``; every trainer takes the Nesterov start point ``x_g + eta*Delta`` at the same boundary."""
    eta = block_momentum if block_momentum is not None else 1.0 - 1.0 / max(1, trainers)

    def close(state: CentralState, mean: torch.Tensor) -> torch.Tensor:
        assert state.center is not None
        if state.block_delta is None:
            state.block_delta = torch.zeros_like(mean)
        state.block_delta.mul_(eta).add_(mean - state.center, alpha=block_lr)
        state.center = state.center + state.block_delta
        state.block_version += 1
        return state.center + eta * state.block_delta

    return close


def replace_keeping_progress(x_live: torch.Tensor, x_snapshot: torch.Tensor, target: torch.Tensor) -> None:
    """x_live <- target + (x_live - x_snapshot), in place: keeps updates made during the exchange."""
    x_live.add_(target.to(x_live.device) - x_snapshot.to(x_live.device))


@dataclass
class SyncStats:
    exchanges: int = 0
    seconds: float = 0.0
    last_at: float = field(default_factory=time.monotonic)
