"""`trainingjob` as a user runs it: a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.conftest import small_job

TRAININGJOB = [sys.executable, "-m", "trainingjob_operator.cli"]


def _write(tmp_path: Path, document: dict) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_invalid_manifest_exits_2_with_one_line_and_starts_nothing(tmp_path: Path) -> None:
    document = small_job("bad").to_wire()
    document["spec"]["replicas"]["trainer"]["replicas"] = 0
    workdir = tmp_path / "work"
    result = subprocess.run([*TRAININGJOB, "run", str(_write(tmp_path, document)), "--workdir", str(workdir)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "spec.replicas.trainer.replicas" in lines[0] and "greater than or equal to 1" in lines[0]
    assert not workdir.exists()  # nothing was started


def test_validate_prints_the_manifest_with_defaults(tmp_path: Path) -> None:
    document = {"apiVersion": "training.cpr.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "x"}}
    result = subprocess.run([*TRAININGJOB, "validate", str(_write(tmp_path, document))], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["spec"]["replicas"]["trainer"]["replicas"] == 2


@pytest.mark.processes
def test_ctrl_c_stops_every_process(tmp_path: Path, redis_url: str) -> None:
    document = small_job("ctrl-c", data__trainSamples=10_000_000).to_wire()
    # As from a terminal: SIGINT at its default, whatever this test runner inherited (a shell ignores SIGINT in
    # the commands it starts in the background, and Python then never turns it into KeyboardInterrupt).
    proc = subprocess.Popen([*TRAININGJOB, "run", str(_write(tmp_path, document)), "--workdir",
                             str(tmp_path / "work"), "--redis-url", redis_url, "--summary", str(tmp_path / "s.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 60
    while len(parent.children()) < 5:
        assert time.monotonic() < deadline, "replicas did not start"
        time.sleep(0.2)
    children = [c.pid for c in parent.children()]
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert json.loads((tmp_path / "s.json").read_text())["status"] == "Interrupted"
    alive = [p for p in children if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert alive == []
