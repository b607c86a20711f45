"""Answer accuracy of greedy decoding on held-out problems, with thinking on and off."""

from __future__ import annotations

from collections.abc import Sequence

from llama_sft.data import (
    Problem,
    TaskConfig,
    Tokenizer,
    held_out_problems,
    max_response_tokens,
    parse_answer,
    prompt_tokens,
)
from llama_sft.model import TinyLlama, generate_greedy


def completions(model: TinyLlama, problems: Sequence[Problem], thinking: bool,
                tokenizer: Tokenizer | None = None, max_new_tokens: int | None = None,
                batch_size: int = 256) -> list[str]:
    """The model's greedy response text to each problem (up to EOS) under ``detailed thinking on|off``.

    ``max_new_tokens`` defaults to the longest worked solution for the problems' digit count, plus one.
    """
    tok = tokenizer or Tokenizer()
    if max_new_tokens is None:
        digits = max((len(str(max(p.a, p.b))) for p in problems), default=1)
        max_new_tokens = max_response_tokens(TaskConfig(n_digits=digits)) + 1
    prompts = [prompt_tokens(tok, p, thinking) for p in problems]
    outputs = generate_greedy(model, prompts, max_new_tokens, tok.eos_id, batch_size=batch_size)
    return [tok.decode(o) for o in outputs]


def accuracy(model: TinyLlama, problems: Sequence[Problem], thinking: bool,
             tokenizer: Tokenizer | None = None, max_new_tokens: int | None = None,
             batch_size: int = 256) -> float:
    """Share of ``problems`` whose parsed ``answer:`` equals the true sum (0.0 for no problems)."""
    if not problems:
        return 0.0
    texts = completions(model, problems, thinking, tokenizer, max_new_tokens, batch_size)
    correct = sum(parse_answer(t) == p.answer for t, p in zip(texts, problems, strict=True))
    return correct / len(problems)


def evaluate_both(model: TinyLlama, n: int, seed: int, task: TaskConfig | None = None) -> dict[str, float]:
    """Accuracy on the same ``n`` held-out problems (drawn with ``seed``) in both modes:
    ``{"thinking_on": acc, "thinking_off": acc}``."""
    problems = held_out_problems(task or TaskConfig(), n, seed)
    return {
        "thinking_on": accuracy(model, problems, thinking=True),
        "thinking_off": accuracy(model, problems, thinking=False),
    }
