"""The operator's side of warm standby pods, on the emulated API server with a real Redis: the test plays the
standby (it offers the pod in Redis as the trainer image does once warm) and the kubelet (``finish_pod``). The
faithful-kubelet test (``test_faithful_standby.py``) runs the same protocol with real processes."""

from __future__ import annotations

import time
from typing import Any

from tests.operator.conftest import JOBS_URL, NAMESPACE, Cluster, Operator, eventually, manifest, quietly
from trainingjob_operator.api.spec import GROUP

RANK, STANDBY = f"{GROUP}/rank", f"{GROUP}/standby"


def standby_pods(cluster: Cluster, job: str) -> dict[str, dict[str, Any]]:
    return {name: p for name, p in cluster.pods(job).items() if p["metadata"]["labels"].get(STANDBY) == "true"
            and not p["metadata"].get("deletionTimestamp")}


async def warm_standby(cluster: Cluster, job: str) -> tuple[str, str]:
    """Wait for the job's 5 replicas and its one standby to run; offer the standby in Redis as it would."""
    await eventually(lambda: cluster.running(job, 6), what="5 replicas and a standby running")
    [(name, pod)] = standby_pods(cluster, job).items()
    uid = pod["metadata"]["uid"]
    cluster.coordination(job).offer_standby("trainer", uid)
    return name, uid


async def test_a_failed_rank_goes_to_a_warm_standby_and_a_new_standby_follows(
        cluster: Cluster, operator: Operator) -> None:
    await cluster.create_job(manifest("warm", recovery={"standby": {"trainer": 1}}))
    standby, uid = await warm_standby(cluster, "warm")
    await eventually(lambda: cluster.status("warm").get("standbys") == {"trainer": {"desired": 1, "ready": 1,
                                                                                    "stuck": 0}},
                     what="status: the standby ready")
    coord = cluster.coordination("warm")
    failed_at = time.monotonic()

    await cluster.api.finish_pod(NAMESPACE, "warm-trainer-1", 137)

    await eventually(lambda: cluster.pods("warm")[standby]["metadata"]["labels"].get(RANK) == "1",
                     what="the standby relabelled as trainer rank 1")
    pod = cluster.pods("warm")[standby]
    assert STANDBY not in pod["metadata"]["labels"]
    assert pod["metadata"]["annotations"][f"{GROUP}/generation"] == "1"
    assignment = coord.await_assignment(uid, 1.0)  # what the standby reads: its rank and generation
    assert assignment is not None and (assignment["rank"], assignment["generation"]) == (1, 1)
    assert coord.await_assignment(uid, 0.1) is None  # assigned once
    [new] = await eventually(lambda: list(standby_pods(cluster, "warm")) or None, what="a new standby behind it")
    assert new != standby
    await eventually(lambda: "warm-trainer-1" not in cluster.pods("warm"), what="the failed pod removed")
    await quietly(1.0)
    assert len(cluster.requests("POST", "pods", since=failed_at)) == 1  # the new standby; no cold trainer-1
    assert "warm-trainer-1" not in cluster.pods("warm")
    assert cluster.status("warm")["replicas"]["trainer"]["restarts"] == 1

    # The job finishes (trainer 1 is the former standby's pod now): no standby outlives it.
    await cluster.api.finish_pod(NAMESPACE, "warm-trainer-0", 0)
    await cluster.api.finish_pod(NAMESPACE, standby, 0)
    await eventually(lambda: cluster.phase("warm") == "Succeeded", what="job Succeeded")
    await eventually(lambda: not standby_pods(cluster, "warm"), what="its standby deleted")


async def test_without_a_warm_standby_the_replacement_starts_cold(cluster: Cluster, operator: Operator) -> None:
    """A standby that never offered itself (still importing, its Redis client broken) is not handed a rank."""
    await cluster.create_job(manifest("cold", recovery={"standby": {"trainer": 1}}))
    before = await eventually(lambda: cluster.running("cold", 6), what="5 replicas and a standby running")
    [standby] = standby_pods(cluster, "cold")
    await eventually(lambda: cluster.status("cold").get("standbys") == {"trainer": {"desired": 1, "ready": 0,
                                                                                    "stuck": 0}},
                     what="status: one standby asked for, none ready (it never offered itself)")

    await cluster.api.finish_pod(NAMESPACE, "cold-trainer-1", 137)

    await eventually(lambda: (u := cluster.running("cold", 6)) and u.get("cold-trainer-1") not in (None,
                     before["cold-trainer-1"]), what="trainer-1 recreated cold")
    assert list(standby_pods(cluster, "cold")) == [standby]  # still waiting, untouched
    assert RANK not in cluster.pods("cold")[standby]["metadata"]["labels"]


async def test_lowering_the_standby_count_deletes_the_surplus(cluster: Cluster, operator: Operator) -> None:
    await cluster.create_job(manifest("fewer", recovery={"standby": {"trainer": 1}}))
    await eventually(lambda: cluster.running("fewer", 6), what="5 replicas and a standby running")
    patch = {"spec": {"recovery": {"standby": {"trainer": 0}}}}
    async with cluster.api.patch(f"{JOBS_URL}/fewer", json=patch,
                                 headers={"Content-Type": "application/merge-patch+json"}) as response:
        assert response.status < 300, await response.text()
    await eventually(lambda: not standby_pods(cluster, "fewer"), what="the standby deleted")
    await eventually(lambda: "standbys" not in cluster.status("fewer"), what="status: no standbys section")
    assert cluster.running("fewer", 5) is not None  # the replicas untouched


async def test_a_standby_that_cannot_be_scheduled_is_reported_once_and_a_failed_rank_starts_cold(
        cluster: Cluster, operator: Operator) -> None:
    """Nothing waits on a standby, so nothing else would say that the standbys asked for are not there."""
    unschedulable = {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]}
    running = {"phase": "Running", "containerStatuses": [
        {"name": "dlrm", "ready": True, "restartCount": 0,
         "state": {"running": {"startedAt": "2026-12-04T00:00:00Z"}}}]}
    cluster.api.pod_startup_s = None  # this test plays the kubelet and the scheduler
    await cluster.create_job(manifest("full", recovery={"standby": {"trainer": 1}}))
    await eventually(lambda: len(cluster.pods("full")) == 5, what="5 replica pods created")
    for name in cluster.pods("full"):
        await cluster.api.patch_pod_status(NAMESPACE, name, running)
    [standby] = await eventually(lambda: list(standby_pods(cluster, "full")) or None, what="the standby created")
    await cluster.api.patch_pod_status(NAMESPACE, standby, unschedulable)

    warning = await eventually(lambda: next((e for e in cluster.events("full")
                                             if e["reason"] == "StandbyUnschedulable"), None),
                               what="the StandbyUnschedulable Warning")
    assert warning["type"] == "Warning"
    assert warning["message"] == (f"standby pod {standby} cannot start: Unschedulable: 0/3 nodes are available: 3 "
                                  "Insufficient nvidia.com/gpu.; until it can, a failed trainer starts cold "
                                  "(recovery.standby)")
    stuck = operator.context.metrics.registry.get_sample_value(
        "trainingjob_replicas_stuck_total", {"role": "trainer-standby", "reason": "Unschedulable"})
    assert stuck == 1.0
    assert cluster.condition("full", "Stuck") is None  # every replica runs: the job itself is not stuck
    await eventually(lambda: cluster.status("full").get("standbys") == {"trainer": {"desired": 1, "ready": 0,
                                                                                    "stuck": 1}},
                     what="status: the standby stuck")

    before = cluster.uids("full")["full-trainer-1"]
    await cluster.api.finish_pod(NAMESPACE, "full-trainer-1", 137)
    await eventually(lambda: cluster.uids("full").get("full-trainer-1") not in (None, before),
                     what="trainer-1 recreated cold")
    assert list(standby_pods(cluster, "full")) == [standby]  # kept (a new one would wait on the same), not taken
    assert RANK not in cluster.pods("full")[standby]["metadata"]["labels"]
    assert [e for e in cluster.events("full") if e["reason"] == "StandbyUnschedulable"] == [warning]  # said once
