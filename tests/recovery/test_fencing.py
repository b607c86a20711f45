"""A replaced incarnation is fenced: once the coordinator records its failure (or its replacement registers), its
heartbeats, progress, checkpoint pointers and checkpoint saves are refused, atomically with the check, so a
replica declared hung that wakes up cannot write over its replacement. Real Redis; the writes are the ones the
replicas make."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dlrm_trainer.checkpoint import CheckpointWriter
from dlrm_trainer.embedding_server import EmbeddingShard
from tests.recovery.test_checkpoint import save
from trainingjob_operator.api.spec import TrainingJobSpec
from trainingjob_operator.coordination import Coordination, Fenced, Progress
from trainingjob_operator.failure_log import write_failure
from trainingjob_operator.reconcile import FailureEvent, RecordFailure, ReplicaId


def replica_client(coord: Coordination) -> Coordination:
    """A second client on the same job, as a replica process has."""
    return Coordination(coord.url, *coord.prefix.split(":")[1:3], client=coord.r)


def progress(rank: int, samples: int) -> Progress:
    return Progress(rank, samples, samples // 10, 0.5, 100.0, time.time())


def test_a_fenced_trainer_can_no_longer_report_progress_or_heartbeat(coord: Coordination) -> None:
    zombie = replica_client(coord)
    zombie.register("trainer", 1, "", "pod-a")
    zombie.report_progress(progress(1, 1000))
    zombie.heartbeat("trainer", 1)

    assert coord.fence("trainer", 1, "pod-a")  # the coordinator, recording its failure

    with pytest.raises(Fenced):
        zombie.report_progress(progress(1, 5000))
    with pytest.raises(Fenced):
        zombie.heartbeat("trainer", 1)
    assert coord.progress(1).samples == 1000  # nothing it wrote after the fence landed
    # Its replacement registers and owns the rank; the zombie stays refused.
    replacement = replica_client(coord)
    replacement.register("trainer", 1, "", "pod-b")
    replacement.report_progress(progress(1, 1200))
    with pytest.raises(Fenced):
        zombie.report_progress(progress(1, 9000))
    assert coord.progress(1).samples == 1200
    # The coordinator's own writes (a full recovery's cursor rollback) are never fenced.
    coord.set_trainer_cursor(1, 10, 100)
    assert coord.progress(1).cursor == 10
    # A fence only ever hits the incarnation it names.
    assert not coord.fence("trainer", 1, "pod-a")
    replacement.heartbeat("trainer", 1)


def test_a_fenced_embedding_server_publishes_no_pointer_and_saves_no_checkpoint(
    coord: Coordination, shard: EmbeddingShard, tmp_path: Path
) -> None:
    calls: list[str] = []
    zombie = Coordination(coord.url, *coord.prefix.split(":")[1:3], client=coord.r, on_fenced=calls.append)
    zombie.register("embedding-server", 0, "10.0.0.5:50051", "pod-a")

    class View:  # what roles.py hands the writer: the replica's own (fenced) client
        def record_cost(self, name: str, seconds: float) -> None:
            zombie.record_cost(name, seconds)

        def set_checkpoint_pointer(self, shard_index: int, pointer: dict) -> None:  # type: ignore[type-arg]
            zombie.set_checkpoint_pointer(shard_index, pointer)

        def interval(self) -> float | None:
            return zombie.interval()

        def holds(self) -> bool:
            return zombie.holds()

    writer = CheckpointWriter(tmp_path, 0, View())
    first = save(writer, shard, "full", 10)
    assert first.pointer_published and coord.checkpoint_pointer(0) == first.pointer()

    coord.fence("embedding-server", 0, "pod-a")
    written = sorted(p.name for p in tmp_path.rglob("*"))

    with pytest.raises(Fenced):
        save(writer, shard, "full", 20)
    assert sorted(p.name for p in tmp_path.rglob("*")) == written  # not a byte on storage
    assert coord.checkpoint_pointer(0) == first.pointer()
    assert calls and "replaced" in calls[0]  # the trainer image's on_fenced exits the process here


def test_recording_a_failure_fences_the_failed_incarnation_before_anything_else(coord: Coordination) -> None:
    zombie = replica_client(coord)
    zombie.register("embedding-server", 1, "10.0.0.6:50051", "pod-hung")
    failure = FailureEvent(ReplicaId.parse("embedding-server-1"), "HeartbeatTimeout", time.time(), None, "pod-hung")
    write_failure(coord, TrainingJobSpec(), RecordFailure(failure, 1, "partial"), "job-embedding-server-1")
    with pytest.raises(Fenced):
        zombie.heartbeat("embedding-server", 1)
    with pytest.raises(Fenced):
        zombie.set_checkpoint_pointer(1, {"path": "/checkpoints/shard-1/zombie"})
    assert coord.checkpoint_pointer(1) is None
