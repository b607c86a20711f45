"""Data sources of the trainer: a deterministic synthetic Criteo-like stream and Criteo TSV files.

Both produce the same ``Batch`` and partition batches over trainers the same way (global batch b to
shard b % num_shards, a per-shard cursor counting consumed batches), so the trainer, resume and
lost-sample accounting never depend on where the samples come from.
"""

from dlrm_trainer.data.batch import (
    Batch,
    feature_keys,
    num_global_batches,
    shard_num_batches,
    shard_num_samples,
)
from dlrm_trainer.data.criteo import CriteoTSV, hash_category, write_synthetic_tsv
from dlrm_trainer.data.synthetic import RawBatch, SyntheticCriteo

__all__ = [
    "Batch",
    "CriteoTSV",
    "RawBatch",
    "SyntheticCriteo",
    "feature_keys",
    "hash_category",
    "num_global_batches",
    "shard_num_batches",
    "shard_num_samples",
    "write_synthetic_tsv",
]
