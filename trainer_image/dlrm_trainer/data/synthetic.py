"""A deterministic Criteo-like data set whose labels come from a hidden teacher model.

Why synthetic: the recovery experiments need a stream that any replica can regenerate from
``(seed, stream, index)`` alone (so a replaced trainer resumes at its cursor without shipping data
around), of unbounded length, and with a known ceiling (the teacher's AUC) so that "the model lost
accuracy because of a failure" can be told apart from "the data has no more signal".

What makes it Criteo-like where it matters for the system:

* categorical ids are Zipf-skewed, so a small set of embedding rows receives most updates, which is
  what MFU/SSU checkpointing and CPR's lost-update accounting exploit;
* the hot ids are scattered over the id space by a fixed random permutation, so hash-sharding rows
  by ``id % num_servers`` spreads the hot rows over all servers as it would with real hashed ids;
* dense features are heavy-tailed non-negative counts (normalised with log1p in the batch).

The teacher is designed to be learnable by a DLRM in one pass of 1-2M samples: its per-id effects
shrink with the id's rarity (an id seen a handful of times cannot be learnt by any model, so giving
it a large effect would only lower the reachable AUC below the teacher's), and its interaction terms
are low-rank dot products of per-id vectors, exactly the form DLRM's interaction layer represents.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from dlrm_trainer.data.batch import Batch, check_shard, num_global_batches
from dlrm_trainer.metrics import EvalResult, auc, evaluate

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

# Tables up to this size get a true random permutation (two int32 arrays); larger ones an affine
# permutation (a * rank + c) mod rows, which needs no memory and is just as invertible.
PERMUTATION_LIMIT = 1 << 22
# The Zipf CDF is tabulated exactly for this many hottest ranks; the rest of a larger table is
# sampled from the continuous power law, whose error there is negligible.
ZIPF_HEAD = 1 << 22
# Teacher parameters are stored for this many hottest ranks; rarer ids have no effect at all
# (their effect would be vanishingly small anyway, see LEARNABLE_PROBABILITY).
TEACHER_HEAD = 1 << 20
# Per-id teacher effects are damped by q / (q + LEARNABLE_PROBABILITY) where q is the id's occurrence
# probability: full strength only for the head of each table (ids seen tens of thousands of times in
# 2M samples), fading in proportion to q below that. Measured: at 1e-4 even a learner of exactly the
# teacher's form stayed 0.016 AUC below the teacher after one pass of 2M samples (and a DLRM 0.03-0.04),
# so the teacher's AUC was not a reachable ceiling; at 1e-2 (with the magnitudes below doubled to keep
# the ceiling near 0.80) a DLRM gets within about 0.016 of it in 2M samples.
LEARNABLE_PROBABILITY = 1e-2

# The harder teacher (``tail_signal`` > 0): rows outside each table's hottest TAIL_CUT share carry per-id
# effects too, damped only for ids too rare to learn (seen fewer than ~20 times in 2M samples).
TAIL_CUT = 0.01
TAIL_LEARNABLE_PROBABILITY = 1e-5

BASE_CTR = 0.25
CALIBRATION_SAMPLES = 32_768

# Teacher magnitudes (logit units at teacher_scale 1), calibrated so that the defaults (26 tables of
# 100k rows, Zipf 1.1) give a teacher AUC of about 0.79 on 100k held-out samples.
DENSE_STD = 0.75  # MLP + linear function of the dense features
ID_EFFECT_STD = 2.4  # all per-id scalar effects together, at full strength
PAIR_STD = 1.0  # each table x table latent dot product, at full strength
CROSS_STD = 0.9  # per-id slope on one dense feature, at full strength
HIDDEN = 8
LATENT = 4
EFFECT_TABLE_SHARE = 0.6

_STREAM_CODES = {"train": 0, "eval": 1}
_WORLD, _BATCH, _CALIBRATION = 0, 1, 2


def _stream_code(stream: str) -> int:
    if stream in _STREAM_CODES:
        return _STREAM_CODES[stream]
    if not stream:
        raise ValueError("stream must be a non-empty name")
    # Any other name gets its own stream; crc32 is stable across processes, unlike hash().
    return 2 + zlib.crc32(stream.encode())


class _Zipf:
    """Truncated Zipf over ranks 0..rows-1 with P(rank r) proportional to (r + 1) ** -exponent."""

    def __init__(self, rows: int, exponent: float) -> None:
        self.rows = rows
        self.exponent = exponent
        self.head = min(rows, ZIPF_HEAD)
        cumulative = np.cumsum(np.arange(1, self.head + 1, dtype=np.float64) ** -exponent)
        self._lo, self._hi = self.head + 0.5, rows + 0.5
        tail_mass = self._power_integral(self._lo, self._hi) if rows > self.head else 0.0
        self.total = float(cumulative[-1]) + tail_mass
        self.cdf = cumulative / self.total
        if tail_mass == 0.0:
            self.cdf[-1] = 1.0  # u < 1 must never fall past the last rank through rounding
        self.head_mass = float(self.cdf[-1])

    def _power_integral(self, lo: float, hi: float) -> float:
        s = self.exponent
        if abs(s - 1.0) < 1e-12:
            return math.log(hi / lo)
        return (hi ** (1.0 - s) - lo ** (1.0 - s)) / (1.0 - s)

    def sample(self, uniforms: npt.NDArray[np.float64]) -> IntArray:
        ranks = np.searchsorted(self.cdf, uniforms, side="right").astype(np.int64)
        if self.rows > self.head:
            tail = uniforms >= self.head_mass
            if tail.any():
                ranks[tail] = self._sample_tail((uniforms[tail] - self.head_mass) / (1.0 - self.head_mass))
        return ranks

    def _sample_tail(self, v: npt.NDArray[np.float64]) -> IntArray:
        s, lo, hi = self.exponent, self._lo, self._hi
        if abs(s - 1.0) < 1e-12:
            x = lo * (hi / lo) ** v
        else:
            a, b = lo ** (1.0 - s), hi ** (1.0 - s)
            x = (a + v * (b - a)) ** (1.0 / (1.0 - s))
        # x approximates the 1-based rank; clip to the tail's 0-based ranks.
        return np.clip(np.rint(x).astype(np.int64) - 1, self.head, self.rows - 1)

    def probability(self, ranks: IntArray) -> npt.NDArray[np.float64]:
        return (ranks.astype(np.float64) + 1.0) ** -self.exponent / self.total


class _Permutation:
    """Fixed bijection rank -> id of one table, so that hot ids are scattered over the id space."""

    def __init__(self, rows: int, rng: np.random.Generator) -> None:
        self.rows = rows
        self._forward: npt.NDArray[np.int32] | None = None
        self._inverse: npt.NDArray[np.int32] | None = None
        if rows <= PERMUTATION_LIMIT:
            forward = rng.permutation(rows).astype(np.int32)
            inverse = np.empty(rows, dtype=np.int32)
            inverse[forward] = np.arange(rows, dtype=np.int32)
            self._forward, self._inverse = forward, inverse
            self._multiplier = self._inverse_multiplier = self._offset = 0
        else:
            while True:
                multiplier = int(rng.integers(rows // 3, rows - 1))
                if math.gcd(multiplier, rows) == 1:
                    break
            self._multiplier = multiplier
            self._inverse_multiplier = pow(multiplier, -1, rows)
            self._offset = int(rng.integers(0, rows))

    def forward(self, ranks: IntArray) -> IntArray:
        if self._forward is not None:
            return self._forward[ranks].astype(np.int64)
        # multiplier < 2**31 and rank < 2**31: the product fits in int64.
        return (ranks * self._multiplier + self._offset) % self.rows

    def inverse(self, ids: IntArray) -> IntArray:
        if self._inverse is not None:
            return self._inverse[ids].astype(np.int64)
        # Both factors are below rows < 2**31: the product fits in int64.
        return ((ids - self._offset) % self.rows) * self._inverse_multiplier % self.rows


def _lookup(table: FloatArray, ranks: IntArray) -> FloatArray:
    """Teacher parameters of the given ranks; ranks past the stored head have none (zero)."""
    if ranks.size and int(ranks.max()) < table.shape[0]:
        return table[ranks]
    clipped = np.minimum(ranks, table.shape[0] - 1)
    values = table[clipped]
    outside = ranks >= table.shape[0]
    values[outside] = 0.0
    return values


@dataclass(frozen=True)
class RawBatch:
    """A batch before normalisation: what a Criteo file would contain, plus the teacher's truth."""

    counts: FloatArray  # [B, num_dense] non-negative integer-valued counts
    ids: IntArray  # [B, num_sparse]
    labels: FloatArray  # [B]
    probability: FloatArray  # [B] teacher P(label = 1)

    def to_batch(self) -> Batch:
        return Batch(
            dense=torch.from_numpy(np.log1p(self.counts)),
            sparse=torch.from_numpy(self.ids),
            labels=torch.from_numpy(self.labels),
        )


class SyntheticCriteo:
    """Deterministic, order-independent Criteo-like batches with teacher-model labels.

    Every batch is generated from its own PCG64 stream seeded by ``(seed, stream, index,
    batch_size)``: any replica can produce any batch in O(batch) without generating the ones before
    it, which is what makes resuming a replaced trainer at its cursor exact and free. Nothing is
    mutated after construction, so Hogwild worker threads may share one instance.

    ``teacher_scale`` multiplies the informative part of the teacher's logit; the bias is solved
    again for each scale so the base CTR stays at BASE_CTR and only the AUC ceiling moves.

    ``tail_signal`` says how much the long tail of each table matters: the per-id signal variance that
    rows outside a table's hottest 1% carry, as a multiple of what its hottest 1% carry. At 0 (the
    original teacher) per-id effects fade with rarity so fast that ~99.9% of them sit in the top ~100
    ids of each table: losing every update to the tail costs nothing, and neither can a checkpoint
    strategy that drops the tail be told apart from one that keeps it. At 0.5 (the CPR benchmarks'
    teacher) the tail holds a third of the per-id signal, learnable in one pass: a shard that loses its
    tail rows' updates mid-run ends measurably worse.
    """

    def __init__(
        self,
        table_rows: list[int],
        num_dense: int = 13,
        seed: int = 0,
        zipf_exponent: float = 1.1,
        teacher_scale: float = 1.0,
        embedding_dim: int = 16,
        tail_signal: float = 0.0,
    ) -> None:
        if not table_rows or any(rows < 2 for rows in table_rows):
            raise ValueError(f"table_rows must be a non-empty list of sizes >= 2, got {table_rows}")
        if num_dense < 1:
            raise ValueError(f"num_dense must be >= 1, got {num_dense}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if zipf_exponent <= 0 or teacher_scale <= 0:
            raise ValueError("zipf_exponent and teacher_scale must be positive")
        if tail_signal < 0:
            raise ValueError(f"tail_signal must be >= 0, got {tail_signal}")
        self.tail_signal = tail_signal
        self.table_rows = [int(rows) for rows in table_rows]
        self.num_dense = num_dense
        self.num_sparse = len(self.table_rows)
        self.seed = seed
        self.zipf_exponent = zipf_exponent
        self.teacher_scale = teacher_scale
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        # The teacher's interactions are dot products of this width: never wider than the model's
        # embeddings, so that a DLRM of that width can represent them exactly.
        self.embedding_dim = embedding_dim
        self.latent_dim = min(LATENT, embedding_dim)

        world = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, _WORLD])))
        self._build_world(world)
        self._build_teacher(world)
        self._calibrate()

    # -- construction ---------------------------------------------------------------------------

    def _build_world(self, rng: np.random.Generator) -> None:
        d = self.num_dense
        # Criteo's integer features: mostly small counts with a heavy tail, many exact zeros.
        self._dense_mu = rng.uniform(0.5, 3.5, d).astype(np.float32)
        self._dense_sigma = rng.uniform(0.6, 1.5, d).astype(np.float32)
        self._dense_zero = rng.uniform(0.05, 0.45, d).astype(np.float32)

        samplers: dict[int, _Zipf] = {}
        groups: dict[int, list[int]] = {}
        for f, rows in enumerate(self.table_rows):
            if rows not in samplers:
                samplers[rows] = _Zipf(rows, self.zipf_exponent)
            groups.setdefault(rows, []).append(f)
        self._samplers = [samplers[rows] for rows in self.table_rows]
        # Tables of equal size share one CDF and are sampled with one searchsorted call.
        self._groups = [(samplers[rows], np.asarray(fs, dtype=np.int64)) for rows, fs in groups.items()]
        self._permutations = [_Permutation(rows, rng) for rows in self.table_rows]

    def _damping(self, f: int) -> FloatArray:
        """Per-rank strength in [0, 1]: full for ids frequent enough to be learnt, fading for rare ids."""
        head = min(self.table_rows[f], TEACHER_HEAD)
        q = self._samplers[f].probability(np.arange(head, dtype=np.int64))
        return (q / (q + LEARNABLE_PROBABILITY)).astype(np.float32)

    def _per_rank(self, rng: np.random.Generator, f: int, std: float, width: int = 0) -> FloatArray:
        damping = self._damping(f)
        if width == 0:
            return (rng.standard_normal(damping.shape[0], dtype=np.float32) * std * damping).astype(np.float32)
        values = rng.standard_normal((damping.shape[0], width), dtype=np.float32) * std
        return (values * damping[:, None]).astype(np.float32)

    def _tail_effect(self, rng: np.random.Generator, f: int, head_effect: FloatArray) -> FloatArray:
        """Per-id effects on the rows past the table's hottest ``TAIL_CUT``, scaled so that their signal
        variance (sum over ids of P(id) * effect**2) is ``tail_signal`` times the head's."""
        rows = head_effect.shape[0]
        cut = max(1, math.ceil(TAIL_CUT * self.table_rows[f]))
        q = self._samplers[f].probability(np.arange(rows, dtype=np.int64))
        tail = np.zeros(rows, dtype=np.float64)
        if cut < rows:
            damping = q[cut:] / (q[cut:] + TAIL_LEARNABLE_PROBABILITY)
            tail[cut:] = rng.standard_normal(rows - cut) * damping
        head_variance = float(np.sum(q[:cut] * head_effect[:cut].astype(np.float64) ** 2))
        tail_variance = float(np.sum(q * tail**2))
        if tail_variance <= 0.0 or head_variance <= 0.0:
            return np.zeros(rows, dtype=np.float32)
        return (tail * math.sqrt(self.tail_signal * head_variance / tail_variance)).astype(np.float32)

    def signal_shares(self) -> list[tuple[int, float, float]]:
        """Per effect table: (table, per-id signal variance of its hottest 1% of rows, of the rest)."""
        out = []
        for f, effect in self._effects:
            cut = max(1, math.ceil(TAIL_CUT * self.table_rows[f]))
            q = self._samplers[f].probability(np.arange(effect.shape[0], dtype=np.int64))
            weighted = q * effect.astype(np.float64) ** 2
            out.append((f, float(weighted[:cut].sum()), float(weighted[cut:].sum())))
        return out

    def _build_teacher(self, rng: np.random.Generator) -> None:
        d, f_count = self.num_dense, self.num_sparse
        self._w1 = (rng.standard_normal((d, HIDDEN)) * (1.5 / math.sqrt(d))).astype(np.float32)
        self._b1 = rng.uniform(-0.5, 0.5, HIDDEN).astype(np.float32)
        self._w2 = rng.standard_normal(HIDDEN).astype(np.float32)
        self._linear = (rng.standard_normal(d) / math.sqrt(d)).astype(np.float32)
        self._dense_gain = np.float32(1.0)  # set by _calibrate

        # Scalar effects on a random subset of tables, the total variance split unevenly among them
        # (real features range from very predictive to useless).
        n_effect = max(1, round(EFFECT_TABLE_SHARE * f_count))
        effect_tables = np.sort(rng.choice(f_count, size=n_effect, replace=False))
        shares = rng.dirichlet(np.ones(n_effect))
        self._effects = [
            (int(f), self._per_rank(rng, int(f), ID_EFFECT_STD * math.sqrt(share)))
            for f, share in zip(effect_tables, shares, strict=True)
        ]
        if self.tail_signal > 0:
            # Drawn from a stream of their own: the original teacher's parameters stay the same.
            tail_rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, _WORLD, 1])))
            self._effects = [(f, effect + self._tail_effect(tail_rng, f, effect)) for f, effect in self._effects]

        # Low-rank table x table interactions: <u_a[id_a], v_b[id_b]> has std PAIR_STD at full strength.
        order = rng.permutation(f_count)
        element_std = math.sqrt(PAIR_STD / math.sqrt(self.latent_dim))
        self._pairs: list[tuple[int, int, FloatArray, FloatArray]] = []
        for k in range(min(2, f_count // 2)):
            a, b = int(order[2 * k]), int(order[2 * k + 1])
            self._pairs.append(
                (
                    a,
                    b,
                    self._per_rank(rng, a, element_std, self.latent_dim),
                    self._per_rank(rng, b, element_std, self.latent_dim),
                )
            )

        # One table modulates the slope of one dense feature: a table x dense interaction.
        cross_table = int(order[-1])
        self._cross = (cross_table, int(rng.integers(0, d)), self._per_rank(rng, cross_table, CROSS_STD))

    def _calibrate(self) -> None:
        """Standardise the dense inputs, fix the dense part's scale, and solve for the bias that
        gives a base CTR of BASE_CTR at this teacher_scale (so the scale changes only the signal)."""
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, _CALIBRATION])))
        counts, ranks, _ = self._draw(rng, CALIBRATION_SAMPLES)
        x = np.log1p(counts)
        self._dense_loc = x.mean(axis=0).astype(np.float32)
        self._dense_scale = np.maximum(x.std(axis=0), 1e-3).astype(np.float32)
        dense_part = self._dense_signal(x)
        self._dense_gain = np.float32(DENSE_STD / max(float(dense_part.std()), 1e-6))
        signal = self._signal(x, ranks).astype(np.float64) * self.teacher_scale

        lo, hi = -30.0, 30.0
        for _ in range(60):
            mid = (lo + hi) / 2.0
            ctr = float(np.mean(1.0 / (1.0 + np.exp(-(mid + signal)))))
            lo, hi = (mid, hi) if ctr < BASE_CTR else (lo, mid)
        self._bias = np.float32((lo + hi) / 2.0)

    # -- generation -----------------------------------------------------------------------------

    def _draw(self, rng: np.random.Generator, size: int) -> tuple[FloatArray, IntArray, FloatArray]:
        """Raw counts [B, D], ranks in feature-major layout [F, B], and label uniforms [B]."""
        z = rng.standard_normal((size, self.num_dense), dtype=np.float32)
        zero = rng.random((size, self.num_dense), dtype=np.float32) < self._dense_zero
        counts = np.floor(np.exp(self._dense_mu + self._dense_sigma * z))
        counts[zero] = 0.0
        ranks = np.empty((self.num_sparse, size), dtype=np.int64)
        for sampler, tables in self._groups:
            ranks[tables] = sampler.sample(rng.random((tables.shape[0], size)))
        label_uniforms = rng.random(size, dtype=np.float32)
        return counts.astype(np.float32), ranks, label_uniforms

    def _dense_signal(self, x: FloatArray) -> FloatArray:
        standard = (x - self._dense_loc) / self._dense_scale
        hidden = np.tanh(standard @ self._w1 + self._b1)
        return (hidden @ self._w2 + standard @ self._linear) * self._dense_gain

    def _signal(self, x: FloatArray, ranks: IntArray) -> FloatArray:
        """The teacher's logit before bias and scale; x is log1p(counts), ranks are feature-major."""
        signal = self._dense_signal(x)
        for f, effect in self._effects:
            signal += _lookup(effect, ranks[f])
        for a, b, u, v in self._pairs:
            signal += np.einsum("bk,bk->b", _lookup(u, ranks[a]), _lookup(v, ranks[b]))
        table, feature, slope = self._cross
        standard = (x[:, feature] - self._dense_loc[feature]) / self._dense_scale[feature]
        signal += _lookup(slope, ranks[table]) * standard
        return signal.astype(np.float32)

    def _probability(self, x: FloatArray, ranks: IntArray) -> FloatArray:
        logit = self._bias + np.float32(self.teacher_scale) * self._signal(x, ranks)
        return (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)

    def raw_batch(self, stream: str, index: int, batch_size: int) -> RawBatch:
        """The batch before log1p, as it would be written to a Criteo file."""
        if index < 0 or batch_size < 1:
            raise ValueError(f"need index >= 0 and batch_size >= 1, got {index}, {batch_size}")
        entropy = [self.seed, _BATCH, _stream_code(stream), index, batch_size]
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))
        counts, ranks, label_uniforms = self._draw(rng, batch_size)
        probability = self._probability(np.log1p(counts), ranks)
        ids = np.empty((batch_size, self.num_sparse), dtype=np.int64)
        for f, permutation in enumerate(self._permutations):
            ids[:, f] = permutation.forward(ranks[f])
        labels = (label_uniforms < probability).astype(np.float32)
        return RawBatch(counts=counts, ids=ids, labels=labels, probability=probability)

    def batch(self, stream: str, index: int, batch_size: int) -> Batch:
        return self.raw_batch(stream, index, batch_size).to_batch()

    def train_batches(
        self, shard: int, num_shards: int, start_cursor: int, batch_size: int, total_samples: int
    ) -> Iterator[tuple[int, Batch]]:
        """This shard's batches of one pass, from ``start_cursor`` on, each with the cursor after it.

        Global batch b goes to shard b % num_shards; the final global batch is the first samples of
        a full-size batch, so a sample's content never depends on total_samples.
        """
        for cursor, make in self.train_batch_makers(shard, num_shards, start_cursor, batch_size, total_samples):
            yield cursor, make()

    def train_batch_makers(
        self, shard: int, num_shards: int, start_cursor: int, batch_size: int, total_samples: int
    ) -> Iterator[tuple[int, Callable[[], Batch]]]:
        """What :meth:`train_batches` yields, each batch still to be generated: a trainer hands out cursors
        under its reader lock and generates the batches (milliseconds each) in its prefetch threads."""
        check_shard(shard, num_shards)
        if start_cursor < 0:
            raise ValueError(f"start_cursor must be >= 0, got {start_cursor}")
        total_batches = num_global_batches(batch_size, total_samples)
        cursor = start_cursor
        while (index := shard + cursor * num_shards) < total_batches:
            size = min(batch_size, total_samples - index * batch_size)
            cursor += 1
            yield cursor, functools.partial(self._train_batch, index, batch_size, size)

    def _train_batch(self, index: int, batch_size: int, size: int) -> Batch:
        return self.batch("train", index, batch_size).head(size)

    def eval_batches(self, total_samples: int, batch_size: int) -> Iterator[Batch]:
        for index in range(num_global_batches(batch_size, total_samples)):
            size = min(batch_size, total_samples - index * batch_size)
            yield self.batch("eval", index, batch_size).head(size)

    # -- the teacher ----------------------------------------------------------------------------

    def teacher_probability(self, batch: Batch) -> torch.Tensor:
        """The teacher's P(label = 1) per sample: the Bayes-optimal prediction for this data."""
        if batch.num_sparse != self.num_sparse or batch.num_dense != self.num_dense:
            raise ValueError("batch shape does not match this generator")
        ids = batch.sparse.detach().cpu().numpy()
        ranks = np.stack([p.inverse(ids[:, f]) for f, p in enumerate(self._permutations)])
        x = batch.dense.detach().cpu().numpy().astype(np.float32, copy=False)
        return torch.from_numpy(self._probability(x, ranks))

    def teacher_evaluation(self, total_samples: int, batch_size: int) -> EvalResult:
        """The teacher scored like a model on the eval stream: the best any model can do."""
        labels, probabilities = [], []
        for batch in self.eval_batches(total_samples, batch_size):
            labels.append(batch.labels.numpy())
            probabilities.append(self.teacher_probability(batch).numpy())
        return evaluate(np.concatenate(labels), np.concatenate(probabilities))

    def teacher_auc(self, total_samples: int, batch_size: int) -> float:
        labels, probabilities = [], []
        for batch in self.eval_batches(total_samples, batch_size):
            labels.append(batch.labels.numpy())
            probabilities.append(self.teacher_probability(batch).numpy())
        return auc(np.concatenate(labels), np.concatenate(probabilities))
