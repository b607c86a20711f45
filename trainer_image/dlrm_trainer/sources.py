"""Builds the data source a TrainingJob spec names (synthetic generator or Criteo TSV files), and
runs a source for ``data.epochs`` passes.

A source deals each trainer (shard) its own batches of one pass; a trainer's cursor counts the
batches it consumed, so a replacement resumes where its predecessor stopped. Over several epochs
the cursor keeps counting: with K = ``batches_per_epoch(...)``, the batch at cursor c of epoch e
has cursor e * K + c, and a trainer resuming at cursor c restarts epoch c // K at batch c % K.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import Protocol

from dlrm_trainer.data.batch import Batch, shard_num_batches
from dlrm_trainer.data.synthetic import SyntheticCriteo
from trainingjob_operator.api.spec import TrainingJobSpec

log = logging.getLogger("dlrm_trainer.sources")


class DataSource(Protocol):
    def train_batches(self, shard: int, num_shards: int, start_cursor: int, batch_size: int,
                      total_samples: int) -> Iterator[tuple[int, Batch]]:
        """Trainer ``shard``'s batches of one pass over ``total_samples`` samples (all trainers
        together), from ``start_cursor`` on, each with the cursor after it."""
        ...

    def batches_per_epoch(self, shard: int, num_shards: int, batch_size: int, total_samples: int) -> int:
        """The most batches ``train_batches`` gives trainer ``shard`` in one pass."""
        ...

    def eval_batches(self, total_samples: int, batch_size: int) -> Iterator[Batch]: ...


class SyntheticSource(SyntheticCriteo):
    """The synthetic generator: global batch b of a pass goes to shard b % num_shards, and every
    epoch repeats the same samples."""

    def batches_per_epoch(self, shard: int, num_shards: int, batch_size: int, total_samples: int) -> int:
        return shard_num_batches(shard, num_shards, batch_size, total_samples)


class CriteoSource:
    """Criteo TSV: train on ``path`` and evaluate on data that training never reads: ``evalPath``,
    else the last file of a directory, else the last ``evalSamples`` lines of the file."""

    def __init__(self, spec: TrainingJobSpec) -> None:
        from dlrm_trainer.data.criteo import CriteoTSV, layout
        from dlrm_trainer.runtime import ConfigError

        rows = spec.model.rows()
        assert spec.data.path is not None
        try:
            self.layout = layout(spec.data.path, spec.data.eval_path, spec.data.eval_samples)
        except ValueError as exc:  # overlapping paths, too few lines: no restart can fix that
            raise ConfigError(str(exc)) from None
        except FileNotFoundError as exc:  # a volume not mounted: name the field that points there
            field = "data.evalPath" if spec.data.eval_path and spec.data.eval_path in str(exc) else "data.path"
            raise ConfigError(f"{field}: {exc}") from None
        dims = (spec.model.dense_features, spec.model.sparse_features)
        self.train = CriteoTSV(list(self.layout.train), rows, *dims)
        self.eval = CriteoTSV(list(self.layout.eval), rows, *dims)
        train = self.layout.train
        log.info("criteo: training on %s; holding out %s", train[0] if len(train) == 1 else
                 f"{len(train)} files, {train[0]} to {train[-1]}", self.layout.held_out)

    def train_batches(self, shard: int, num_shards: int, start_cursor: int, batch_size: int,
                      total_samples: int) -> Iterator[tuple[int, Batch]]:
        return self.train.batches(batch_size, shard, num_shards, start_cursor, limit=total_samples)

    def batches_per_epoch(self, shard: int, num_shards: int, batch_size: int, total_samples: int) -> int:
        return self.train.batches_per_pass(batch_size, shard, num_shards, total_samples)

    def eval_batches(self, total_samples: int, batch_size: int) -> Iterator[Batch]:
        for _, batch in self.eval.batches(batch_size, limit=total_samples):
            yield batch


def epoch_batches(source: DataSource, shard: int, num_shards: int, start_cursor: int, batch_size: int,
                  total_samples: int, epochs: int) -> Iterator[tuple[int, Batch]]:
    """Trainer ``shard``'s batches of ``epochs`` passes, from ``start_cursor`` on, each with the cursor
    after it; the cursor counts on across epochs (module docstring). A pass that ends early (data
    shorter than its share) leaves its remaining cursors unused."""
    for cursor, make in epoch_batch_makers(source, shard, num_shards, start_cursor, batch_size, total_samples,
                                           epochs):
        yield cursor, make()


def epoch_batch_makers(source: DataSource, shard: int, num_shards: int, start_cursor: int, batch_size: int,
                       total_samples: int, epochs: int) -> Iterator[tuple[int, Callable[[], Batch]]]:
    """What :func:`epoch_batches` yields, with each batch still to be made where the source can defer it
    (the synthetic generator: a batch is a pure function of its index); a source that cannot (a file read
    in order) hands over batches it already made."""
    if epochs < 1 or start_cursor < 0:
        raise ValueError(f"epochs must be >= 1 and start_cursor >= 0, got {epochs}, {start_cursor}")
    per_epoch = source.batches_per_epoch(shard, num_shards, batch_size, total_samples)
    if per_epoch == 0:
        return
    first, within = divmod(start_cursor, per_epoch)
    for epoch in range(first, epochs):
        for cursor, make in _batch_makers(source, shard, num_shards, within, batch_size, total_samples):
            if cursor > per_epoch:
                raise RuntimeError(f"the data source gave batch {cursor} of a pass of {per_epoch} batches")
            yield epoch * per_epoch + cursor, make
        within = 0


def _batch_makers(source: DataSource, shard: int, num_shards: int, start_cursor: int, batch_size: int,
                  total_samples: int) -> Iterator[tuple[int, Callable[[], Batch]]]:
    if isinstance(source, SyntheticCriteo):
        yield from source.train_batch_makers(shard, num_shards, start_cursor, batch_size, total_samples)
        return
    for cursor, batch in source.train_batches(shard, num_shards, start_cursor, batch_size, total_samples):
        yield cursor, functools.partial(_made, batch)


def _made(batch: Batch) -> Batch:
    return batch


def common_cursor_limit(source: DataSource, num_shards: int, batch_size: int, total_samples: int,
                        epochs: int) -> int:
    """The last cursor every trainer's epochs reach (when no pass ends early): the end of the
    smallest share's last epoch."""
    return epochs * min(source.batches_per_epoch(shard, num_shards, batch_size, total_samples)
                        for shard in range(num_shards))


def data_source(spec: TrainingJobSpec) -> DataSource:
    if spec.data.source == "criteo":
        return CriteoSource(spec)
    return SyntheticSource(
        spec.model.rows(), num_dense=spec.model.dense_features, seed=spec.data.seed,
        zipf_exponent=spec.data.synthetic.zipf_exponent, teacher_scale=spec.data.synthetic.teacher_scale,
        embedding_dim=spec.model.embedding_dim, tail_signal=spec.data.synthetic.tail_signal,
    )
