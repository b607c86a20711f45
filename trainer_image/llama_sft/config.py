"""Training defaults for the tiny-Llama reasoning SFT, measured on a 2-core CPU (see :class:`TrainConfig`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from llama_sft.data import TaskConfig
from llama_sft.model import LlamaConfig


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one SFT run: AdamW, linear warmup then cosine decay to ``min_lr_ratio * lr``.

    Measured with these defaults (the default :class:`~llama_sft.model.LlamaConfig`: dim 128, 4 layers, 4 query
    and 2 key/value heads, SwiGLU 352, max_seq_len 96, vocab 64: 754,816 parameters; 4-digit addition) on a
    shared 2-core CPU VM, torch 2.13, held-out accuracy on ``eval_problems=200`` problems of ``eval_seed=1``:

    * one process, ``torch.set_num_threads(2)``: 600 steps in 84 s of training (0.13-0.14 s a step on an
      otherwise idle machine; the same run took 270-330 s while other jobs shared the cores). Thinking on
      **0.965**, thinking off **0.000**; untrained 0.000 / 0.000. Evaluating both modes takes about 1 s.
      Seeds 1, 2, 3: on 0.905, 0.980, 0.980; off 0.000 each.
    * two ranks, gloo DDP, one thread each, 16 examples per rank (vocab_size = the tokenizer's 51): 600 steps
      in 76 s, on **0.995**, off 0.000.

    Command: ``PYTHONPATH=trainer_image python train.py`` (a throwaway single-process loop, not in the repo):
    for each step, ``train_batch(Tokenizer(), task, seed, step, global_batch_size)``, every group's lr set to
    ``lr_at(step)``, :func:`~llama_sft.data.sft_loss`, backward, ``clip_grad_norm_(grad_clip)``, AdamW from
    :meth:`optimizer`; then :func:`~llama_sft.evaluate.evaluate_both`. Thinking-on accuracy stays near 0 until
    step 300-400 and then jumps within ~150 steps (the column sums are learnt first, reading the answer off
    them last), so fewer than ~500 steps is a gamble; 800 steps gave 0.945-0.995. lr 3e-3 gave 0.86 and 5e-3
    (batch 64) 0.01. A direct answer needs every carry in one forward pass: the model gets the leading digit
    right ~70% of the time and each other digit ~10%, hence ~0 with thinking off.

    ``global_batch_size`` is the batch of one optimizer step over all ranks; each of W ranks trains on
    ``global_batch_size / W`` examples of it (:func:`llama_sft.data.train_batch`). Weight decay applies to
    matrices and embeddings only, not to the RMSNorm gains (:meth:`optimizer`).
    """

    seed: int = 0
    steps: int = 600
    global_batch_size: int = 32
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    eval_problems: int = 200
    eval_seed: int = 1
    model: LlamaConfig = field(default_factory=LlamaConfig)
    task: TaskConfig = field(default_factory=TaskConfig)

    def lr_at(self, step: int) -> float:
        """Learning rate for (0-based) ``step``: ``lr * (step + 1) / warmup_steps`` during warmup, then a
        cosine from ``lr`` at ``warmup_steps`` to ``min_lr_ratio * lr`` at ``steps`` (held after that)."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps))
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine)

    def optimizer(self, model: nn.Module) -> torch.optim.AdamW:
        """AdamW over ``model``'s parameters: decay on tensors of two or more dimensions, none on the rest.

        The learning rate starts at ``lr_at(0)``; set every group's ``"lr"`` to ``lr_at(step)`` before
        each step.
        """
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": self.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=self.lr_at(0), betas=self.betas)
