"""The process group and the coordination store, as a script sees them."""

from __future__ import annotations

import datetime
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import redis
import torch
import torch.distributed as dist

from trainingjob_operator.coordination import Coordination, StepProgress

log = logging.getLogger("trainingjob.torch")

PROGRESS_EVERY_S = 1.0


@dataclass
class Context:
    """One process of the job: its ranks, its device, and (rank 0) its reports to the coordination store."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    generation: int
    coord: Coordination | None
    checkpoint_dir: str
    fixed_interval_s: float | None = None
    initial_interval_s: float = 60.0
    tokens: int = 0
    resumed_from: int | None = None
    _last_report: float = 0.0
    _window: list[tuple[float, int]] = field(default_factory=list)
    _reported_resume: bool = False
    _last: tuple[int, float | None, int | None] | None = None
    closers: list[Any] = field(default_factory=list)  # what finish completes first (a save being written)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def report(self, step: int, *, loss: float | None, tokens: int, total_steps: int | None = None,
               final: bool = False) -> None:
        """Count ``tokens`` trained in this step by this rank's group (pass the global count on rank 0, or each
        rank's own: only rank 0's is reported); rank 0 writes progress about once a second."""
        self.tokens += tokens
        self._last = (step, loss, total_steps)
        if not self.is_main or self.coord is None:
            return
        now = time.time()
        if not self._reported_resume:
            self._reported_resume = True
            self._redis(lambda: self.coord.record_resume(  # type: ignore[union-attr]
                self.generation, time=now, step=step, resumed_from=self.resumed_from))
        if now - self._last_report < PROGRESS_EVERY_S and not final:
            return
        self._window = [*(p for p in self._window if now - p[0] <= 10.0), (now, self.tokens)]
        first = self._window[0]
        rate = (self.tokens - first[1]) / (now - first[0]) if now > first[0] else None
        self._last_report = now
        progress = StepProgress(step=step, loss=loss, tokens=self.tokens, tokens_per_second=rate, updated=now,
                                generation=self.generation, resumed_from=self.resumed_from,
                                total_steps=total_steps)
        self._redis(lambda: self.coord.report_steps(progress))  # type: ignore[union-attr]

    def interval_s(self) -> float:
        """The checkpoint interval: the spec's fixed one, else the coordinator's tuned one (Young/Daly)."""
        if self.fixed_interval_s is not None:
            return self.fixed_interval_s
        tuned = self._redis(lambda: self.coord.interval()) if self.coord is not None else None  # type: ignore[union-attr]
        return float(tuned) if tuned else self.initial_interval_s

    def finish(self, result: dict[str, Any] | None = None) -> None:
        """Rank 0 stores the script's result (the job's summary shows it); every rank leaves the group."""
        for close in self.closers:
            close()
        if self._last is not None:  # the last step, whenever the last report was
            step, loss, total = self._last
            self.report(step, loss=loss, tokens=0, total_steps=total, final=True)
        if self.is_main and self.coord is not None and result is not None:
            self._redis(lambda: self.coord.set_result(0, result))  # type: ignore[union-attr]
        if self.distributed:
            dist.barrier()
            dist.destroy_process_group()

    def _redis(self, call: Any) -> Any:
        try:
            return call()
        except redis.RedisError as e:  # the hot path needs no Redis: training goes on
            log.warning("coordination store unreachable: %s", e)
            return None


def init(backend: str | None = None, timeout_s: float = 300.0) -> Context:
    """Join the process group the agent set up (RANK, WORLD_SIZE, MASTER_ADDR, ...); alone without it."""
    env = os.environ
    rank, world = int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1"))
    local_rank = int(env.get("LOCAL_RANK", "0"))
    spec_backend = "auto"
    fixed: float | None = None
    initial = 60.0
    if "TJ_SPEC" in env:
        from trainingjob_operator.api.spec import spec_from_json

        spec = spec_from_json(env["TJ_SPEC"])
        spec_backend = spec.pytorch.backend if spec.pytorch is not None else "auto"
        fixed = spec.recovery.checkpoint.interval_seconds
        initial = spec.recovery.checkpoint.initial_interval_seconds
    chosen = backend or (spec_backend if spec_backend != "auto" else ("nccl" if torch.cuda.is_available() else "gloo"))
    if chosen == "nccl":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1 or "MASTER_ADDR" in env:
        dist.init_process_group(chosen, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
    coord = None
    if "TJ_REDIS_URL" in env and rank == 0:
        coord = Coordination(env["TJ_REDIS_URL"], env.get("TJ_NAMESPACE", "default"), env["TJ_JOB"],
                             username=env.get("TJ_REDIS_USERNAME"), password=env.get("TJ_REDIS_PASSWORD"))
    return Context(rank=rank, world_size=world, local_rank=local_rank, device=device,
                   generation=int(env.get("TJ_WORLD_GENERATION", "0")), coord=coord,
                   checkpoint_dir=env.get("TJ_CHECKPOINT_DIR", "checkpoints"), fixed_interval_s=fixed,
                   initial_interval_s=initial)
