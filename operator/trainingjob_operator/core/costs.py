"""PURE: what one checkpoint save costs training, measured, for the tuner (``o_save``).

A save stalls the shard's RPCs while the selected rows are copied under its lock (``stall``), then
serialises, hashes and writes them in a background thread (``write``). The write takes no lock, but on
a busy node it takes CPU, memory bandwidth and network from the server's RPC threads, and trainers slow
down while it runs. The training time lost per save is therefore::

    o_save = stall + write * slowdown

where ``slowdown`` is the fraction of the job's throughput lost while a write runs, measured from the
trainers' own throughput traces (``Coordination.throughput_traces``) against the windows in which
writes ran (the checkpoint log): a least-squares fit of each trace interval's throughput, relative to
that trainer's median, on the share of the interval a write covered. Counting only the stall (as before
issue #9) made saves look free on a 2-core machine where a write slowed training by a third.
Full and partial (MFU/SSU) saves are measured separately: what a partial save saves is the point.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Trace = Sequence[tuple[float, int]]  # (unix time, samples trained by one trainer)

MAX_TRACE_GAP_S = 5.0  # a longer gap between two progress reports is a restart, not a rate
MIN_POINTS = 3  # intervals with and without a write needed before a slowdown is reported


@dataclass(frozen=True)
class SaveCost:
    """One kind of save: medians of the measured stall and write, and the slowdown while writing."""

    stall_s: float | None
    write_s: float | None
    slowdown: float | None

    @property
    def seconds(self) -> float | None:
        """Training time lost per save; the write counts only once its slowdown is measured."""
        if self.stall_s is None:
            return None
        return self.stall_s + (self.write_s or 0.0) * (self.slowdown or 0.0)

    def to_wire(self) -> dict[str, float | None]:
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 6)

        return {"stallSeconds": r(self.stall_s), "writeSeconds": r(self.write_s),
                "writeSlowdown": r(self.slowdown), "seconds": r(self.seconds)}


def write_windows(checkpoint_log: Sequence[Mapping[str, Any]]) -> list[tuple[float, float]]:
    """(start, end) of every logged write: it ended when it was logged and lasted ``write_s``."""
    windows = []
    for entry in checkpoint_log:
        end, write = entry.get("logged_at"), entry.get("write_s")
        if isinstance(end, int | float) and isinstance(write, int | float) and write > 0:
            windows.append((float(end) - float(write), float(end)))
    return sorted(windows)


def _covered(start: float, end: float, windows: Sequence[tuple[float, float]]) -> float:
    """Seconds of [start, end) under any window (windows may overlap: merged)."""
    covered, reach = 0.0, start
    for w_start, w_end in windows:
        if w_end <= reach or w_start >= end:
            continue
        lo, hi = max(w_start, reach), min(w_end, end)
        if hi > lo:
            covered += hi - lo
            reach = hi
    return covered


def write_slowdown(traces: Mapping[int, Trace], windows: Sequence[tuple[float, float]]) -> float | None:
    """The fraction of throughput lost while a write runs, in [0, 1]; None without enough evidence."""
    xs: list[float] = []
    ys: list[float] = []
    ws: list[float] = []
    for trace in traces.values():
        intervals = []
        for (t0, s0), (t1, s1) in itertools.pairwise(trace):
            dt = t1 - t0
            if 0.0 < dt <= MAX_TRACE_GAP_S and s1 >= s0:
                intervals.append((t0, t1, (s1 - s0) / dt))
        rates = [rate for _, _, rate in intervals if rate > 0]
        if not rates:
            continue
        typical = statistics.median(rates)
        for t0, t1, rate in intervals:
            xs.append(_covered(t0, t1, windows) / (t1 - t0))
            ys.append(rate / typical)
            ws.append(t1 - t0)
    if sum(1 for x in xs if x > 0.1) < MIN_POINTS or sum(1 for x in xs if x == 0.0) < MIN_POINTS:
        return None
    total = sum(ws)
    mean_x = sum(w * x for w, x in zip(ws, xs, strict=True)) / total
    mean_y = sum(w * y for w, y in zip(ws, ys, strict=True)) / total
    var_x = sum(w * (x - mean_x) ** 2 for w, x in zip(ws, xs, strict=True))
    if var_x <= 0.0:
        return None
    slope = sum(w * (x - mean_x) * (y - mean_y) for w, x, y in zip(ws, xs, ys, strict=True)) / var_x
    intercept = mean_y - slope * mean_x
    if intercept <= 0.0:
        return None
    return min(1.0, max(0.0, -slope / intercept))


def save_costs(costs: Mapping[str, Sequence[float]], slowdown: float | None) -> dict[str, SaveCost]:
    """Full and partial save costs from the measured lists (``stall_full``, ``write_full``, ...)."""
    def median(name: str) -> float | None:
        values = costs.get(name) or ()
        return statistics.median(values) if values else None

    return {kind: SaveCost(median(f"stall_{kind}"), median(f"write_{kind}"), slowdown) for kind in ("full", "partial")}
