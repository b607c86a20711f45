"""A tiny Llama: RMSNorm, rotary position embeddings, grouped-query causal attention, SwiGLU, pre-norm blocks.

The LM head is *untied* from the token embedding (a separate ``lm_head`` weight): with a vocabulary of a
few dozen characters tying saves almost nothing, and untied weights keep the state dict free of shared
tensors, which keeps ``torch.distributed.checkpoint`` save/load plans simple.

All parameters are initialised from a private ``torch.Generator`` seeded by ``seed``; building a model
neither reads nor advances the global RNG, so two processes building ``TinyLlama(cfg, seed=s)`` hold
identical weights. Rotary tables are non-persistent buffers (not in the state dict).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class LlamaConfig:
    """Shape of a :class:`TinyLlama`. ``dim`` must split into ``n_heads`` heads of even size, and
    ``n_heads`` must be a multiple of ``n_kv_heads`` (grouped-query attention; equal means plain MHA)."""

    vocab_size: int = 64
    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    ffn_hidden: int = 352
    max_seq_len: int = 96
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not a multiple of n_heads {self.n_heads}")
        if (self.dim // self.n_heads) % 2:
            raise ValueError("the head size must be even for rotary embeddings")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


class KVCache:
    """Keys and values of every layer for a batch being decoded, preallocated to ``max_len`` positions.

    ``length`` is how many positions are filled; :meth:`TinyLlama.forward` writes the new positions and
    advances it.
    """

    def __init__(self, config: LlamaConfig, batch_size: int, max_len: int, device: torch.device,
                 dtype: torch.dtype) -> None:
        if max_len > config.max_seq_len:
            raise ValueError(f"max_len {max_len} exceeds max_seq_len {config.max_seq_len}")
        shape = (batch_size, config.n_kv_heads, max_len, config.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.max_len = max_len
        self.length = 0


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, computed in float32."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def rope_tables(head_dim: int, max_seq_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each [max_seq_len, head_dim // 2]: angle(pos, i) = pos * theta^(-2i / head_dim)."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, T, D] (halves layout: pair i is (x[i], x[i + D/2])) by cos/sin [T, D/2]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1)


class Attention(nn.Module):
    """Causal grouped-query self-attention with rotary embeddings on queries and keys."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.wq = nn.Linear(config.dim, config.n_heads * config.head_dim, bias=False)
        self.wk = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=False)
        self.wv = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=False)
        self.wo = nn.Linear(config.n_heads * config.head_dim, config.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.wq(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        start = 0
        if cache is not None:
            start = cache.length
            cache.keys[layer][:, :, start:start + t] = k
            cache.values[layer][:, :, start:start + t] = v
            k = cache.keys[layer][:, :, :start + t]
            v = cache.values[layer][:, :, :start + t]
        groups = self.n_heads // self.n_kv_heads
        if groups > 1:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        if start == 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif t == 1:  # one new query sees every cached position
            out = F.scaled_dot_product_attention(q, k, v)
        else:  # t new queries after `start` cached positions: query i sees keys 0 .. start + i
            q_pos = torch.arange(start, start + t, device=x.device)[:, None]
            mask = torch.arange(start + t, device=x.device)[None, :] <= q_pos
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.wo(out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then h + ffn(norm(h))."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.feed_forward = FeedForward(config.dim, config.ffn_hidden)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin, cache, layer)
        return h + self.feed_forward(self.ffn_norm(h))


class TinyLlama(nn.Module):
    """Decoder-only Llama: embed -> n_layers pre-norm blocks -> RMSNorm -> untied LM head."""

    def __init__(self, config: LlamaConfig, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        # Build inside a forked RNG so the default initialisers nn.Linear/nn.Embedding run here leave the
        # caller's global RNG untouched; init_weights then overwrites every parameter from `seed`.
        with torch.random.fork_rng(devices=[]):
            self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
            self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
            self.norm = RMSNorm(config.dim, config.norm_eps)
            self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        cos, sin = rope_tables(config.head_dim, config.max_seq_len, config.rope_theta)
        self.rope_cos: torch.Tensor
        self.rope_sin: torch.Tensor
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.init_weights(seed)

    def init_weights(self, seed: int) -> None:
        """Normal(0, 0.02) for embeddings and projections; the projections that write into the residual
        stream (attention ``wo``, SwiGLU ``w2``) scaled by 1/sqrt(2 n_layers); norms to one."""
        g = torch.Generator().manual_seed(seed)
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layers)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                else:
                    std = residual_std if name.endswith(("wo.weight", "w2.weight")) else 0.02
                    p.copy_(torch.randn(p.shape, generator=g) * std)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty :class:`KVCache` for ``batch_size`` sequences of up to ``max_len`` (default max_seq_len)."""
        p = self.lm_head.weight
        return KVCache(self.config, batch_size, max_len or self.config.max_seq_len, p.device, p.dtype)

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """tokens [B, T] (int64) -> logits [B, T, vocab_size].

        Without ``cache`` the tokens are positions 0..T-1. With one they follow the ``cache.length``
        positions already cached, are appended to it, and ``cache.length`` advances by T.
        """
        _, t = tokens.shape
        start = 0 if cache is None else cache.length
        end = start + t
        limit = self.config.max_seq_len if cache is None else cache.max_len
        if end > limit:
            raise ValueError(f"sequence of {end} positions exceeds the limit of {limit}")
        cos, sin = self.rope_cos[start:end], self.rope_sin[start:end]
        h = self.tok_embeddings(tokens)
        for i, layer in enumerate(self.layers):
            h = layer(h, cos, sin, cache, i)
        if cache is not None:
            cache.length = end
        return self.lm_head(self.norm(h))


@torch.no_grad()
def generate_greedy(model: TinyLlama, prompts: list[list[int]], max_new_tokens: int, stop_token: int,
                    batch_size: int = 256) -> list[list[int]]:
    """Greedy continuation of every prompt, with a KV cache, in batches of prompts of equal length.

    Returns, for each prompt in order, the new tokens up to but *excluding* the first ``stop_token``
    (or ``max_new_tokens`` of them, or fewer where the model's ``max_seq_len`` ends first). The model is
    put in eval mode for the call and its previous mode restored.
    """
    if any(not p for p in prompts):
        raise ValueError("every prompt needs at least one token")
    device = model.lm_head.weight.device
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    results: list[list[int]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        for length, indices in by_length.items():
            steps = min(max_new_tokens, model.config.max_seq_len - length)
            for lo in range(0, len(indices), batch_size):
                chunk = indices[lo:lo + batch_size]
                if steps <= 0:
                    continue
                batch = torch.tensor([prompts[i] for i in chunk], dtype=torch.long, device=device)
                cache = model.new_cache(len(chunk), length + steps)
                logits = model(batch, cache)
                out = []
                done = torch.zeros(len(chunk), dtype=torch.bool, device=device)
                for step in range(steps):
                    nxt = logits[:, -1].argmax(dim=-1)
                    out.append(nxt)
                    done |= nxt == stop_token
                    if bool(done.all()) or step == steps - 1:
                        break
                    logits = model(nxt[:, None], cache)
                generated = torch.stack(out, dim=1).tolist()
                for i, seq in zip(chunk, generated, strict=True):
                    results[i] = seq[:seq.index(stop_token)] if stop_token in seq else seq
    finally:
        model.train(was_training)
    return results
