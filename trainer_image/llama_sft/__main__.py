"""``python -m llama_sft``: the reasoning SFT of a tiny Llama as a torch.distributed script (DDP; gloo on CPU,
NCCL on GPUs), run by a TrainingJob's workers (``spec.workload: pytorch``) or alone.

It uses the product's helpers only where a script must: ``tj.init`` for the process group, a
``tj.Checkpointer`` that loads the newest complete distributed checkpoint and saves when the tuned interval
says so, and ``ctx.report`` / ``ctx.finish`` for progress and the result. A restarted run replays exactly the
same steps from its checkpoint: the data of a step is a pure function of (seed, step) and the learning rate of
the step, so a failure costs recomputation, not quality. The result holds held-out answer accuracy with thinking
on and off, of the untrained model (measured once, at step 0, and carried in the checkpoints) and of the
trained one.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import time
from collections import deque
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import trainingjob_torch as tj
from llama_sft.config import TrainConfig
from llama_sft.data import IGNORE_INDEX, Tokenizer, train_batch
from llama_sft.evaluate import evaluate_both
from llama_sft.model import TinyLlama

log = logging.getLogger("llama_sft")
LOSS_WINDOW = 50  # the reported final loss: the mean of the last this many steps' global loss


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(prog="python -m llama_sft", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--global-batch-size", type=int, default=defaults.global_batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--eval-problems", type=int, default=defaults.eval_problems)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("LLAMA_SFT_THREADS", "1")),
                        help="intra-op threads per process")
    parser.add_argument("--step-delay", type=float, default=float(os.environ.get("LLAMA_SFT_STEP_DELAY", "0")),
                        help="sleep this long after each step (benchmarks: a slower job to inject failures into)")
    parser.add_argument("--async-checkpoints", action="store_true",
                        help="write checkpoints in the background (DCP async_save): training waits only for staging")
    args = parser.parse_args(argv)
    for name in ("steps", "global_batch_size", "eval_problems", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    return args


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    config = dataclasses.replace(TrainConfig(), steps=args.steps, global_batch_size=args.global_batch_size,
                                 lr=args.lr, seed=args.seed, eval_problems=args.eval_problems)
    torch.set_num_threads(args.threads)
    ctx = tj.init()
    if config.global_batch_size % ctx.world_size:
        raise SystemExit(f"--global-batch-size {config.global_batch_size} does not split over {ctx.world_size} ranks")
    tokenizer = Tokenizer()
    model = TinyLlama(dataclasses.replace(config.model, vocab_size=tokenizer.vocab_size), seed=config.seed)
    model.to(ctx.device)
    ddp = DistributedDataParallel(model) if ctx.distributed else model
    optimizer = config.optimizer(model)
    ckpt = tj.Checkpointer(ctx, asynchronous=args.async_checkpoints)
    step, extra = ckpt.load_latest(model, optimizer, extra={"untrained": {}})
    untrained: dict[str, float] = dict(extra.get("untrained") or {})
    if step == 0 and ctx.is_main:
        untrained = evaluate_both(model, config.eval_problems, config.eval_seed, config.task)
        log.info("untrained accuracy: %s", untrained)
    losses: deque[float] = deque(maxlen=LOSS_WINDOW)
    started = time.monotonic()
    while step < config.steps:
        tokens, targets = train_batch(tokenizer, config.task, config.seed, step, config.global_batch_size,
                                      ctx.rank, ctx.world_size)
        tokens, targets = tokens.to(ctx.device), targets.to(ctx.device)
        for group in optimizer.param_groups:
            group["lr"] = config.lr_at(step)
        logits = ddp(tokens)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        step += 1
        global_loss = loss.detach().clone()
        if ctx.distributed:
            dist.all_reduce(global_loss, op=dist.ReduceOp.AVG)
        losses.append(float(global_loss))
        trained = int((targets != IGNORE_INDEX).sum()) * ctx.world_size  # response tokens, all ranks
        ctx.report(step, loss=losses[-1], tokens=trained, total_steps=config.steps)
        ckpt.maybe_save(step, model, optimizer, extra={"untrained": untrained})
        if args.step_delay:
            time.sleep(args.step_delay)
    result: dict[str, Any] = {"steps": step, "final_loss": sum(losses) / len(losses) if losses else None,
                              "last_loss": losses[-1] if losses else None,
                              "world_size": ctx.world_size, "train_seconds": round(time.monotonic() - started, 2)}
    if ctx.is_main:
        trained_acc = evaluate_both(model, config.eval_problems, config.eval_seed, config.task)
        result.update(thinking_on=trained_acc["thinking_on"], thinking_off=trained_acc["thinking_off"],
                      untrained_thinking_on=untrained.get("thinking_on"),
                      untrained_thinking_off=untrained.get("thinking_off"), eval_problems=config.eval_problems)
        log.info("result: %s", result)
    ctx.finish(result)


if __name__ == "__main__":
    main()
