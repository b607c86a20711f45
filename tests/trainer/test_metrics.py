"""The evaluation metrics against hand-computed values and an independent implementation."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from dlrm_trainer.metrics import EvalResult, StreamingEval, auc, evaluate, log_loss, normalized_entropy


def test_auc_hand_computed_with_ties() -> None:
    # Positives score 0.8, 0.4, 0.4; negatives 0.4, 0.2. Pairs (pos, neg):
    # 0.8 beats both (2), each 0.4 ties the 0.4 negative (0.5) and beats 0.2 (1): 2 + 1.5 + 1.5 = 5 of 6.
    labels = [1, 0, 1, 1, 0]
    scores = [0.8, 0.4, 0.4, 0.4, 0.2]
    assert auc(labels, scores) == pytest.approx(5 / 6)


def test_auc_extremes_and_constant_scores() -> None:
    labels = np.array([0, 0, 1, 1])
    assert auc(labels, [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auc(labels, [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert auc(labels, [0.5, 0.5, 0.5, 0.5]) == 0.5


def test_auc_accepts_tensors_and_rejects_one_class() -> None:
    assert auc(torch.tensor([0.0, 1.0]), torch.tensor([0.3, 0.7])) == 1.0
    with pytest.raises(ValueError, match="one class"):
        auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="0 or 1"):
        auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="length"):
        auc([0, 1], [0.1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_torchmetrics(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(5000) < 0.3
    # Rounded scores produce many ties, the case where approximate implementations disagree.
    scores = np.round(rng.random(5000) * 0.5 + labels * 0.2, 2)
    expected = binary_auroc(torch.from_numpy(scores), torch.from_numpy(labels.astype(np.int64))).item()
    assert auc(labels, scores) == pytest.approx(expected, abs=1e-6)


def test_log_loss_hand_computed_and_clipped() -> None:
    assert log_loss([1, 0], [0.8, 0.25]) == pytest.approx(-(math.log(0.8) + math.log(0.75)) / 2)
    # A certain, wrong prediction is clipped to eps instead of giving infinity.
    assert log_loss([1], [0.0], eps=1e-7) == pytest.approx(-math.log(1e-7))


def test_normalized_entropy_is_one_for_the_base_rate() -> None:
    labels = np.array([1, 0, 0, 0] * 250)
    assert normalized_entropy(labels, np.full(1000, 0.25)) == pytest.approx(1.0, abs=1e-12)
    # Predicting anything else constant is worse; an informative prediction is better.
    assert normalized_entropy(labels, np.full(1000, 0.5)) > 1.0
    assert normalized_entropy(labels, np.where(labels == 1, 0.6, 0.15)) < 1.0


def test_evaluate_fields() -> None:
    labels = np.array([1, 0, 0, 0])
    result = evaluate(labels, [0.9, 0.2, 0.1, 0.3])
    assert isinstance(result, EvalResult)
    assert result.samples == 4
    assert result.ctr == 0.25
    assert result.auc == 1.0
    assert result.normalized_entropy == pytest.approx(normalized_entropy(labels, [0.9, 0.2, 0.1, 0.3]))
    assert set(result.to_dict()) == {"samples", "auc", "log_loss", "normalized_entropy", "ctr"}


def test_streaming_eval_equals_one_shot_and_is_thread_safe() -> None:
    rng = np.random.default_rng(7)
    labels = (rng.random(4000) < 0.25).astype(np.float32)
    probabilities = np.clip(0.25 + 0.3 * (labels - 0.25) + rng.normal(0, 0.1, 4000), 0.01, 0.99)
    stream = StreamingEval()
    with pytest.raises(ValueError):
        stream.result()

    def add(part: int) -> None:
        for start in range(part * 1000, (part + 1) * 1000, 100):
            stream.add(torch.from_numpy(labels[start : start + 100]), probabilities[start : start + 100])

    threads = [threading.Thread(target=add, args=(part,)) for part in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert stream.samples == 4000
    streamed, direct = stream.result(), evaluate(labels, probabilities)
    # Order of the concatenation differs between threads; every metric is order invariant.
    assert streamed.auc == pytest.approx(direct.auc, abs=1e-12)
    assert streamed.log_loss == pytest.approx(direct.log_loss, abs=1e-12)
    assert streamed.samples == direct.samples
    stream.reset()
    assert stream.samples == 0
