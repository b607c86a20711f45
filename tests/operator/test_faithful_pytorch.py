"""A pytorch workload through the pod spec on the faithful kubelet (``tests/support/kubelet.py``): each worker pod
is a real process in its own network namespace with its own IP, as the image's user, with a read-only root
filesystem and the job's shared checkpoint claim mounted where ``render_pod`` says. The agent in each pod joins
the generation's rendezvous in Redis, its script's gloo process group connects pod to pod, and DCP checkpoints
land on the claim. Killing one pod replaces that pod alone; the survivor's pod stays and its script restarts in
place from the newest complete checkpoint."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.operator.conftest import Cluster, eventually
from tests.support.cluster import API_VERSION, KIND, NAMESPACE, FaithfulCluster, faithful_cluster

pytestmark = pytest.mark.processes

TOY = Path(__file__).resolve().parent.parent / "pytorch_workload" / "toy_ddp.py"
CLAIM = "toy-checkpoints"


def pytorch_job(name: str, steps: int = 400, mode: str = "partial") -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name, "namespace": NAMESPACE}, "spec": {
        "workload": "pytorch",
        "pytorch": {"command": ["python", str(TOY)], "peerFailureGraceSeconds": 20},
        "replicas": {"worker": {"replicas": 2, "env": {"TOY_STEPS": str(steps), "TOY_STEP_S": "0.03"}}},
        "recovery": {"mode": mode, "restartBudget": {"maxRestarts": 3},
                     "checkpoint": {"intervalSeconds": 0.5, "volume": {"kind": "sharedClaim", "claimName": CLAIM}}},
    }}


@pytest.fixture
async def faithful(cluster: Cluster, tmp_path: Path) -> AsyncIterator[FaithfulCluster]:
    async with faithful_cluster(tmp_path, time_scale=0.5, api=cluster.api) as running:
        claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                 "metadata": {"name": CLAIM, "namespace": NAMESPACE},
                 "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}}
        async with cluster.api.post(f"/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims", json=claim) as response:
            assert response.status < 300, await response.text()
        yield running


async def test_a_killed_worker_pod_is_replaced_alone_and_the_survivor_restarts_in_place(
        faithful: FaithfulCluster) -> None:
    cluster, kubelet = faithful.cluster, faithful.kubelet
    await cluster.create_job(pytorch_job("pt"))
    uids = await eventually(lambda: cluster.running("pt", 2), timeout=60, what="2 running worker pods")
    pod = cluster.pods("pt")["pt-worker-0"]
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "trainingjob_torch.agent"]
    assert {"name": "c10d", "containerPort": 29500, "protocol": "TCP"} in container["ports"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert kubelet.pod_ip("pt-worker-0") != kubelet.pod_ip("pt-worker-1")  # gloo really goes pod to pod
    coord = cluster.coordination("pt")
    await eventually(lambda: len(coord.checkpoints()) >= 2 and (p := coord.step_progress()) is not None
                     and p.step >= 40, timeout=180, what="40 steps and two checkpoints")
    claim = kubelet.claim_dir(CLAIM)
    saved = sorted(p.name for p in (claim / "pt").iterdir() if p.name.startswith("step-"))
    assert saved and all((claim / "pt" / name / ".metadata").is_file() for name in saved)

    kubelet.process("pt-worker-1").send_signal(signal.SIGKILL)

    await eventually(lambda: cluster.phase("pt") == "Succeeded", timeout=300, what="job Succeeded")
    assert sorted(kubelet.started) == ["pt-worker-0", "pt-worker-1", "pt-worker-1"]  # the survivor's pod stayed
    assert kubelet.probe_kills == []
    [failure] = coord.failures()
    assert (failure["pod"], failure["reason"]) == ("pt-worker-1", "ExitCode137")
    resumes = coord.resumes()
    assert [r["generation"] for r in resumes] == [0, 1]
    assert resumes[1]["resumed_from"] is not None and resumes[1]["resumed_from"] >= 1  # not from scratch
    status = cluster.status("pt")
    assert status["progress"]["step"] == 400 and status["progress"]["result"]["world_size"] == 2
    assert status["replicas"]["worker"]["restarts"] == 1
    logs = kubelet.log_path("pt-worker-0", uids["pt-worker-0"]).read_text()
    assert "restarting its processes in place" in logs


async def test_a_suspended_pytorch_job_resumes_from_its_checkpoint_in_a_new_generation(
        faithful: FaithfulCluster) -> None:
    """Suspend deletes the worker pods (nothing counts as a failure); resume recreates them one generation up, so
    they form a new world (not the one they left) and continue from the newest checkpoint, not from step 0."""
    from tests.support.cluster import JOBS_URL

    cluster, kubelet = faithful.cluster, faithful.kubelet
    await cluster.create_job(pytorch_job("pts", steps=300))
    coord = cluster.coordination("pts")
    await eventually(lambda: len(coord.checkpoints()) >= 2 and (p := coord.step_progress()) is not None
                     and p.step >= 40, timeout=180, what="40 steps and two checkpoints")

    async def suspend(value: bool) -> None:
        async with cluster.api.patch(f"{JOBS_URL}/pts", json={"spec": {"runPolicy": {"suspend": value}}},
                                     headers={"Content-Type": "application/merge-patch+json"}) as response:
            assert response.status < 300

    await suspend(True)
    await eventually(lambda: cluster.phase("pts") == "Suspended" and not cluster.pods("pts"), timeout=90,
                     what="Suspended, every pod gone")
    before = coord.generation()
    await suspend(False)
    await eventually(lambda: cluster.phase("pts") == "Succeeded", timeout=240, what="job Succeeded after resuming")
    assert coord.failures() == [] and kubelet.probe_kills == []
    assert sorted(kubelet.started) == ["pts-worker-0", "pts-worker-0", "pts-worker-1", "pts-worker-1"]
    assert coord.generation() > before
    after = [r for r in coord.resumes() if r["generation"] > before]
    assert after and after[0]["resumed_from"] is not None and after[0]["resumed_from"] >= 1, coord.resumes()
    assert cluster.status("pts")["progress"]["step"] == 300
