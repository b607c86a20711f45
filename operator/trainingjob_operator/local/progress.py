"""Progress display for `trainingjob run`: a live bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from trainingjob_operator.local.supervisor import Snapshot


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def describe(s: Snapshot) -> str:
    return (f"{s.phase.value:<10} {s.running}/{s.desired} up  {_fmt(s.samples_per_second, ',.0f')} {s.unit}/s  "
            f"loss {_fmt(s.loss, '.4f')}  failures {s.failures}  gen {s.generation}"
            + (f"  waiting for {', '.join(s.waiting_for)}" if s.waiting_for else ""))


class ProgressDisplay:
    def __init__(self, job_name: str, console: Console | None = None, line_every_s: float = 10.0) -> None:
        self.console = console or Console(stderr=True)
        self.job_name = job_name
        self.line_every_s = line_every_s
        self._last_line = 0.0
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> ProgressDisplay:
        if self.console.is_terminal:
            self._progress = Progress(
                TextColumn(f"[bold]{self.job_name}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.description}"), TimeElapsedColumn(), console=self.console, transient=False)
            self._progress.__enter__()
            self._task = self._progress.add_task("starting", total=None)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.__exit__(exc_type, exc, tb)

    def update(self, s: Snapshot) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=min(s.samples, s.target_samples), total=s.target_samples,
                                  description=describe(s))
            return
        now = time.monotonic()
        if now - self._last_line >= self.line_every_s or s.phase.finished:
            self._last_line = now
            pct = 100.0 * s.samples / max(1, s.target_samples)
            print(f"[{s.elapsed_s:7.1f}s] {s.samples:>10,}/{s.target_samples:,} ({pct:5.1f}%)  {describe(s)}",
                  file=sys.stderr, flush=True)
