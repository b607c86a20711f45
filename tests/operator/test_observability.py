"""What the operator tells people: status from Redis, the tuned interval, metrics, JSON logs."""

from __future__ import annotations

import json
import logging
import socket
import urllib.request

import pytest
import structlog

from tests.operator.conftest import Cluster, Operator, eventually, manifest
from trainingjob_operator.api.status import Phase
from trainingjob_operator.coordination import Progress
from trainingjob_operator.k8s.logging import configure_logging
from trainingjob_operator.k8s.metrics import Metrics


async def test_progress_reported_by_trainers_reaches_the_status(cluster: Cluster, operator: Operator) -> None:
    await cluster.create_job(manifest("prog", data={"trainSamples": 1000}))
    await eventually(lambda: cluster.running("prog", 5), what="5 running pods")
    coord = cluster.coordination("prog")
    coord.report_progress(Progress(rank=0, samples=300, cursor=3, loss=0.5, samples_per_second=100.0, updated=0.0))
    coord.report_progress(Progress(rank=1, samples=200, cursor=2, loss=0.7, samples_per_second=50.0, updated=0.0))
    # A replaced shard that restored progress 280 after failing at 300: half of 20 samples lost (2 shards).
    coord.record_recovery("embedding-server-0", "pod-b", failed_at=300, restored_progress=280, mode="partial")

    progress = await eventually(lambda: (p := cluster.status("prog").get("progress", {})).get("samples") and p,
                                timeout=15, what="progress in status")
    assert progress == {"samples": 500, "targetSamples": 1000, "samplesPerSecond": 150.0, "loss": 0.6}
    assert cluster.status("prog")["recovery"]["pls"] == 0.02  # 10 lost of 500 trained


async def test_the_tuned_interval_is_written_to_redis_and_status(cluster: Cluster, operator: Operator) -> None:
    await cluster.create_job(manifest("fixed", recovery={"checkpoint": {"intervalSeconds": 42}}))
    await cluster.create_job(manifest("auto", recovery={"mode": "auto"}))

    fixed = cluster.coordination("fixed")
    await eventually(lambda: cluster.status("fixed").get("recovery", {}).get("intervalSeconds") == 42,
                     what="interval in status")  # the coordinator started the job (it clears its Redis keys)
    fixed.record_cost("stall_full", 0.25)
    fixed.record_cost("write_full", 2.0)
    await eventually(lambda: cluster.status("fixed").get("recovery", {}).get("saveCost"), what="save cost in status")
    recovery = cluster.status("fixed")["recovery"]
    assert recovery["intervalSeconds"] == 42 and fixed.interval() == 42
    assert "fixed interval 42 s (spec)" in recovery["intervalReason"]
    # No throughput trace around a write yet: its slowdown is unmeasured and o_save is the stall alone.
    assert recovery["saveCost"] == {"stallSeconds": 0.25, "writeSeconds": 2.0, "seconds": 0.25}
    auto = await eventually(lambda: cluster.status("auto").get("recovery"), what="auto status")
    assert auto["mode"] in ("partial", "full")  # auto resolved by the benefit test
    assert cluster.coordination("auto").interval() == auto["intervalSeconds"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_metrics_are_served_in_prometheus_format() -> None:
    metrics = Metrics()
    metrics.set_phase(("ml", "a"), Phase.RUNNING)
    metrics.set_phase(("ml", "b"), Phase.RUNNING)
    metrics.set_phase(("ml", "b"), Phase.RECOVERING)
    metrics.restarts.labels("trainer").inc()
    metrics.failure_to_replacement.observe(0.02)
    port = free_port()
    stop = metrics.serve(port, addr="127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        stop()
    assert 'trainingjob_jobs{phase="Running"} 1.0' in text
    assert 'trainingjob_jobs{phase="Recovering"} 1.0' in text
    assert 'trainingjob_replica_restarts_total{role="trainer"} 1.0' in text
    assert "trainingjob_failure_to_replacement_seconds_count 1.0" in text
    assert "trainingjob_reconcile_seconds_bucket" in text


@pytest.fixture
def restore_logging() -> object:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers, root.level = handlers, level
    structlog.reset_defaults()


def test_logs_are_json_lines_with_kopf_object_references(capsys: pytest.CaptureFixture[str],
                                                         restore_logging: object) -> None:
    configure_logging("INFO", json=True)
    structlog.get_logger("trainingjob.coordinator").warning("replica failed", job="a", pod="a-trainer-0")
    logging.getLogger("kopf.objects").info("Handler succeeded", extra={
        "k8s_ref": {"kind": "TrainingJob", "namespace": "ml", "name": "a", "uid": "u"}})
    logging.getLogger("kopf.objects").info("Handler 'pod_changed' succeeded.")  # per pod event: dropped
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0] | {"timestamp": None} == {"event": "replica failed", "job": "a", "pod": "a-trainer-0",
                                              "level": "warning", "logger": "trainingjob.coordinator",
                                              "timestamp": None}
    assert lines[1]["object"] == {"kind": "TrainingJob", "namespace": "ml", "name": "a"}
    assert lines[1]["event"] == "Handler succeeded"
    assert len(lines) == 2
