"""A TrainingJob's life on the emulated cluster: children, success, deletion."""

from __future__ import annotations

import json

from tests.operator.conftest import JOBS_URL, NAMESPACE, Cluster, Operator, eventually, manifest, quietly
from trainingjob_operator.api.spec import API_VERSION, KIND, spec_from_json


async def test_job_gets_one_pod_per_replica_a_headless_service_and_its_spec(
    cluster: Cluster, operator: Operator
) -> None:
    await cluster.create_job(manifest("alpha", trainers=3, embedding_servers=2))

    uids = await eventually(lambda: cluster.running("alpha", 3 + 2 + 1), what="6 running pods")
    assert sorted(uids) == ["alpha-embedding-server-0", "alpha-embedding-server-1", "alpha-sync-server-0",
                            "alpha-trainer-0", "alpha-trainer-1", "alpha-trainer-2"]
    job_uid = cluster.job("alpha")["metadata"]["uid"]
    pod = cluster.pods("alpha")["alpha-trainer-2"]
    assert pod["metadata"]["labels"].items() >= {"training.cpr.dev/job": "alpha", "training.cpr.dev/role": "trainer",
                                         "training.cpr.dev/rank": "2", "app.kubernetes.io/instance": "alpha"}.items()
    assert pod["metadata"]["ownerReferences"] == [{"apiVersion": API_VERSION, "kind": KIND, "name": "alpha",
                                                   "uid": job_uid, "controller": True, "blockOwnerDeletion": True}]
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["TJ_ROLE"]["value"] == "trainer" and env["TJ_RANK"]["value"] == "2"
    assert env["TJ_REDIS_URL"]["value"] == cluster.redis_url
    assert env["TJ_SPEC"]["valueFrom"] == {"configMapKeyRef": {"name": "alpha-spec", "key": "spec.json"}}
    assert env["TJ_INSTANCE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.uid"}}

    service = next(s for s in cluster.api.live("services", NAMESPACE) if s["metadata"]["name"] == "alpha")
    assert service["spec"]["clusterIP"] == "None"
    assert service["metadata"]["ownerReferences"][0]["uid"] == job_uid
    config_map = next(c for c in cluster.api.live("configmaps", NAMESPACE) if c["metadata"]["name"] == "alpha-spec")
    assert spec_from_json(config_map["data"]["spec.json"]).replicas.trainer.replicas == 3

    await eventually(lambda: cluster.phase("alpha") == "Running", what="phase Running")
    status = cluster.status("alpha")
    assert status["replicas"]["trainer"] == {"desired": 3, "ready": 3, "restarts": 0}
    assert status["coordinator"]["generation"] == 0
    await eventually(lambda: any(e["reason"] == "Running" for e in cluster.events("alpha")), what="Running event")


async def test_pods_are_watched_through_an_index_not_listed_per_reconcile(
    cluster: Cluster, operator: Operator
) -> None:
    await cluster.create_job(manifest("beta"))
    await eventually(lambda: cluster.phase("beta") == "Running", what="phase Running")
    await quietly(6 * 0.25)  # several ticks
    actions = [e.action for e in cluster.requests("GET", "pods")]
    assert actions == ["LIST", "WATCH"]  # kopf's initial listing, then one watch stream: no reads per reconcile


async def test_when_all_trainers_succeed_servers_are_stopped_and_the_job_succeeds(
    cluster: Cluster, operator: Operator
) -> None:
    await cluster.create_job(manifest("gamma"))
    await eventually(lambda: cluster.running("gamma", 5), what="5 running pods")

    for rank in (0, 1):
        await cluster.api.finish_pod(NAMESPACE, f"gamma-trainer-{rank}", 0)

    await eventually(lambda: cluster.phase("gamma") == "Succeeded", what="phase Succeeded")
    await eventually(lambda: sorted(cluster.pods("gamma")) == ["gamma-trainer-0", "gamma-trainer-1"],
                     what="servers deleted, finished trainers kept")
    status = cluster.status("gamma")
    assert next(c for c in status["conditions"] if c["type"] == "Succeeded")["status"] == "True"
    assert "completionTime" in status
    await eventually(lambda: any(e["reason"] == "Succeeded" for e in cluster.events("gamma")), what="event")
    # Finished: the coordinator stops; nothing restarts the completed trainers.
    await eventually(lambda: ("ml", "gamma") not in operator.context.jobs, what="coordinator exit")


async def test_deleting_a_job_deletes_its_pods_service_and_configmap(
    cluster: Cluster, operator: Operator
) -> None:
    await cluster.create_job(manifest("delta"))
    await eventually(lambda: cluster.running("delta", 5), what="5 running pods")
    coord = cluster.coordination("delta")
    await eventually(lambda: coord.interval() is not None, what="interval in Redis")

    await cluster.delete_job("delta")

    await eventually(lambda: not cluster.job_exists("delta"), what="job gone (finalizer released)")
    assert cluster.pods("delta") == {}
    assert [s for s in cluster.api.live("services", NAMESPACE) if s["metadata"]["name"] == "delta"] == []
    assert [c for c in cluster.api.live("configmaps", NAMESPACE) if c["metadata"]["name"] == "delta-spec"] == []
    assert coord.interval() is None  # Redis keys cleared too


async def test_status_memory_is_plain_json(cluster: Cluster, operator: Operator) -> None:
    await cluster.create_job(manifest("eps"))
    await eventually(lambda: cluster.phase("eps") == "Running", what="phase Running")
    memory = cluster.status("eps")["coordinator"]
    assert json.loads(json.dumps(memory)) == memory
    assert sorted(memory["createdAt"]) == ["embedding-server-0", "embedding-server-1", "sync-server-0",
                                           "trainer-0", "trainer-1"]


async def test_a_valid_spec_update_reaches_the_configmap_without_touching_pods(
    cluster: Cluster, operator: Operator
) -> None:
    await cluster.create_job(manifest("zeta"))
    before = await eventually(lambda: cluster.running("zeta", 5), what="5 running pods")

    patch = {"spec": {"training": {"progressEverySeconds": 7.0}}}
    async with cluster.api.patch(f"{JOBS_URL}/zeta", json=patch,
                                 headers={"Content-Type": "application/merge-patch+json"}) as response:
        assert response.status < 300

    def spec_in_configmap() -> float:
        config_map = next(c for c in cluster.api.live("configmaps", NAMESPACE) if c["metadata"]["name"] == "zeta-spec")
        return spec_from_json(config_map["data"]["spec.json"]).training.progress_every_seconds

    await eventually(lambda: spec_in_configmap() == 7.0, what="ConfigMap updated")
    await quietly(0.5)
    assert cluster.uids("zeta") == before  # running replicas keep going; replacements get the new spec


async def test_a_finished_job_is_deleted_after_its_ttl_with_its_children(cluster: Cluster, operator: Operator) -> None:
    await cluster.create_job(manifest("ttl", runPolicy={"ttlSecondsAfterFinished": 2}))
    await eventually(lambda: cluster.running("ttl", 5), what="5 running pods")
    for rank in (0, 1):
        await cluster.api.finish_pod(NAMESPACE, f"ttl-trainer-{rank}", 0)
    await eventually(lambda: cluster.phase("ttl") == "Succeeded", what="phase Succeeded")
    assert cluster.job_exists("ttl")  # kept for its ttl first

    await eventually(lambda: not cluster.job_exists("ttl"), timeout=15, what="job deleted after its ttl")
    assert cluster.pods("ttl") == {}
    assert [c for c in cluster.api.live("configmaps", NAMESPACE) if c["metadata"]["name"] == "ttl-spec"] == []


async def test_deleting_a_job_leaves_a_same_named_service_it_does_not_own(cluster: Cluster, operator: Operator) -> None:
    theirs = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "zeta", "namespace": NAMESPACE},
              "spec": {"ports": [{"port": 80}]}}
    async with cluster.api.post(f"/api/v1/namespaces/{NAMESPACE}/services", json=theirs) as response:
        assert response.status < 300
    await cluster.create_job(manifest("zeta"))
    await eventually(lambda: cluster.running("zeta", 5), what="5 running pods")

    await cluster.delete_job("zeta")

    await eventually(lambda: not cluster.job_exists("zeta"), what="job gone (finalizer released)")
    assert cluster.pods("zeta") == {}
    assert [c for c in cluster.api.live("configmaps", NAMESPACE) if c["metadata"]["name"] == "zeta-spec"] == []
    [service] = [s for s in cluster.api.live("services", NAMESPACE) if s["metadata"]["name"] == "zeta"]
    assert service["spec"]["ports"] == [{"port": 80}] and "ownerReferences" not in service["metadata"]


async def test_a_gang_job_creates_its_pod_group_before_any_pod(cluster: Cluster, operator: Operator) -> None:
    await cluster.create_job(manifest("gang", runPolicy={"gang": {"scheduler": "volcano"}}))
    await eventually(lambda: cluster.running("gang", 5), what="5 running pods")
    [group] = [g for g in cluster.api.live("podgroups", NAMESPACE) if g["metadata"]["name"] == "gang"]
    assert group["spec"]["minMember"] == 5
    group_at = next(e.at for e in cluster.api.journal if e.method == "POST" and e.plural == "podgroups")
    first_pod_at = min(e.at for e in cluster.requests("POST", "pods"))
    assert group_at < first_pod_at
    [policy] = [p for p in cluster.api.live("networkpolicies", NAMESPACE) if p["metadata"]["name"] == "gang-servers"]
    assert policy["metadata"]["ownerReferences"][0]["name"] == "gang"
    for pod in cluster.pods("gang").values():
        assert pod["spec"]["schedulerName"] == "volcano"
        assert pod["metadata"]["annotations"]["scheduling.k8s.io/group-name"] == "gang"
