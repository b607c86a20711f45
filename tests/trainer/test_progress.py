"""What a trainer reports about itself: rates count only what this incarnation trained (issue #10)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch

from dlrm_trainer.data.synthetic import SyntheticCriteo
from dlrm_trainer.trainer import ShardReader, Trainer
from trainingjob_operator.api.spec import TrainingJobSpec
from trainingjob_operator.coordination import Progress


class Recorder:
    def __init__(self) -> None:
        self.reports: list[Progress] = []

    def report_progress(self, progress: Progress) -> None:
        self.reports.append(progress)

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected Redis call {name}")


def test_a_replacement_reports_the_rate_it_trains_at_not_its_predecessors_samples() -> None:
    spec = TrainingJobSpec.model_validate({"model": {"sparseFeatures": 2, "rowsPerTable": 100, "embeddingDim": 4,
                                                     "bottomMlp": [8], "topMlp": [8]}})
    coord = Recorder()
    source = SyntheticCriteo(spec.model.rows(), seed=0, embedding_dim=4)
    trainer = Trainer(spec, 1, coord, source, [], None, torch.device("cpu"))  # type: ignore[arg-type]
    trainer.resumed_samples = 1_000_000  # what the failed trainer had trained
    trainer.counters.samples = 1_010_000  # ... plus 10k trained by this one
    trainer._report(ShardReader(iter([]), start_cursor=986), started=time.monotonic() - 10.0)
    [progress] = coord.reports
    assert progress.samples == 1_010_000 and progress.cursor == 986
    assert progress.samples_per_second == pytest.approx(1000.0, rel=0.01)
