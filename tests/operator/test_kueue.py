"""Kueue admits a TrainingJob through a Workload the operator owns. The test plays Kueue's side of the
protocol on the emulated API server: it reads the Workload, reserves quota and admits it with a flavor,
evicts it, admits it again, and checks that the finished job releases its quota."""

from __future__ import annotations

from typing import Any

from tests.operator.conftest import NAMESPACE, Cluster, Operator, eventually, manifest

WORKLOADS = f"/apis/kueue.x-k8s.io/v1beta1/namespaces/{NAMESPACE}/workloads"
FLAVORS = "/apis/kueue.x-k8s.io/v1beta1/resourceflavors"
MERGE = {"Content-Type": "application/merge-patch+json"}


def workload(cluster: Cluster, name: str) -> dict[str, Any] | None:
    return next((w for w in cluster.api.live("workloads", NAMESPACE) if w["metadata"]["name"] == name), None)


async def set_workload_status(cluster: Cluster, name: str, status: dict[str, Any]) -> None:
    async with cluster.api.patch(f"{WORKLOADS}/{name}/status", json={"status": status}, headers=MERGE) as response:
        assert response.status < 300, await response.text()


def admitted(flavor: str) -> dict[str, Any]:
    """What Kueue writes when it admits a workload: quota reserved in a ClusterQueue, one flavor per pod set."""
    return {
        "admission": {"clusterQueue": "gpu-cluster", "podSetAssignments": [
            {"name": role, "flavors": {"cpu": flavor, "memory": flavor}, "count": count}
            for role, count in (("embedding-server", 2), ("sync-server", 1), ("trainer", 2))]},
        "conditions": [
            {"type": "QuotaReserved", "status": "True", "reason": "QuotaReserved", "message": "Quota reserved",
             "lastTransitionTime": "2026-12-03T00:00:00Z"},
            {"type": "Admitted", "status": "True", "reason": "Admitted", "message": "The workload is admitted",
             "lastTransitionTime": "2026-12-03T00:00:00Z"}],
    }


async def test_a_queued_job_waits_for_admission_runs_on_its_flavor_survives_an_eviction_and_releases_its_quota(
    cluster: Cluster, operator: Operator
) -> None:
    flavor = {"apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "ResourceFlavor", "metadata": {"name": "spot"},
              "spec": {"nodeLabels": {"cloud.example.com/capacity": "spot"}}}
    async with cluster.api.post(FLAVORS, json=flavor) as response:
        assert response.status < 300
    body = manifest("queued")
    body["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "team-a"}
    await cluster.create_job(body)

    # 1. A Workload owned by the job, one pod set per role with the pods' requests; no pods until admitted.
    created = await eventually(lambda: workload(cluster, "trainingjob-queued"), what="the Workload")
    assert created["spec"]["queueName"] == "team-a"
    assert [(p["name"], p["count"]) for p in created["spec"]["podSets"]] == [
        ("embedding-server", 2), ("sync-server", 1), ("trainer", 2)]
    trainer_set = created["spec"]["podSets"][2]["template"]["spec"]
    assert trainer_set["containers"][0]["name"] == "dlrm" and trainer_set["restartPolicy"] == "Never"
    [owner] = created["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("TrainingJob", "queued", True)
    suspended = await eventually(lambda: (c := cluster.condition("queued", "Suspended")) is not None
                                 and c["status"] == "True" and c, what="held Suspended")
    assert suspended["message"].startswith("waiting for Kueue admission (LocalQueue team-a)")
    assert cluster.phase("queued") == "Suspended" and cluster.pods("queued") == {}

    # 2. Kueue admits it on the spot flavor: the pods come, steered to that flavor's nodes.
    await set_workload_status(cluster, "trainingjob-queued", admitted("spot"))
    uids = await eventually(lambda: cluster.running("queued", 5), what="5 running pods after admission")
    for pod in cluster.pods("queued").values():
        assert pod["spec"]["nodeSelector"] == {"cloud.example.com/capacity": "spot"}
    await eventually(lambda: cluster.phase("queued") == "Running", what="phase Running")

    # 3. Kueue preempts it: every pod goes, nothing counts as a failure; readmitted, it resumes.
    evicted = admitted("spot")
    evicted["conditions"].append({"type": "Evicted", "status": "True", "reason": "Preempted",
                                  "message": "Preempted to accommodate a higher priority Workload",
                                  "lastTransitionTime": "2026-12-03T00:01:00Z"})
    await set_workload_status(cluster, "trainingjob-queued", evicted)
    await eventually(lambda: cluster.phase("queued") == "Suspended" and not cluster.pods("queued"),
                     what="suspended, pods gone")
    message = cluster.condition("queued", "Suspended")["message"]
    assert message.startswith("evicted by Kueue (Preempted: Preempted to accommodate")
    await set_workload_status(cluster, "trainingjob-queued", admitted("spot") | {"conditions": [
        *admitted("spot")["conditions"], {"type": "Evicted", "status": "False", "reason": "Readmitted",
                                          "message": "", "lastTransitionTime": "2026-12-03T00:02:00Z"}]})
    again = await eventually(lambda: cluster.running("queued", 5), what="5 pods again after readmission")
    assert set(again.values()).isdisjoint(uids.values())  # new pods
    assert cluster.coordination("queued").failures() == []
    assert cluster.status("queued")["recovery"]["failures"] == 0

    # 4. The job finishes: the Workload is Finished, which releases the quota.
    for rank in (0, 1):
        await cluster.api.finish_pod(NAMESPACE, f"queued-trainer-{rank}", 0)
    await eventually(lambda: cluster.phase("queued") == "Succeeded", what="phase Succeeded")
    done = await eventually(lambda: next((c for c in (workload(cluster, "trainingjob-queued") or {}).get(
        "status", {}).get("conditions", []) if c["type"] == "Finished"), None), what="Workload Finished")
    assert (done["status"], done["reason"]) == ("True", "Succeeded")
    kept = {c["type"] for c in workload(cluster, "trainingjob-queued")["status"]["conditions"]}
    assert {"QuotaReserved", "Admitted", "Finished"} <= kept


async def test_a_queued_job_without_kueue_says_so_and_waits(cluster: Cluster, operator: Operator) -> None:
    """No Workload resource (Kueue not installed): the job stays Suspended and the condition says why."""
    cluster.api.resources.pop("kueue.x-k8s.io/v1beta1/workloads")
    body = manifest("nokueue")
    body["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "team-a"}
    await cluster.create_job(body)
    condition = await eventually(lambda: (c := cluster.condition("nokueue", "Suspended")) is not None
                                 and "is Kueue installed?" in c["message"] and c, what="Suspended, saying why")
    assert condition["status"] == "True" and cluster.pods("nokueue") == {}
