"""The parts of the Llama reasoning-SFT example: tokenizer, chat format and loss mask, the train/held-out
split, answer parsing, the model (shapes, causality, KV cache, seeded init) and untrained accuracy."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator

import pytest

torch = pytest.importorskip("torch")

from llama_sft.config import TrainConfig  # noqa: E402
from llama_sft.data import (  # noqa: E402
    CHARSET,
    IGNORE_INDEX,
    UNKNOWN,
    Problem,
    TaskConfig,
    Tokenizer,
    direct_answer,
    held_out_problems,
    is_held_out,
    max_response_tokens,
    max_sequence_tokens,
    parse_answer,
    prompt_tokens,
    response_tokens,
    sft_batch,
    sft_loss,
    train_batch,
    train_examples,
    worked_solution,
)
from llama_sft.evaluate import accuracy, evaluate_both  # noqa: E402
from llama_sft.model import LlamaConfig, TinyLlama, generate_greedy  # noqa: E402

SMALL = LlamaConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64, max_seq_len=96)
TASK = TaskConfig()


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread: these models are too small to gain from more, and a shared CPU makes them slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_tokenizer_round_trip() -> None:
    tok = Tokenizer()
    rng = random.Random(0)
    assert tok.decode(tok.encode(CHARSET)) == CHARSET
    for _ in range(50):
        text = "".join(rng.choice(CHARSET) for _ in range(rng.randrange(0, 40)))
        assert tok.decode(tok.encode(text)) == text
    assert len(set(tok.encode(CHARSET))) == len(CHARSET)
    specials = {tok.pad_id, tok.bos_id, tok.eos_id, tok.system_id, tok.user_id, tok.assistant_id}
    assert len(specials) == 6 and not specials & set(tok.encode(CHARSET))
    assert max(tok.encode(CHARSET)) == tok.vocab_size - 1
    with pytest.raises(ValueError):
        tok.encode("Answer")


def test_chat_format() -> None:
    tok = Tokenizer()
    p = Problem(4738, 2859)
    on = tok.decode(prompt_tokens(tok, p, True) + response_tokens(tok, p, True))
    assert on == ("system: detailed thinking on\nuser: 4738+2859\nassistant: "
                  "8+9+0=17\n3+5+1=09\n7+8+0=15\n4+2+1=07\nanswer: 7597")
    off = tok.decode(prompt_tokens(tok, p, False) + response_tokens(tok, p, False))
    assert off == "system: detailed thinking off\nuser: 4738+2859\nassistant: answer: 7597"
    assert prompt_tokens(tok, p, True)[0] == tok.bos_id
    assert prompt_tokens(tok, p, True)[-1] == tok.assistant_id
    assert response_tokens(tok, p, False)[-1] == tok.eos_id


def test_loss_mask_covers_exactly_the_response() -> None:
    tok = Tokenizer()
    examples = train_examples(TASK, seed=0, step=3, count=16)
    assert {thinking for _, thinking in examples} == {True, False}
    tokens, targets = sft_batch(tok, examples)
    assert tokens.shape == targets.shape and tokens.dtype == targets.dtype == torch.long
    for i, (problem, thinking) in enumerate(examples):
        prompt = prompt_tokens(tok, problem, thinking)
        response = response_tokens(tok, problem, thinking)
        seq = prompt + response
        row_tokens, row_targets = tokens[i].tolist(), targets[i].tolist()
        assert row_tokens[:len(seq) - 1] == seq[:-1]
        assert all(t == tok.pad_id for t in row_tokens[len(seq) - 1:])
        supervised = [j for j, t in enumerate(row_targets) if t != IGNORE_INDEX]
        assert supervised == list(range(len(prompt) - 1, len(seq) - 1))
        assert [row_targets[j] for j in supervised] == response
    padded_tokens, padded_targets = sft_batch(tok, examples, pad_to=100)
    assert padded_tokens.shape == (16, 100)
    assert torch.equal(padded_targets[:, :targets.shape[1]], targets)
    assert (padded_targets[:, targets.shape[1]:] == IGNORE_INDEX).all()
    with pytest.raises(ValueError):
        sft_batch(tok, examples, pad_to=10)


def test_train_and_held_out_are_disjoint_and_deterministic() -> None:
    held = held_out_problems(TASK, 300, seed=1)
    assert held == held_out_problems(TASK, 300, seed=1)
    assert len(set(held)) == 300 and all(is_held_out(p, TASK) for p in held)
    held_pairs = {frozenset((p.a, p.b)) for p in held}
    train = [p for step in range(100) for p, _ in train_examples(TASK, seed=0, step=step, count=64)]
    assert not any(is_held_out(p, TASK) for p in train)
    assert not held_pairs & {frozenset((p.a, p.b)) for p in train}
    assert is_held_out(Problem(held[0].b, held[0].a), TASK)  # a+b and b+a on the same side
    assert train_examples(TASK, 0, 5, 8) == train_examples(TASK, 0, 5, 8)
    assert train_examples(TASK, 0, 5, 8) != train_examples(TASK, 0, 6, 8)
    assert train_examples(TASK, 0, 5, 8) != train_examples(TASK, 1, 5, 8)
    lo, hi = 10 ** (TASK.n_digits - 1), 10**TASK.n_digits
    assert all(lo <= p.a < hi and lo <= p.b < hi for p in train + held)


def test_ranks_get_disjoint_slices_of_the_global_batch() -> None:
    tok = Tokenizer()
    whole_tokens, whole_targets = train_batch(tok, TASK, seed=0, step=7, global_batch_size=8, pad_to=90)
    parts = [train_batch(tok, TASK, seed=0, step=7, global_batch_size=8, rank=r, world_size=2, pad_to=90)
             for r in range(2)]
    assert torch.equal(torch.cat([t for t, _ in parts]), whole_tokens)
    assert torch.equal(torch.cat([y for _, y in parts]), whole_targets)
    with pytest.raises(ValueError):
        train_batch(tok, TASK, seed=0, step=7, global_batch_size=7, rank=0, world_size=2)


def test_parse_answer() -> None:
    assert parse_answer("answer: 7597") == 7597
    assert parse_answer("8+9+0=17\nanswer: 12\nanswer: 7597") == 7597
    assert parse_answer("answer:42") == 42
    assert parse_answer("answer: -3") == -3
    assert parse_answer("8+9+0=17\n3+5+1=09") is None
    assert parse_answer("answer: ") is None
    assert parse_answer("") is None


def test_worked_solutions_are_correct() -> None:
    rng = random.Random(0)
    line = re.compile(r"(\d)\+(\d)\+([01])=(\d\d)")
    for _ in range(2000):
        p = Problem(rng.randrange(0, 10 ** rng.randrange(1, 7)), rng.randrange(0, 10 ** rng.randrange(1, 7)))
        text = worked_solution(p)
        *steps, last = text.split("\n")
        assert last == direct_answer(p) and parse_answer(text) == p.a + p.b
        carry, digits = 0, []
        width = max(len(str(p.a)), len(str(p.b)))
        assert len(steps) == width
        for k, step in enumerate(steps):
            m = line.fullmatch(step)
            assert m is not None, step
            x, y, c, s = (int(g) for g in m.groups())
            assert (x, y) == ((p.a // 10**k) % 10, (p.b // 10**k) % 10)
            assert c == carry and s == x + y + c
            carry, digits = s // 10, [s % 10, *digits]
        assert int("".join(map(str, [carry, *digits]))) == p.a + p.b


def test_sequence_lengths_fit_the_default_model() -> None:
    cfg = TrainConfig()
    assert cfg.model.vocab_size >= Tokenizer().vocab_size
    assert max_sequence_tokens(cfg.task) - 1 <= cfg.model.max_seq_len  # the last token is never an input
    tok = Tokenizer()
    big = Problem(10**cfg.task.n_digits - 1, 10**cfg.task.n_digits - 1)
    assert len(response_tokens(tok, big, True)) == max_response_tokens(cfg.task)


def test_model_shapes_and_causality() -> None:
    model = TinyLlama(SMALL, seed=0)
    tokens = torch.randint(0, SMALL.vocab_size, (3, 20), generator=torch.Generator().manual_seed(0))
    logits = model(tokens)
    assert logits.shape == (3, 20, SMALL.vocab_size)
    changed = tokens.clone()
    changed[:, 12] = (changed[:, 12] + 1) % SMALL.vocab_size
    other = model(changed)
    assert torch.allclose(logits[:, :12], other[:, :12], atol=1e-6)
    assert not torch.allclose(logits[:, 12:], other[:, 12:])
    with pytest.raises(ValueError):
        model(torch.zeros(1, SMALL.max_seq_len + 1, dtype=torch.long))


def test_seeded_init_is_deterministic_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b, c = TinyLlama(SMALL, seed=5), TinyLlama(SMALL, seed=5), TinyLlama(SMALL, seed=6)
    assert torch.equal(torch.random.get_rng_state(), before)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["lm_head.weight"], sc["lm_head.weight"])
    assert not any("rope" in k for k in sa)  # rotary tables are not checkpointed
    assert a.lm_head.weight.data_ptr() != a.tok_embeddings.weight.data_ptr()  # untied head


def test_kv_cache_matches_the_full_forward() -> None:
    model = TinyLlama(SMALL, seed=1).eval()
    tokens = torch.randint(0, SMALL.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache(2, 16)
        parts = [model(tokens[:, :7], cache), model(tokens[:, 7:8], cache), model(tokens[:, 8:], cache)]
    assert cache.length == 16
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5)


def test_generate_greedy_matches_step_by_step_argmax() -> None:
    model = TinyLlama(SMALL, seed=2)
    prompts = [[1, 3, 10, 11], [1, 3, 12], [1, 3, 13, 14], [1, 3, 15]]
    stop = 2
    out = generate_greedy(model, prompts, max_new_tokens=6, stop_token=stop, batch_size=1)
    assert out == generate_greedy(model, prompts, max_new_tokens=6, stop_token=stop)
    for prompt, got in zip(prompts, out, strict=True):
        seq = list(prompt)
        expected: list[int] = []
        with torch.no_grad():
            for _ in range(6):
                nxt = int(model(torch.tensor([seq]))[0, -1].argmax())
                if nxt == stop:
                    break
                expected.append(nxt)
                seq.append(nxt)
        assert got == expected
    assert model.training  # mode restored


def test_untrained_model_is_near_zero() -> None:
    model = TinyLlama(TrainConfig().model, seed=0)
    result = evaluate_both(model, n=40, seed=1)
    assert set(result) == {"thinking_on", "thinking_off"}
    assert result["thinking_on"] <= 0.05 and result["thinking_off"] <= 0.05
    assert accuracy(model, [], thinking=True) == 0.0


def test_a_few_sft_steps_reduce_the_loss() -> None:
    tok = Tokenizer()
    model = TinyLlama(SMALL, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    tokens, targets = train_batch(tok, TASK, seed=0, step=0, global_batch_size=16)
    first = last = sft_loss(model(tokens), targets)
    for _ in range(25):
        loss = sft_loss(model(tokens), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        last = loss
    assert float(last) < 0.7 * float(first)


def test_decode_tolerates_ids_past_the_vocabulary() -> None:
    tok = Tokenizer()
    assert tok.decode([tok.vocab_size, 63]) == UNKNOWN * 2
    assert parse_answer(tok.decode([*tok.encode("answer: 1"), tok.vocab_size])) == 1
