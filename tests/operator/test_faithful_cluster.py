"""The operator on a faithfully emulated cluster: every pod it creates runs as a real process the way a
kubelet runs it (``tests/support/kubelet.py``): its own network namespace and IP on a bridge, its
volumes mounted at their mountPaths (emptyDir per pod UID, one directory per PersistentVolumeClaim that
outlives pods), as the image's user 10001 with the pod's fsGroup, with its startup, readiness and
liveness probes executed, and graceful termination. Nothing of the pod spec is overridden: what these
tests see is what ``render_pod`` gives a cluster. Everything else is real too: kopf, the operator, a
redis-server on the bridge address, gRPC between the pods, torch.

Probe periods and grace periods are scaled by ``TIME_SCALE`` so a test takes a minute, not ten.
"""

from __future__ import annotations

import base64
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.operator.conftest import Cluster, eventually, manifest
from tests.support.cluster import FaithfulCluster, faithful_cluster
from tests.support.object_store import s3_server
from trainingjob_operator.core import accounting

pytestmark = pytest.mark.processes

TIME_SCALE = 0.5
SMALL: dict[str, Any] = {
    "model": {"sparseFeatures": 8, "rowsPerTable": 5000, "embeddingDim": 8, "bottomMlp": [32], "topMlp": [32]},
    "data": {"trainSamples": 200_000, "evalSamples": 8192, "batchSize": 512},
    "training": {"hogwildThreads": 1, "progressEverySeconds": 0.5},
    # Everything else is the default: claimPerReplica checkpoint volumes, probes, security context.
    # Saves every 2 s so a shard has a checkpoint before it is killed in a job this short.
    "recovery": {"checkpoint": {"intervalSeconds": 2}},
}
EVERYONE = ["real-embedding-server-0", "real-embedding-server-1", "real-sync-server-0", "real-trainer-0",
            "real-trainer-1"]


@pytest.fixture
async def faithful(cluster: Cluster, tmp_path: Path) -> AsyncIterator[FaithfulCluster]:
    async with faithful_cluster(tmp_path, time_scale=TIME_SCALE, api=cluster.api) as running:
        yield running


@pytest.mark.parametrize("victim", ["embedding-server-0", "trainer-1", "sync-server-0"])
async def test_a_sigkilled_pod_is_replaced_alone_restores_its_checkpoint_and_the_job_succeeds(
    faithful: FaithfulCluster, victim: str
) -> None:
    cluster, kubelet = faithful.cluster, faithful.kubelet
    await cluster.create_job(manifest("real", **SMALL))
    await eventually(lambda: cluster.running("real", 5), timeout=60, what="5 running pods")
    ips = {name: kubelet.pod_ip(name) for name in EVERYONE}
    assert len(set(ips.values())) == 5  # every pod its own address, every server on port 50051
    coord = cluster.coordination("real")
    await eventually(lambda: all((p := coord.progress(r)) is not None and p.samples > 0 for r in (0, 1)),
                     timeout=120, what="both trainers training")
    await eventually(lambda: (p := coord.checkpoint_pointer(0)) is not None and p.get("progress", 0) > 0,
                     timeout=60, what="a checkpoint of shard 0 taken while training")
    claim = kubelet.claim_dir("checkpoints-real-embedding-server-0")
    assert any((claim / "shard-0").iterdir())  # written by uid 10001 into a fresh root-owned claim (fsGroup)

    kubelet.process(f"real-{victim}").send_signal(signal.SIGKILL)

    await eventually(lambda: cluster.phase("real") == "Succeeded", timeout=240, what="job Succeeded")
    assert sorted(kubelet.started) == sorted([*EVERYONE, f"real-{victim}"])  # only the victim started twice
    assert kubelet.probe_kills == []  # no pod was killed by its own probes
    [failure] = coord.failures()
    assert (failure["pod"], failure["reason"], failure["exit_code"]) == (f"real-{victim}", "ExitCode137", 137)
    assert failure["samples"] > 0  # the PLS reference point
    assert all(coord.result(rank) is not None for rank in (0, 1))
    assert sum(p.samples for p in coord.all_progress(2).values()) >= SMALL["data"]["trainSamples"]
    restarts = {role: r["restarts"] for role, r in cluster.status("real")["replicas"].items()}
    assert restarts == {role: int(victim.startswith(role)) for role in restarts}
    if victim.startswith("embedding-server"):
        [restored] = [r for instance, r in coord.recoveries(victim).items() if instance != failure["instance"]]
        assert restored["loaded"], f"the replacement restored no checkpoint: {restored['description']}"
        assert "no checkpoint" not in restored["description"]
        assert restored["restored_progress"] > 0  # its shard as trained, not initial weights
        assert restored["failed_at"] == failure["samples"]
        assert 0 <= sum(span.samples for span in accounting.spans_of(restored)) < failure["samples"]


async def test_checkpoints_in_an_object_store_bring_a_replaced_shard_back(faithful: FaithfulCluster,
                                                                          tmp_path: Path) -> None:
    """``recovery.checkpoint.objectStore``: no volume at all; the pods reach an S3 server on the node's network
    with the credentials of a Secret (secretKeyRef), and a replacement restores its shard from the bucket."""
    cluster, kubelet = faithful.cluster, faithful.kubelet
    with s3_server(tmp_path / "s3", host=kubelet.bridge_ip, buckets=("ckpt",)) as s3:
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds", "namespace": "ml"},
                  "data": {k: base64.b64encode(v.encode()).decode() for k, v in s3.env().items()
                           if k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}}
        async with cluster.api.post("/api/v1/namespaces/ml/secrets", json=secret) as response:
            assert response.status < 300, await response.text()
        store = {"objectStore": {"url": "s3://ckpt/jobs", "endpoint": s3.endpoint, "region": "us-east-1",
                                 "credentialsSecret": "s3-creds"}, "intervalSeconds": 2}
        await cluster.create_job(manifest("real", **{**SMALL, "recovery": {"checkpoint": store}}))
        coord = cluster.coordination("real")
        await eventually(lambda: (p := coord.checkpoint_pointer(0)) is not None and p.get("progress", 0) > 0,
                         timeout=180, what="a checkpoint of shard 0 taken while training")
        assert coord.checkpoint_pointer(0)["path"].startswith("s3://ckpt/jobs/ml/real/shard-0/")
        assert not cluster.api.live("persistentvolumeclaims", "ml")  # nothing to attach
        assert any(k.endswith("/MANIFEST.json") for k in s3.keys("ckpt", "jobs/ml/real/shard-0/"))

        kubelet.process("real-embedding-server-0").send_signal(signal.SIGKILL)

        await eventually(lambda: cluster.phase("real") == "Succeeded", timeout=240, what="job Succeeded")
        assert sorted(kubelet.started) == sorted([*EVERYONE, "real-embedding-server-0"])
        assert kubelet.probe_kills == []
        [failure] = coord.failures()
        [restored] = [r for instance, r in coord.recoveries("embedding-server-0").items()
                      if instance != failure["instance"]]
        assert restored["loaded"] and restored["restored_progress"] > 0, restored["description"]
        condition = cluster.condition("real", "CheckpointsDurable")
        assert condition is not None and (condition["status"], condition["reason"]) == ("True", "ObjectStore")


async def test_trainers_read_criteo_data_from_a_claim_their_pod_template_mounts(faithful: FaithfulCluster) -> None:
    """``replicas.trainer.template``: Criteo TSV on a PersistentVolumeClaim, mounted read-only at /data through the
    role's pod template, beside the operator's own volumes, in pods whose root filesystem is read-only. The
    trainers can only reach /data through that mount (without it they exit 78, see the recovery contract)."""
    from dlrm_trainer.data import SyntheticCriteo, write_synthetic_tsv

    cluster, kubelet = faithful.cluster, faithful.kubelet
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "criteo", "namespace": "ml"},
             "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}}}}
    async with cluster.api.post("/api/v1/namespaces/ml/persistentvolumeclaims", json=claim) as response:
        assert response.status < 300, await response.text()
    model = SMALL["model"]
    data = kubelet.claim_dir("criteo")
    write_synthetic_tsv(data / "day_0.tsv", SyntheticCriteo([model["rowsPerTable"]] * model["sparseFeatures"],
                                                            seed=3), 40_000, batch_size=512)
    (data / "day_0.tsv").chmod(0o644)  # written by the test (root), readable by the image's user, as a dataset is
    template = {"metadata": {"labels": {"team": "ranking"}},
                "spec": {"volumes": [{"name": "criteo", "persistentVolumeClaim": {"claimName": "criteo",
                                                                                   "readOnly": True}}],
                         "containers": [{"name": "dlrm", "volumeMounts": [{"name": "criteo", "mountPath": "/data",
                                                                           "readOnly": True}]}]}}
    spec = {**SMALL, "data": {"source": "criteo", "path": "/data/day_0.tsv", "trainSamples": 30_000,
                              "evalSamples": 4096, "batchSize": 512},
            "replicas": {"trainer": {"replicas": 2, "template": template}}}
    await cluster.create_job(manifest("real", **spec))

    await eventually(lambda: cluster.running("real", 5), timeout=60, what="5 running pods")
    trainer = cluster.pods("real")["real-trainer-0"]
    assert trainer["metadata"]["labels"]["team"] == "ranking"
    assert trainer["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    await eventually(lambda: cluster.phase("real") == "Succeeded", timeout=240, what="job Succeeded")
    coord = cluster.coordination("real")
    assert sum(p.samples for p in coord.all_progress(2).values()) >= 30_000
    assert all((r := coord.result(rank)) is not None and r.get("auc") is not None for rank in (0, 1))
    assert coord.failures() == [] and kubelet.probe_kills == []


async def test_a_suspended_job_resumes_where_it_stopped(faithful: FaithfulCluster) -> None:
    """``runPolicy.suspend``: every pod deleted gracefully, progress and checkpoints kept; on resume every replica
    is recreated, servers restore their shards, trainers continue from their cursors, nothing counts as a failure."""
    from tests.support.cluster import JOBS_URL

    cluster, kubelet = faithful.cluster, faithful.kubelet
    # Long enough to be suspended mid-way: the trainers of this small model can train 200k samples in the seconds it
    # takes both shards to checkpoint.
    spec = {**SMALL, "data": {**SMALL["data"], "trainSamples": 1_000_000}}
    await cluster.create_job(manifest("real", **spec))
    coord = cluster.coordination("real")
    await eventually(lambda: all((p := coord.progress(r)) is not None and p.samples > 20_000 for r in (0, 1)),
                     timeout=180, what="both trainers well into training")
    await eventually(lambda: all((p := coord.checkpoint_pointer(s)) is not None and p.get("progress", 0) > 0
                                 for s in (0, 1)), timeout=60, what="a checkpoint of each shard")

    async def suspend(value: bool) -> None:
        async with cluster.api.patch(f"{JOBS_URL}/real", json={"spec": {"runPolicy": {"suspend": value}}},
                                     headers={"Content-Type": "application/merge-patch+json"}) as response:
            assert response.status < 300

    await suspend(True)
    await eventually(lambda: cluster.phase("real") == "Suspended" and not cluster.pods("real"), timeout=90,
                     what="Suspended, every pod gone")
    paused_at = sum(p.samples for p in coord.all_progress(2).values())
    assert 0 < paused_at < spec["data"]["trainSamples"]

    await suspend(False)
    await eventually(lambda: cluster.phase("real") == "Succeeded", timeout=240, what="job Succeeded after resuming")
    assert coord.failures() == [] and kubelet.probe_kills == []
    assert sorted(kubelet.started) == sorted(EVERYONE * 2)  # each replica once before, once after
    for shard in ("embedding-server-0", "embedding-server-1"):
        incarnations = coord.recoveries(shard)
        assert any(r["loaded"] and r["restored_progress"] > 0 for r in incarnations.values()), incarnations
    done = sum(p.samples for p in coord.all_progress(2).values())
    assert done >= spec["data"]["trainSamples"]
    # The trainers continued: the job did not start over (it would have trained ~paused_at more samples).
    assert done < spec["data"]["trainSamples"] + paused_at / 2
    condition = cluster.condition("real", "Suspended")
    assert condition is not None and (condition["status"], condition["reason"]) == ("False", "Resumed")


async def test_each_job_reaches_redis_as_its_own_user_limited_to_its_keys(cluster: Cluster, tmp_path: Path) -> None:
    """A Redis with a password: the operator holds it; every job gets its own ACL user in a Secret its pods read by
    secretKeyRef, their pod spec carries no credentials, and with that user a job can touch no other job's keys."""
    import redis as redis_client

    from trainingjob_operator.coordination import Coordination

    async with faithful_cluster(tmp_path, time_scale=TIME_SCALE, api=cluster.api,
                                redis_password="admin-secret") as faithful:
        cluster, kubelet = faithful.cluster, faithful.kubelet
        await cluster.create_job(manifest("real", **SMALL))
        await eventually(lambda: cluster.running("real", 5), timeout=60, what="5 running pods")
        for pod in cluster.pods("real").values():
            env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
            assert "admin-secret" not in str(pod["spec"])  # no credentials anywhere in the pod spec
            assert env["TJ_REDIS_URL"]["value"] == faithful.redis.url.replace(":admin-secret@", "")
            assert env["TJ_REDIS_PASSWORD"]["valueFrom"] == {"secretKeyRef": {"name": "real-redis", "key": "password"}}
        [secret] = [s for s in cluster.api.live("secrets", "ml") if s["metadata"]["name"] == "real-redis"]
        assert secret["metadata"]["ownerReferences"][0]["name"] == "real"
        username, password = secret["stringData"]["username"], secret["stringData"]["password"]
        assert username == "tj-ml-real" and len(password) >= 32

        await eventually(lambda: cluster.phase("real") == "Succeeded", timeout=240, what="job Succeeded")
        assert all(cluster.coordination("real").result(rank) is not None for rank in (0, 1))
        assert kubelet.probe_kills == []
        # The job's user: its own keys yes, another job's and admin commands no.
        mine = Coordination(faithful.redis.url.replace(":admin-secret@", ""), "ml", "real", username=username,
                            password=password)
        assert mine.result(0) is not None
        with pytest.raises(redis_client.exceptions.NoPermissionError):
            mine.r.get("tj:ml:other:members:trainer:0")
        with pytest.raises(redis_client.exceptions.NoPermissionError):
            mine.r.flushall()
        await cluster.delete_job("real")
        await eventually(lambda: not cluster.job_exists("real"), timeout=30, what="job deleted")
        admin = redis_client.Redis.from_url(faithful.redis.url, decode_responses=True)
        assert "tj-ml-real" not in admin.acl_users()  # its user went with it
