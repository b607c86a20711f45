"""A small torch.distributed script run by the pytorch-workload tests: DDP linear regression over gloo that
checkpoints through trainingjob_torch, reports progress, and writes each step's loss to a per-rank log so a
test can see what every generation did. ``TOY_STEPS`` steps of ``TOY_STEP_S`` seconds each."""

from __future__ import annotations

import json
import os
import time

import torch
from torch.nn.parallel import DistributedDataParallel

import trainingjob_torch as tj


def main() -> None:
    steps = int(os.environ.get("TOY_STEPS", "200"))
    pause = float(os.environ.get("TOY_STEP_S", "0.02"))
    ctx = tj.init()
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    ddp = DistributedDataParallel(model) if ctx.distributed else model
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.05)
    ckpt = tj.Checkpointer(ctx, asynchronous=os.environ.get("TOY_ASYNC") == "1")
    step, _ = ckpt.load_latest(model, optimizer, extra={"seen": 0})
    true_w = torch.arange(8, dtype=torch.float32) / 8
    log_path = os.environ.get("TOY_LOG")
    fail_rank = int(os.environ.get("TOY_FAIL_RANK", "-1"))  # this rank exits 3 at step 5 (a bug of its own)
    while step < steps:
        g = torch.Generator().manual_seed(step * 1000 + ctx.rank)
        x = torch.randn(32, 8, generator=g)
        y = x @ true_w + 0.01 * torch.randn(32, generator=g)
        loss = torch.nn.functional.mse_loss(ddp(x).squeeze(-1), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        if ctx.rank == fail_rank and step == 5:
            raise SystemExit(3)
        ctx.report(step, loss=loss.item(), tokens=32 * ctx.world_size, total_steps=steps)
        ckpt.maybe_save(step, model, optimizer, extra={"seen": step * 32})
        if log_path:
            with open(f"{log_path}.{ctx.rank}", "a") as f:
                f.write(json.dumps({"step": step, "loss": loss.item(), "gen": ctx.generation,
                                    "resumed_from": ctx.resumed_from, "t": time.time()}) + "\n")
        time.sleep(pause)
    ctx.finish({"final_loss": loss.item(), "steps": step, "world_size": ctx.world_size})


if __name__ == "__main__":
    main()
