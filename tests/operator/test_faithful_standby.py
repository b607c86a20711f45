"""Warm standby pods (``recovery.standby``) on the faithful kubelet: pods that have imported torch and connected
to Redis take failed ranks over, through the pod spec the operator renders (their own IPs, the shared claim
mounted where every rank's checkpoints are, the image's user, their probes run), and a new standby is started
behind each one."""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.operator.conftest import Cluster, eventually, manifest
from tests.support.cluster import FaithfulCluster, faithful_cluster
from trainingjob_operator.api.spec import GROUP

pytestmark = pytest.mark.processes

TIME_SCALE = 0.5
STANDBY = f"{GROUP}/standby"
RANK = f"{GROUP}/rank"
ROLE = f"{GROUP}/role"
REPLICAS = ["real-embedding-server-0", "real-embedding-server-1", "real-sync-server-0", "real-trainer-0",
            "real-trainer-1"]
SPEC: dict[str, Any] = {
    "model": {"sparseFeatures": 8, "rowsPerTable": 5000, "embeddingDim": 8, "bottomMlp": [32], "topMlp": [32]},
    "data": {"trainSamples": 3_000_000, "evalSamples": 8192, "batchSize": 512},
    "training": {"hogwildThreads": 1, "progressEverySeconds": 0.5},
    # One claim every server rank's checkpoints are on: what a standby server needs to take any rank over.
    "recovery": {"checkpoint": {"intervalSeconds": 2, "volume": {"kind": "sharedClaim", "claimName": "ckpt"}},
                 "standby": {"trainer": 1, "embeddingServer": 1}},
}


@pytest.fixture
async def faithful(cluster: Cluster, tmp_path: Path) -> AsyncIterator[FaithfulCluster]:
    async with faithful_cluster(tmp_path, time_scale=TIME_SCALE, api=cluster.api) as running:
        yield running


def standbys(cluster: Cluster, role: str) -> dict[str, dict[str, Any]]:
    """Live standby pods of a role still waiting (labelled standby, no rank)."""
    return {name: p for name, p in cluster.pods("real").items()
            if p["metadata"]["labels"].get(STANDBY) == "true" and p["metadata"]["labels"].get(ROLE) == role
            and not p["metadata"].get("deletionTimestamp")}


def waiting(cluster: Cluster) -> dict[str, dict[str, Any]]:
    return {**standbys(cluster, "trainer"), **standbys(cluster, "embedding-server")}


def replica_pod(cluster: Cluster, role: str, rank: int) -> dict[str, Any] | None:
    found = [p for p in cluster.pods("real").values()
             if p["metadata"]["labels"].get(ROLE) == role and p["metadata"]["labels"].get(RANK) == str(rank)
             and not p["metadata"].get("deletionTimestamp")]
    return found[0] if len(found) == 1 else None


def offered(cluster: Cluster, pods: dict[str, dict[str, Any]]) -> bool:
    offers = cluster.coordination("real").standbys()
    return bool(pods) and all(p["metadata"]["uid"] in offers and time.time() - offers[p["metadata"]["uid"]]["seen"] < 5
                              for p in pods.values())


async def test_standby_pods_take_failed_ranks_over_and_are_replaced(faithful: FaithfulCluster) -> None:
    cluster, kubelet = faithful.cluster, faithful.kubelet
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "ckpt", "namespace": "ml"},
             "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}}
    async with cluster.api.post("/api/v1/namespaces/ml/persistentvolumeclaims", json=claim) as response:
        assert response.status < 300, await response.text()
    await cluster.create_job(manifest("real", **SPEC))
    await eventually(lambda: cluster.running("real", 7), timeout=90, what="5 replicas and 2 standbys running")
    await eventually(lambda: offered(cluster, waiting(cluster)), timeout=90,
                     what="both standbys warm and offering themselves in Redis")
    [server_standby] = standbys(cluster, "embedding-server")
    [trainer_standby] = standbys(cluster, "trainer")
    coord = cluster.coordination("real")
    await eventually(lambda: (p := coord.checkpoint_pointer(0)) is not None and p.get("progress", 0) > 0,
                     timeout=120, what="a checkpoint of shard 0 taken while training")

    # An embedding server dies: the standby server takes its rank (and its shard, from the shared claim).
    kubelet.process("real-embedding-server-0").send_signal(signal.SIGKILL)
    await eventually(lambda: (p := replica_pod(cluster, "embedding-server", 0)) is not None
                     and p["metadata"]["name"] == server_standby, timeout=60,
                     what="the standby server labelled embedding-server rank 0")
    uid = cluster.pods("real")[server_standby]["metadata"]["uid"]
    await eventually(lambda: (m := coord.member("embedding-server", 0)) is not None and m.instance == uid,
                     timeout=60, what="the standby registered as embedding-server-0")

    # Then a trainer: the trainer standby takes its rank and resumes from its cursor.
    kubelet.process("real-trainer-1").send_signal(signal.SIGKILL)
    await eventually(lambda: (p := replica_pod(cluster, "trainer", 1)) is not None
                     and p["metadata"]["name"] == trainer_standby, timeout=60,
                     what="the standby trainer labelled trainer rank 1")
    await eventually(lambda: offered(cluster, waiting(cluster))
                     and len(standbys(cluster, "trainer")) == len(standbys(cluster, "embedding-server")) == 1,
                     timeout=90, what="a new standby of each role behind them")
    assert not {server_standby, trainer_standby} & set(waiting(cluster))

    # The standby that became embedding-server-0 fails in turn: its own pod (not "real-embedding-server-0") is
    # removed, and the next standby takes the rank over.
    [next_standby] = standbys(cluster, "embedding-server")
    kubelet.process(server_standby).send_signal(signal.SIGKILL)
    await eventually(lambda: (p := replica_pod(cluster, "embedding-server", 0)) is not None
                     and p["metadata"]["name"] == next_standby, timeout=60,
                     what="the next standby server labelled embedding-server rank 0")
    next_uid = cluster.pods("real")[next_standby]["metadata"]["uid"]
    await eventually(lambda: server_standby not in cluster.pods("real"), timeout=60,
                     what="the failed standby's pod removed")
    assert cluster.phase("real") not in ("Succeeded", "Failed")  # the job outlasted the takeovers

    await eventually(lambda: cluster.phase("real") == "Succeeded", timeout=300, what="job Succeeded")
    # No replica pod was started cold: each failed rank went to a standby, and one standby followed each.
    cold = [name for name in kubelet.started if "-standby-" not in name]
    assert sorted(cold) == sorted(REPLICAS)
    assert len([n for n in kubelet.started if "-embedding-server-standby-" in n]) == 3
    assert len([n for n in kubelet.started if "-trainer-standby-" in n]) == 2
    assert kubelet.probe_kills == []  # a waiting standby server passes its pod's gRPC probes
    failures = coord.failures()
    assert sorted(f["pod"] for f in failures) == sorted(["real-embedding-server-0", "real-trainer-1", server_standby])
    for instance in (uid, next_uid):  # each standby restored rank 0's shard from the shared claim
        restored = coord.recoveries("embedding-server-0")[instance]
        assert restored["loaded"] and restored["restored_progress"] > 0, restored["description"]
    assert all(coord.result(rank) is not None for rank in (0, 1))
    assert sum(p.samples for p in coord.all_progress(2).values()) >= SPEC["data"]["trainSamples"]
    # A finished job keeps no standby.
    await eventually(lambda: not standbys(cluster, "trainer") and not standbys(cluster, "embedding-server"),
                     timeout=60, what="standbys deleted once the job finished")
