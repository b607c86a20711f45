"""ShadowSync's three algorithms as plain functions on flat parameter vectors.

Server side (the central copy on the sync server) and trainer side (applying the answer to the
live replica while Hogwild threads keep writing to it). PAPERS.md §2.3 gives the update rules;
the background form keeps the progress a trainer made while the exchange was in flight
(``x_i <- result + (x_i_now - x_i_snapshot)``) so no worker update is silently dropped.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import torch


@dataclass
class CentralState:
    """The sync server's state. ``center`` is None until the first trainer seeds it."""

    center: torch.Tensor | None = None
    snapshots: dict[int, tuple[float, torch.Tensor]] = field(default_factory=dict)  # rank -> (time, x_i)
    block_delta: torch.Tensor | None = None  # BMUF momentum term
    block_round: set[int] = field(default_factory=set)  # ranks that contributed to the open block
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


def _live_mean(state: CentralState, now: float, staleness_s: float) -> torch.Tensor:
    live = [x for t, x in state.snapshots.values() if now - t <= staleness_s]
    return torch.stack(live).mean(dim=0)


def ma_server(state: CentralState, rank: int, x_i: torch.Tensor, now: float, staleness_s: float) -> torch.Tensor:
    """Model averaging over the latest snapshot of every trainer seen within ``staleness_s``
    (a failed trainer drops out instead of stalling the others)."""
    with state.lock:
        state.exchanges += 1
        state.snapshots[rank] = (now, x_i.clone())
        state.center = _live_mean(state, now, staleness_s)
        return state.center.clone()


def bmuf_server(
    state: CentralState, rank: int, x_i: torch.Tensor, now: float, staleness_s: float,
    trainers: int, block_momentum: float | None, block_lr: float,
) -> tuple[torch.Tensor, int]:
    """Blockwise model-update filtering. A block closes once every live trainer contributed:
    G = mean - x_g; Delta = eta*Delta + zeta*G; x_g += Delta. Returns (Nesterov start point
    x_g + eta*Delta, block version); trainers only jump when the version changed."""
    eta = block_momentum if block_momentum is not None else 1.0 - 1.0 / max(1, trainers)
    with state.lock:
        state.exchanges += 1
        state.snapshots[rank] = (now, x_i.clone())
        if state.center is None:
            state.center = x_i.clone()
            state.block_delta = torch.zeros_like(x_i)
        assert state.block_delta is not None
        state.block_round.add(rank)
        live = {r for r, (t, _) in state.snapshots.items() if now - t <= staleness_s}
        if live and live <= state.block_round:
            g = _live_mean(state, now, staleness_s) - state.center
            state.block_delta.mul_(eta).add_(g, alpha=block_lr)
            state.center += state.block_delta
            state.block_round = set()
            state.block_version += 1
        return state.center + eta * state.block_delta, state.block_version


def replace_keeping_progress(x_live: torch.Tensor, x_snapshot: torch.Tensor, target: torch.Tensor) -> None:
    """x_live <- target + (x_live - x_snapshot), in place: keeps updates made during the exchange."""
    x_live.add_(target.to(x_live.device) - x_snapshot.to(x_live.device))


@dataclass
class SyncStats:
    exchanges: int = 0
    seconds: float = 0.0
    last_at: float = field(default_factory=time.monotonic)
