"""Distributed checkpoints (torch.distributed.checkpoint) saved when the tuned interval says so, and the
newest complete one loaded after a restart.

A save goes to a staging directory; once every rank wrote its part (DCP's collective save returns on every
rank only then), rank 0 renames it to ``step-<N>``: a checkpoint that has its final name is complete, so a
failure in the middle of a save never leaves one that a restart would load half of. Rank 0 records what the
save cost the training loop (the tuner's ``o_save``) and keeps the newest ``keep`` checkpoints.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.state_dict_saver import AsyncSaveResponse

from trainingjob_torch import decisions
from trainingjob_torch.runtime import Context

log = logging.getLogger("trainingjob.torch")

SAVER = "workers"  # the job's distributed save, as the CheckpointFailing condition names it


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    for line in text.splitlines():
        if "Errno" in line or "No space" in line:
            return line.strip()[:300]
    return text.splitlines()[0][:300]


@dataclass
class _Pending:
    """A save whose files are being written."""

    step: int
    staging: Path
    final: Path
    started: float
    blocked_s: float | None  # how long the training loop waited for it (None: all of it, a synchronous save)
    future: Future[Any] | None


class Checkpointer:
    """``asynchronous``: stage the state in host memory and write it in the background (DCP's ``async_save``) so
    training goes on while it is written: what helps when a save takes long against a step (large models,
    slow storage). The tuner then counts only the staging as a save's cost."""

    def __init__(self, ctx: Context, directory: str | os.PathLike[str] | None = None, keep: int = 2,
                 asynchronous: bool = False) -> None:
        self.ctx = ctx
        self.asynchronous = asynchronous
        self.pending: _Pending | None = None
        # DCP's background save coordinates the ranks on a group of its own (gloo), apart from the training one.
        self._async_group = dist.new_group(backend="gloo") if asynchronous and ctx.distributed else None
        ctx.closers.append(self.close)
        job = os.environ.get("TJ_JOB")
        base = Path(directory) if directory is not None else Path(ctx.checkpoint_dir)
        self.directory = base / job if directory is None and job else base
        self.keep = keep
        self.last_save = time.monotonic()  # the first interval counts from the start (or the resume)
        self.last_saved_step = -1
        self.saves = 0
        self.failures = 0  # saves failed in a row

    # --- loading ------------------------------------------------------------------------------
    def newest(self) -> tuple[Path, int] | None:
        if not self.directory.is_dir():
            return None
        entries = {p.name: os.listdir(p) for p in self.directory.iterdir() if p.is_dir()}
        found = decisions.newest_complete(entries)
        return None if found is None else (self.directory / found[0], found[1])

    def load_latest(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    extra: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        """Load the newest complete checkpoint into ``model`` (and ``optimizer``) on every rank; returns its step
        and the ``extra`` values saved with it over the defaults given here (0 and ``extra`` when there is
        none). Every rank sees the same
        directory (a shared volume), so every rank picks the same checkpoint."""
        found = self.newest()
        self._barrier()
        extra = dict(extra or {})
        if found is None:
            log.info("no complete checkpoint in %s: starting at step 0", self.directory)
            return 0, extra
        path, step = found
        started = time.monotonic()
        model_sd, optim_sd = get_state_dict(model, optimizer) if optimizer is not None else (
            get_state_dict(model, [])[0], None)
        # ``extra`` travels as one JSON string: DCP loads only the keys its template names, and a script's
        # template cannot know what nested values an earlier incarnation saved.
        state: dict[str, Any] = {"model": model_sd, "extra": {"step": step, "json": ""}}
        if optim_sd is not None:
            state["optimizer"] = optim_sd
        dcp.load(state, checkpoint_id=str(path))
        if optimizer is not None:
            set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        else:
            model.load_state_dict(state["model"])
        self.last_saved_step = step
        self.last_save = time.monotonic()
        self.ctx.resumed_from = step
        seconds = time.monotonic() - started
        if self.ctx.is_main:
            log.info("loaded %s (step %d) in %.2fs", path.name, step, seconds)
            if self.ctx.coord is not None:
                self.ctx._redis(lambda: self.ctx.coord.record_cost("pt_load", seconds))  # type: ignore[union-attr]
        saved = state["extra"].get("json") or "{}"
        return step, {**extra, **json.loads(saved)}

    # --- saving -------------------------------------------------------------------------------
    def due(self, step: int) -> bool:
        """Whether to save now: rank 0 decides from the interval, every rank follows (one tiny broadcast)."""
        decision = self.ctx.is_main and self.pending is None and decisions.save_due(
            now=time.monotonic(), last_save=self.last_save, interval_s=self.ctx.interval_s(), step=step,
            last_saved_step=self.last_saved_step)
        if self.ctx.distributed:
            flag = torch.tensor([1 if decision else 0], dtype=torch.int32,
                                device=self.ctx.device if self.ctx.device.type == "cuda" else "cpu")
            dist.broadcast(flag, src=0)
            decision = bool(flag.item())
        return decision

    def maybe_save(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                   extra: dict[str, Any] | None = None) -> bool:
        """Save when due; a save that fails (storage full, unwritable) is reported and training goes on: the job's
        CheckpointFailing condition says so, and ``maxConsecutiveFailures`` failures in a row fail the job."""
        self._poll_pending()
        if not self.due(step):
            return False
        try:
            self.save(step, model, optimizer, extra)
        except (Exception, CheckpointException) as error:  # every rank gets DCP's CheckpointException (a
            # BaseException): all carry on together
            self._failed(step, error)
            return False
        if not self.asynchronous:
            self._succeeded()
        return True

    def _failed(self, step: int, error: BaseException) -> None:
        self.last_save = time.monotonic()  # the next attempt one interval later, not at every step
        self.failures += 1
        why = _first_line(error)
        log.error("checkpoint at step %d failed, training goes on: %s", step, why)
        if self.ctx.is_main:
            shutil.rmtree(self.directory / decisions.staging_name(step, self.ctx.generation), ignore_errors=True)
            if self.ctx.coord is not None:
                self.ctx._redis(lambda: self.ctx.coord.set_checkpoint_error(SAVER, why))  # type: ignore[union-attr]

    def _succeeded(self) -> None:
        if self.ctx.is_main and self.ctx.coord is not None and self.failures:
            self.ctx._redis(lambda: self.ctx.coord.set_checkpoint_error(SAVER, None))  # type: ignore[union-attr]
        self.failures = 0

    def save(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
             extra: dict[str, Any] | None = None) -> Path:
        """Save now (every rank calls it). ``extra``: JSON-serialisable values to restore with the model (a data
        position, an evaluation). Asynchronous: returns once the state is staged in host memory; the files are
        written in the background and the checkpoint completes (renamed, logged) at a later call, or at
        ``close``."""
        started = time.monotonic()
        staging = self.directory / decisions.staging_name(step, self.ctx.generation)
        final = self.directory / decisions.checkpoint_name(step)
        self._wait_pending()  # one save at a time
        if self.ctx.is_main:
            self.directory.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
        self._barrier()
        if optimizer is not None:
            model_sd, optim_sd = get_state_dict(model, optimizer)
            state: dict[str, Any] = {"model": model_sd, "optimizer": optim_sd}
        else:
            state = {"model": get_state_dict(model, [])[0]}
        state["extra"] = {"step": step, "json": json.dumps(extra or {})}
        if self.asynchronous:
            response = dcp.async_save(state, checkpoint_id=str(staging), process_group=self._async_group)
            future = response.upload_completion if isinstance(response, AsyncSaveResponse) else response
            self.pending = _Pending(step, staging, final, started, time.monotonic() - started, future)
            self.last_save = time.monotonic()
            return final
        dcp.save(state, checkpoint_id=str(staging))
        self._barrier()  # every rank's files are written
        self._complete(_Pending(step, staging, final, started, None, None))
        self._barrier()
        return final

    def close(self) -> None:
        """Complete a save still being written (``ctx.finish`` calls it)."""
        self._wait_pending()

    def _poll_pending(self) -> None:
        """Complete the asynchronous save once rank 0's part (which DCP finishes last, after every rank's) is
        written; report a failed one."""
        if self.pending is not None and self.pending.future is not None and self.pending.future.done():
            self._wait_pending()

    def _wait_pending(self) -> None:
        pending, self.pending = self.pending, None
        if pending is None or pending.future is None:
            return
        try:
            pending.future.result()
        except (Exception, CheckpointException) as error:
            self._failed(pending.step, error)
            return
        self._complete(pending)
        self._succeeded()

    def _complete(self, pending: _Pending) -> None:
        """Every rank's files are written: rank 0 gives the checkpoint its final name and logs what it cost."""
        if self.ctx.is_main:
            if pending.final.exists():
                shutil.rmtree(pending.final)
            os.replace(pending.staging, pending.final)
            _fsync_dir(self.directory)
            for name in decisions.to_prune(os.listdir(self.directory), self.keep):
                shutil.rmtree(self.directory / name, ignore_errors=True)
        total = time.monotonic() - pending.started
        # The training time a save costs (the tuner's o_save): all of a synchronous one, the staging of an
        # asynchronous one (the write overlaps training).
        blocked = total if pending.blocked_s is None else pending.blocked_s
        if pending.future is None:
            self.last_save = time.monotonic()
        self.last_saved_step = pending.step
        self.saves += 1
        if self.ctx.is_main:
            log.info("saved %s in %.3fs (training blocked %.3fs)", pending.final.name, total, blocked)
            coord = self.ctx.coord
            if coord is not None:
                self.ctx._redis(lambda: coord.record_cost("pt_save", blocked))
                self.ctx._redis(lambda: coord.log_checkpoint(
                    kind="dcp", step=pending.step, seconds=round(blocked, 4), write_seconds=round(total, 4),
                    asynchronous=pending.future is not None, time=time.time(), generation=self.ctx.generation))

    def _barrier(self) -> None:
        if self.ctx.distributed:
            dist.barrier()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
