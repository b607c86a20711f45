"""The chaos harness (``benchmarks/chaos.py``), short version: a job on the faithful kubelet while every role,
Redis and the operator process are killed, a shard's checkpoint is corrupted and its storage made unwritable.
The long version (at least 10 minutes, 200 failures) is the benchmark's default; its table is in the README."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "chaos.py"


def _chaos_module():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("chaos_harness", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_schedule_fails_every_replica_at_its_mtbf_and_spreads_the_rest() -> None:
    chaos = _chaos_module()
    replicas = ["trainer-0", "trainer-1", "embedding-server-0", "embedding-server-1", "sync-server-0"]
    plan = chaos.ChaosPlan(window_s=3600.0, mtbf_s=30.0, redis_kills=10, operator_kills=10, corruptions=3,
                           unwritable=2, seed=7)
    events = chaos.schedule(plan, replicas, shards=2)
    assert events == chaos.schedule(plan, replicas, shards=2)  # a seed gives one schedule
    assert [e.at_s for e in events] == sorted(e.at_s for e in events)
    assert all(0 <= e.at_s < plan.window_s for e in events)
    per_replica = Counter(e.target for e in events if e.kind in ("kill", "hang"))
    for replica in replicas:  # 120 expected in an hour at a 30 s MTBF; Poisson: within 4 sigma
        assert abs(per_replica[replica] - 120) < 4 * 120 ** 0.5
    hangs = sum(1 for e in events if e.kind == "hang")
    assert 0 < hangs < 0.2 * sum(per_replica.values())
    kinds = Counter(e.kind for e in events)
    assert (kinds["redis"], kinds["operator"], kinds["corrupt"], kinds["unwritable"]) == (10, 10, 3, 2)
    assert {e.target for e in events if e.kind in ("corrupt", "unwritable")} == {"embedding-server-0",
                                                                                 "embedding-server-1"}
    spread = sorted({e.at_s for e in events if e.kind in ("redis", "operator", "corrupt", "unwritable")})
    assert len(spread) == 25  # no two of them at once


@pytest.mark.processes
def test_a_job_survives_chaos_on_the_kubernetes_path(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--short", "--no-baseline", "--out", str(out)],
                         capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    s = json.loads(out.read_text())
    assert s["status"] == "Succeeded", run.stderr[-3000:]
    assert s["orphans"] == []  # no process of the job outlived it
    assert (s["redis_kills"], s["operator_kills"]) == (2, 2)
    # Every replica failure was replaced by a pod that served again.
    replaced = [e for e in s["events"] if e["kind"] in ("kill", "hang", "corrupt") and not e["skipped"]]
    assert len(replaced) >= 10
    assert all(e["recovered_s"] is not None for e in replaced), replaced
    assert all(e["detected_s"] is not None for e in replaced), replaced
    # ... and nothing else was replaced: the pods never noticed Redis or the operator going away.
    assert s["pods_started"] <= s["pods_expected"]
    # The corrupted checkpoint was found and passed over, never loaded.
    assert len(s["corruptions"]) == 1
    assert s["corruptions_fallen_back_from"] == 1 and s["corrupt_checkpoints_loaded"] == 0
    # Unwritable storage: training went on, the job said so, and said so no more once saves worked again.
    assert s["checkpoint_failing_seen"] >= 1 and s["checkpoint_failing_cleared"] >= 1
    assert s["samples"] >= 3_000_000 and s["auc"] is not None and s["auc"] > 0.6


@pytest.mark.processes
def test_a_job_survives_chaos_on_the_local_backend_supervisor_kills_included(tmp_path: Path) -> None:
    out = tmp_path / "chaos_local.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "chaos_local.py"), "--short", "--no-baseline",
                          "--out", str(out)], capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    s = json.loads(out.read_text())
    assert s["status"] == "Succeeded", run.stderr[-3000:]
    assert s["orphans"] == []  # no process of the run outlived it, the keeper included
    assert s["supervisor_kills"] >= 1 and s["resumes"] == s["supervisor_kills"] and s["resume_errors"] == []
    assert s["redis_restarts"] == s["redis_kills"] >= 1
    assert s["replica_failures"] >= 5
    # No failure was recorded that the harness did not make (a kill landing on a replica already being replaced
    # joins that failure), and each recorded failure cost one process: killing a supervisor or Redis restarted
    # no replica.
    assert 0 < s["failures_recorded"] <= s["replica_failures"]
    assert s["processes_started"] == s["processes_expected"]
    assert s["corrupt_checkpoints_loaded"] == 0
    assert s["auc"] > 0.7
