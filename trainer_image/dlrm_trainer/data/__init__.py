"""Data sources of the trainer: a deterministic synthetic Criteo-like stream and Criteo TSV files.

Both produce the same ``Batch`` and a per-shard cursor counting the batches a trainer consumed, so the
trainer, resume and lost-sample accounting never depend on where the samples come from. The synthetic
stream deals global batch b to shard b % num_shards; Criteo files give each trainer its own part (a byte
range of uncompressed files, or whole gzip files), so no trainer reads another's lines (``criteo``).
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
