"""Evaluation metrics of a click-through-rate model.

Numpy only (torch tensors are accepted and converted), so that the coordinator, the benchmarks and
the trainer all compute identical numbers without pulling in a metrics framework. AUC is exact
(rank based, ties averaged) rather than binned: the recovery experiments compare AUC differences of
a few thousandths, which a histogram approximation would blur.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

ArrayLike = torch.Tensor | npt.NDArray[Any] | Sequence[float]


def _as_array(values: ArrayLike, name: str) -> npt.NDArray[np.float64]:
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def _pair(labels: ArrayLike, values: ArrayLike, name: str) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    y = _as_array(labels, "labels")
    v = _as_array(values, name)
    if y.shape != v.shape:
        raise ValueError(f"labels and {name} differ in length: {y.shape[0]} vs {v.shape[0]}")
    if y.size == 0:
        raise ValueError("no samples")
    if not np.all((y == 0.0) | (y == 1.0)):
        raise ValueError("labels must be 0 or 1")
    return y, v


def auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """ROC AUC: the probability that a random positive outscores a random negative, ties counting
    one half (Mann-Whitney U with average ranks)."""
    y, s = _pair(labels, scores, "scores")
    positives = float(y.sum())
    negatives = float(y.size) - positives
    if positives == 0 or negatives == 0:
        raise ValueError("AUC is undefined when only one class is present")
    order = np.argsort(s, kind="mergesort")
    sorted_scores = s[order]
    # Average rank of every tie group: groups are the runs of equal sorted scores.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], s.size]
    average_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.repeat(average_rank, ends - starts)
    positive_rank_sum = float(ranks[y[order] == 1.0].sum())
    return (positive_rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def log_loss(labels: ArrayLike, probabilities: ArrayLike, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy in nats; probabilities are clipped so that one confident mistake
    cannot make the whole evaluation infinite."""
    y, p = _pair(labels, probabilities, "probabilities")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def _entropy(ctr: float) -> float:
    if ctr <= 0.0 or ctr >= 1.0:
        raise ValueError("normalized entropy is undefined when only one class is present")
    return -(ctr * math.log(ctr) + (1.0 - ctr) * math.log(1.0 - ctr))


def normalized_entropy(labels: ArrayLike, probabilities: ArrayLike) -> float:
    """Log loss divided by the entropy of the empirical CTR (He et al. 2014).

    Raw log loss depends on the CTR of the data set; NE does not, which is what makes runs on
    differently calibrated synthetic data comparable. 1.0 is what always predicting the base rate
    scores; lower is better.
    """
    y, p = _pair(labels, probabilities, "probabilities")
    return log_loss(y, p) / _entropy(float(y.mean()))


@dataclass
class EvalResult:
    samples: int
    auc: float
    log_loss: float
    normalized_entropy: float
    ctr: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def evaluate(labels: ArrayLike, probabilities: ArrayLike) -> EvalResult:
    y, p = _pair(labels, probabilities, "probabilities")
    loss = log_loss(y, p)
    ctr = float(y.mean())
    return EvalResult(
        samples=int(y.size),
        auc=auc(y, p),
        log_loss=loss,
        normalized_entropy=loss / _entropy(ctr),
        ctr=ctr,
    )


class StreamingEval:
    """Collects evaluation batches and scores them once at the end.

    Exact AUC needs every score, so batches are kept rather than summarised; at 16 bytes per
    sample a few million samples are a few tens of megabytes. ``add`` is thread-safe because Hogwild
    worker threads of one trainer evaluate concurrently.
    """

    def __init__(self) -> None:
        self._labels: list[npt.NDArray[np.float64]] = []
        self._probabilities: list[npt.NDArray[np.float64]] = []
        self._lock = threading.Lock()

    def add(self, labels: ArrayLike, probabilities: ArrayLike) -> None:
        y, p = _pair(labels, probabilities, "probabilities")
        with self._lock:
            self._labels.append(y)
            self._probabilities.append(p)

    @property
    def samples(self) -> int:
        with self._lock:
            return sum(part.size for part in self._labels)

    def reset(self) -> None:
        with self._lock:
            self._labels.clear()
            self._probabilities.clear()

    def result(self) -> EvalResult:
        with self._lock:
            if not self._labels:
                raise ValueError("no samples were added")
            labels = np.concatenate(self._labels)
            probabilities = np.concatenate(self._probabilities)
        return evaluate(labels, probabilities)
