"""Helpers a torch.distributed script calls to run as a TrainingJob (``spec.workload: pytorch``).

    import trainingjob_torch as tj

    ctx = tj.init()                                   # the process group, from the agent's env
    ckpt = tj.Checkpointer(ctx)
    step, extra = ckpt.load_latest(model, optimizer)  # the newest complete distributed checkpoint, if any
    while step < steps:
        ...train one step...
        step += 1
        ctx.report(step, loss=loss.item(), tokens=tokens_this_step)
        ckpt.maybe_save(step, model, optimizer, extra={"data_seed": seed})  # when the tuned interval says so
    ctx.finish({"accuracy": acc})

Outside a TrainingJob (no agent env) the same script runs as one process without Redis.
"""

from trainingjob_torch.checkpoint import Checkpointer
from trainingjob_torch.runtime import Context, init

__all__ = ["Checkpointer", "Context", "init"]
