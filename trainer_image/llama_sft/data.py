"""The task: N-digit addition, as a chat, with Llama-Nemotron's reasoning toggle in the system prompt.

A conversation is ``[BOS] system: detailed thinking on|off  user: 4738+2859  assistant: <response> [EOS]``
where the role markers are single special tokens (rendered as ``system: ``, ``\\nuser: ``,
``\\nassistant: `` by :meth:`Tokenizer.decode`) and everything else is one token per character.

With thinking on the response works the sum digit by digit from the right, one fixed-width line per
column (``digit + digit + carry in = two-digit column sum``; its tens digit is the next carry), then gives
``answer: N``::

    8+9+0=17
    3+5+1=09
    7+8+0=15
    4+2+1=07
    answer: 7597

With thinking off the response is ``answer: 7597`` alone, which a small model has to compute in one
forward pass per digit, carries included: harder, so its accuracy is lower.

Every problem is ``train`` or ``held-out`` by a hash of (split_seed, the unordered operand pair), so the
two sets never overlap whatever seeds sample them (a+b and b+a fall on the same side). Training batches
are a pure function of (seed, step): :func:`train_batch` draws a global batch and hands each rank its own
contiguous slice, so ranks see disjoint examples and a restarted job replays exactly the same data from
its checkpointed step without any data-loader state.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
"""Target value for positions that carry no loss (``F.cross_entropy``'s default ``ignore_index``)."""

SYSTEM_ON = "detailed thinking on"
SYSTEM_OFF = "detailed thinking off"
CHARSET = "0123456789abcdefghijklmnopqrstuvwxyz +-=:?,.\n"
UNKNOWN = "\ufffd"
"""What :meth:`Tokenizer.decode` writes for an id past the vocabulary (a model may pad its vocabulary)."""


class Tokenizer:
    """Character-level tokenizer over :data:`CHARSET` plus six special tokens.

    Ids 0..5 are PAD, BOS, EOS, SYSTEM, USER, ASSISTANT; the characters follow. It holds only constants,
    so any two instances agree.
    """

    pad_id = 0
    bos_id = 1
    eos_id = 2
    system_id = 3
    user_id = 4
    assistant_id = 5
    _special_text = {0: "", 1: "", 2: "", 3: "system: ", 4: "\nuser: ", 5: "\nassistant: "}
    _first_char = 6

    def __init__(self) -> None:
        self._ids = {c: self._first_char + i for i, c in enumerate(CHARSET)}

    @property
    def vocab_size(self) -> int:
        return self._first_char + len(CHARSET)

    def encode(self, text: str) -> list[int]:
        """One id per character; a character outside :data:`CHARSET` raises ``ValueError``."""
        try:
            return [self._ids[c] for c in text]
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in the tokenizer's vocabulary") from None

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``: characters as themselves, role markers as ``system: ``/``\\nuser: ``/
        ``\\nassistant: ``, PAD/BOS/EOS as nothing, ids past the vocabulary as :data:`UNKNOWN`.
        ``decode(encode(s)) == s`` for any text in the charset."""
        out = []
        for i in ids:
            if 0 <= i < self._first_char:
                out.append(self._special_text[i])
            elif self._first_char <= i < self.vocab_size:
                out.append(CHARSET[i - self._first_char])
            else:  # a model's vocabulary may be padded past the tokenizer's
                out.append(UNKNOWN)
        return "".join(out)


@dataclass(frozen=True)
class TaskConfig:
    """The problem distribution and the split.

    ``n_digits``: both operands have exactly this many digits. ``heldout_fraction``: the share of operand
    pairs reserved for evaluation (never trained on). ``p_thinking``: the chance a training example uses
    ``detailed thinking on``.
    """

    n_digits: int = 4
    split_seed: int = 0
    heldout_fraction: float = 0.02
    p_thinking: float = 0.5


@dataclass(frozen=True)
class Problem:
    """``a + b``."""

    a: int
    b: int

    @property
    def answer(self) -> int:
        return self.a + self.b

    @property
    def question(self) -> str:
        return f"{self.a}+{self.b}"


def worked_solution(problem: Problem) -> str:
    """Column-by-column addition from the units, one ``x+y+c=ss`` line per column, then ``answer: N``.

    Operands of different lengths are padded with zero digits; the final carry, if any, leads the answer.
    """
    width = max(len(str(problem.a)), len(str(problem.b)))
    da, db = str(problem.a).zfill(width), str(problem.b).zfill(width)
    lines, carry = [], 0
    for x, y in zip(reversed(da), reversed(db), strict=True):
        s = int(x) + int(y) + carry
        lines.append(f"{x}+{y}+{carry}={s:02d}")
        carry = s // 10
    lines.append(direct_answer(problem))
    return "\n".join(lines)


def direct_answer(problem: Problem) -> str:
    return f"answer: {problem.answer}"


_ANSWER = re.compile(r"answer:\s*(-?\d+)")


def parse_answer(text: str) -> int | None:
    """The integer after the last ``answer:`` in ``text``, or None if there is none."""
    matches = _ANSWER.findall(text)
    return int(matches[-1]) if matches else None


def is_held_out(problem: Problem, task: TaskConfig) -> bool:
    """Whether the unordered pair {a, b} belongs to the held-out set (a stable hash, not Python's hash())."""
    lo, hi = sorted((problem.a, problem.b))
    digest = hashlib.blake2b(f"{task.split_seed}:{lo}:{hi}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < task.heldout_fraction * 2**64


def random_problem(rng: random.Random, task: TaskConfig) -> Problem:
    lo, hi = 10 ** (task.n_digits - 1), 10**task.n_digits
    return Problem(rng.randrange(lo, hi), rng.randrange(lo, hi))


def held_out_problems(task: TaskConfig, n: int, seed: int) -> list[Problem]:
    """``n`` distinct held-out problems, the same for the same (task, n, seed)."""
    rng = random.Random(f"heldout:{seed}")
    seen: set[Problem] = set()
    out: list[Problem] = []
    while len(out) < n:
        p = random_problem(rng, task)
        if p not in seen and is_held_out(p, task):
            seen.add(p)
            out.append(p)
    return out


def train_examples(task: TaskConfig, seed: int, step: int, count: int) -> list[tuple[Problem, bool]]:
    """``count`` training (problem, thinking) pairs for ``step``: a pure function of (task, seed, step).

    Held-out problems are rejected; ``thinking`` is True with probability ``task.p_thinking``.
    """
    rng = random.Random(f"train:{seed}:{step}")
    out: list[tuple[Problem, bool]] = []
    while len(out) < count:
        p = random_problem(rng, task)
        if not is_held_out(p, task):
            out.append((p, rng.random() < task.p_thinking))
    return out


def prompt_tokens(tokenizer: Tokenizer, problem: Problem, thinking: bool) -> list[int]:
    """``[BOS, SYSTEM] detailed thinking on|off [USER] question [ASSISTANT]``: what generation starts from."""
    return [
        tokenizer.bos_id, tokenizer.system_id, *tokenizer.encode(SYSTEM_ON if thinking else SYSTEM_OFF),
        tokenizer.user_id, *tokenizer.encode(problem.question), tokenizer.assistant_id,
    ]


def response_tokens(tokenizer: Tokenizer, problem: Problem, thinking: bool) -> list[int]:
    """The assistant's turn, ending with EOS: worked solution with thinking on, direct answer without."""
    text = worked_solution(problem) if thinking else direct_answer(problem)
    return [*tokenizer.encode(text), tokenizer.eos_id]


def max_response_tokens(task: TaskConfig) -> int:
    """Longest response (EOS included) for the task: a generation budget for evaluation."""
    biggest = Problem(10**task.n_digits - 1, 10**task.n_digits - 1)
    return len(Tokenizer().encode(worked_solution(biggest))) + 1


def max_sequence_tokens(task: TaskConfig) -> int:
    """Longest prompt + response for the task: the ``max_seq_len`` a model needs (the inputs are one shorter)."""
    biggest = Problem(10**task.n_digits - 1, 10**task.n_digits - 1)
    tok = Tokenizer()
    return len(prompt_tokens(tok, biggest, False)) + max_response_tokens(task)


def sft_batch(tokenizer: Tokenizer, examples: Sequence[tuple[Problem, bool]],
              pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, targets), both int64 [B, L], for next-token SFT on the assistant's response only.

    Row i is conversation i (prompt + response) without its last token, right-padded with PAD to the
    longest row (or to ``pad_to``). ``targets[i, j]`` is the token after position j where that token is
    part of the response (EOS included), :data:`IGNORE_INDEX` everywhere else (system, user and the
    role markers, and padding). Use ``F.cross_entropy(logits.flatten(0, 1), targets.flatten())``.
    """
    rows = []
    for problem, thinking in examples:
        prompt = prompt_tokens(tokenizer, problem, thinking)
        rows.append((prompt, prompt + response_tokens(tokenizer, problem, thinking)))
    length = max(len(seq) - 1 for _, seq in rows)
    if pad_to is not None:
        if pad_to < length:
            raise ValueError(f"pad_to {pad_to} is shorter than the longest example ({length})")
        length = pad_to
    tokens = torch.full((len(rows), length), tokenizer.pad_id, dtype=torch.long)
    targets = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    for i, (prompt, seq) in enumerate(rows):
        tokens[i, :len(seq) - 1] = torch.tensor(seq[:-1])
        targets[i, len(prompt) - 1:len(seq) - 1] = torch.tensor(seq[len(prompt):])
    return tokens, targets


def train_batch(tokenizer: Tokenizer, task: TaskConfig, seed: int, step: int, global_batch_size: int,
                rank: int = 0, world_size: int = 1, pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's share of the global batch of ``step``: examples ``[rank * n, (rank + 1) * n)`` of
    :func:`train_examples` (``n = global_batch_size / world_size``), as :func:`sft_batch`.

    The ranks' shares are disjoint and together are exactly the batch one process would train on.
    """
    if global_batch_size % world_size:
        raise ValueError(f"global batch {global_batch_size} does not split over {world_size} ranks")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of {world_size}")
    n = global_batch_size // world_size
    examples = train_examples(task, seed, step, global_batch_size)[rank * n:(rank + 1) * n]
    return sft_batch(tokenizer, examples, pad_to)


def sft_loss(logits: torch.Tensor, targets: torch.Tensor, num_targets: float | None = None) -> torch.Tensor:
    """Next-token cross-entropy on the supervised positions of ``targets`` (see :func:`sft_batch`).

    By default the mean over this batch's supervised tokens. With ``num_targets`` it is their *sum*
    divided by ``num_targets`` instead: pass the global count of supervised tokens (all-reduced over
    ranks) times ``1 / world_size`` to make DDP's gradient average equal the single-process token mean.
    """
    flat = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX,
                           reduction="mean" if num_targets is None else "sum")
    return flat if num_targets is None else flat / num_targets
