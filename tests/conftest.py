"""Fixtures shared by every test folder: a real Redis server and small job manifests."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from trainingjob_operator.api import TrainingJob, parse_manifest
from trainingjob_operator.local.redis_server import EmbeddedRedis
from trainingjob_operator.local.supervisor import LocalSupervisor

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server: the one CI started (TJ_TEST_REDIS_URL), else one for this session."""
    url = os.environ.get("TJ_TEST_REDIS_URL")
    if url:
        yield url
        return
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as started:
        yield started


def small_job(name: str | None = None, **spec_overrides: object) -> TrainingJob:
    """A job small enough to train in seconds on two cores."""
    spec: dict = {
        "model": {"sparseFeatures": 8, "rowsPerTable": 5000, "embeddingDim": 8, "bottomMlp": [32], "topMlp": [32]},
        "data": {"trainSamples": 60_000, "evalSamples": 8192, "batchSize": 512},
        "training": {"hogwildThreads": 1, "progressEverySeconds": 0.5},
        "replicas": {"trainer": {"replicas": 2}, "embeddingServer": {"replicas": 2}},
        "recovery": {"heartbeatTimeoutSeconds": 8},
    }
    for path, value in spec_overrides.items():
        node = spec
        *parents, leaf = path.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return parse_manifest({
        "apiVersion": "training.cpr.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name or f"t-{uuid.uuid4().hex[:8]}"}, "spec": spec,
    })


def run_in_thread(supervisor: LocalSupervisor) -> tuple[threading.Thread, dict]:
    """Run a local job in the background; the dict receives its summary when it ends."""
    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(supervisor.run()), daemon=True)
    thread.start()
    return thread, out


def join_run(thread: threading.Thread, timeout: float, workdir: Path) -> None:
    """Wait for a run started by ``run_in_thread``; one still going after ``timeout`` fails the test with the tail
    of every replica's log, so a hang seen once (in CI) says where it hung."""
    thread.join(timeout)
    if thread.is_alive():
        tails = [f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                 for log in sorted((workdir / "logs").glob("*.log"))]
        raise AssertionError(f"the run was still going after {timeout:.0f}s\n" + "\n".join(tails))


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
