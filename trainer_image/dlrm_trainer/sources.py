"""Builds the data source a TrainingJob spec names (synthetic generator or Criteo TSV files)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from dlrm_trainer.data.batch import Batch
from trainingjob_operator.api.spec import TrainingJobSpec


class DataSource(Protocol):
    def train_batches(self, shard: int, num_shards: int, start_cursor: int, batch_size: int,
                      total_samples: int) -> Iterator[tuple[int, Batch]]: ...

    def eval_batches(self, total_samples: int, batch_size: int) -> Iterator[Batch]: ...


class CriteoSource:
    """Criteo TSV: train on ``path``; evaluate on ``evalPath`` (required for a meaningful AUC)."""

    def __init__(self, spec: TrainingJobSpec) -> None:
        from dlrm_trainer.data.criteo import CriteoTSV

        rows = spec.model.rows()
        assert spec.data.path is not None
        self.train = CriteoTSV(Path(spec.data.path), rows, spec.model.dense_features, spec.model.sparse_features)
        eval_path = Path(spec.data.eval_path or spec.data.path)
        self.eval = CriteoTSV(eval_path, rows, spec.model.dense_features, spec.model.sparse_features)

    def train_batches(self, shard: int, num_shards: int, start_cursor: int, batch_size: int,
                      total_samples: int) -> Iterator[tuple[int, Batch]]:
        return self.train.batches(batch_size, shard, num_shards, start_cursor, limit=total_samples)

    def eval_batches(self, total_samples: int, batch_size: int) -> Iterator[Batch]:
        for _, batch in self.eval.batches(batch_size, limit=total_samples):
            yield batch


def data_source(spec: TrainingJobSpec) -> DataSource:
    if spec.data.source == "criteo":
        return CriteoSource(spec)
    from dlrm_trainer.data.synthetic import SyntheticCriteo

    return SyntheticCriteo(
        spec.model.rows(), num_dense=spec.model.dense_features, seed=spec.data.seed,
        zipf_exponent=spec.data.synthetic.zipf_exponent, teacher_scale=spec.data.synthetic.teacher_scale,
        embedding_dim=spec.model.embedding_dim,
    )
