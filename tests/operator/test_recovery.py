"""A failed pod is replaced alone (partial recovery) or with everything (full recovery)."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from tests.operator.conftest import NAMESPACE, Cluster, Operator, eventually, manifest, operator_config, quietly


async def test_a_failed_pod_alone_is_replaced_and_every_other_pod_keeps_its_uid(
    cluster: Cluster, operator: Operator
) -> None:
    await cluster.create_job(manifest("cpr"))
    before = await eventually(lambda: cluster.running("cpr", 5), what="5 running pods")
    await eventually(lambda: cluster.phase("cpr") == "Running", what="phase Running")
    cluster.api.pod_startup_s = None  # the replacement stays Pending until we say so
    failed_at = time.monotonic()

    await cluster.api.finish_pod(NAMESPACE, "cpr-trainer-1", 1)

    # While the replacement is pending, the job says what it is doing.
    await eventually(lambda: cluster.uids("cpr").get("cpr-trainer-1") not in (None, before["cpr-trainer-1"]),
                     what="a new cpr-trainer-1")
    recovering = await eventually(lambda: (c := cluster.condition("cpr", "Recovering")) and c["status"] == "True"
                                  and c, what="Recovering condition")
    assert recovering["reason"] == "ExitCode1"
    assert "replacing trainer-1 (partial recovery, generation 1)" in recovering["message"]
    assert cluster.phase("cpr") == "Recovering"
    after = cluster.uids("cpr")
    assert {k: v for k, v in after.items() if k != "cpr-trainer-1"} == \
        {k: v for k, v in before.items() if k != "cpr-trainer-1"}
    replacement = cluster.pods("cpr")["cpr-trainer-1"]
    assert replacement["metadata"]["annotations"]["training.cpr.dev/generation"] == "1"
    env = {e["name"]: e.get("value") for e in replacement["spec"]["containers"][0]["env"]}
    assert env["TJ_GENERATION"] == "1"

    # Exactly one delete and one create, both for that pod.
    deletes = cluster.requests("DELETE", "pods", since=failed_at)
    creates = cluster.requests("POST", "pods", since=failed_at)
    assert [d.name for d in deletes] == ["cpr-trainer-1"]
    assert len(creates) == 1

    # Redis: generation bumped, failure logged with the pod and the reason.
    coord = cluster.coordination("cpr")
    assert coord.generation() == 1
    [failure] = coord.failures()
    assert failure | {"time": None} == {
        "role": "trainer", "rank": 1, "pod": "cpr-trainer-1", "instance": before["cpr-trainer-1"],
        "reason": "ExitCode1", "exit_code": 1, "time": None, "generation": 1, "mode": "partial",
        "samples": 0}  # samples at failure: the PLS reference point (nothing trained in this emulated job)

    # A Kubernetes Event names the pod and the reason.
    event = await eventually(lambda: next((e for e in cluster.events("cpr") if e["reason"] == "ReplicaFailed"), None),
                             what="ReplicaFailed event")
    assert event["type"] == "Warning"
    assert "pod cpr-trainer-1 failed: ExitCode1 (exit code 1)" in event["message"]

    # The replacement starts: the job is Running again, with the restart counted.
    await cluster.api.patch_pod_status(NAMESPACE, "cpr-trainer-1", {"phase": "Running"})
    await eventually(lambda: cluster.phase("cpr") == "Running", what="Running again")
    status = cluster.status("cpr")
    assert status["replicas"]["trainer"]["restarts"] == 1
    assert status["recovery"]["failures"] == 1 and status["recovery"]["generation"] == 1
    assert status["recovery"]["lastFailure"]["reason"] == "ExitCode1"
    assert cluster.condition("cpr", "Recovering")["reason"] == "Recovered"  # type: ignore[index]
    metrics = operator.context.metrics
    assert metrics.failure_to_replacement._sum.get() > 0  # type: ignore[attr-defined]
    assert metrics.restarts.labels("trainer")._value.get() == 1  # type: ignore[attr-defined]


async def test_an_evicted_server_is_replaced_with_its_reason(cluster: Cluster, operator: Operator) -> None:
    await cluster.create_job(manifest("evict"))
    before = await eventually(lambda: cluster.running("evict", 5), what="5 running pods")

    await cluster.api.evict_pod(NAMESPACE, "evict-embedding-server-0")

    after = await eventually(lambda: (u := cluster.running("evict", 5)) and u != before and u,
                             what="replacement running")
    assert [name for name in after if after[name] != before[name]] == ["evict-embedding-server-0"]
    assert [f["reason"] for f in cluster.coordination("evict").failures()] == ["Evicted"]


async def test_a_hung_replica_is_replaced_but_not_its_replacement(cluster: Cluster, operator: Operator) -> None:
    await cluster.create_job(manifest("hung", recovery={"heartbeatTimeoutSeconds": 1.0}))
    before = await eventually(lambda: cluster.running("hung", 5), what="5 running pods")
    coord = cluster.coordination("hung")
    # Every replica registers as its pod (instance = pod UID) and heartbeats, but sync-server-0 hangs.
    replicas = {name: name.removeprefix("hung-").rsplit("-", 1) for name in before}
    for name, (role, rank) in replicas.items():
        coord.register(role, int(rank), "10.0.0.1:50051", instance=before[name])

    async def heartbeats() -> None:
        while True:
            for name, (role, rank) in replicas.items():
                if name != "hung-sync-server-0":
                    coord.heartbeat(role, int(rank))
            await asyncio.sleep(0.1)

    beating = asyncio.create_task(heartbeats())
    try:
        after = await eventually(lambda: (u := cluster.running("hung", 5)) and u != before and u,
                                 what="hung replica replaced")
        assert [name for name in after if after[name] != before[name]] == ["hung-sync-server-0"]
        assert [f["reason"] for f in coord.failures()] == ["HeartbeatTimeout"]
        # The replacement has not registered: the silent member record is its predecessor's, not its own.
        await quietly(1.5)
        assert cluster.uids("hung") == after
        assert len(coord.failures()) == 1
    finally:
        beating.cancel()


async def test_full_recovery_recreates_every_pod(cluster: Cluster, operator: Operator) -> None:
    await cluster.create_job(manifest("full", trainers=2, embedding_servers=2, recovery={"mode": "full"}))
    before = await eventually(lambda: cluster.running("full", 5), what="5 running pods")
    failed_at = time.monotonic()

    await cluster.api.finish_pod(NAMESPACE, "full-embedding-server-1", 137)

    after = await eventually(lambda: (u := cluster.running("full", 5)) and
                             all(u[name] != before[name] for name in before) and u, what="all pods recreated")
    assert sorted(after) == sorted(before)
    assert len(cluster.requests("POST", "pods", since=failed_at)) == 5
    await eventually(lambda: cluster.phase("full") == "Running", what="Running again")
    status = cluster.status("full")
    assert status["recovery"]["failures"] == 1
    assert sum(r["restarts"] for r in status["replicas"].values()) == 5
    [failure] = cluster.coordination("full").failures()
    assert failure["mode"] == "full" and failure["reason"] == "ExitCode137"


async def test_a_pod_stuck_terminating_on_a_lost_node_is_force_deleted_and_replaced(
    cluster: Cluster, redis_url: str
) -> None:
    """Deleted (a drain, kubectl delete) on a node that no longer answers: the pod keeps its deletionTimestamp
    forever and would block its replica (same name). Past its grace plus the margin it is force-deleted, with a
    Warning event, and replaced."""
    cluster.api.hold_deleted_pods = True  # nothing confirms a termination: the node is gone
    config = dataclasses.replace(operator_config(cluster.api, redis_url), force_delete_margin_s=1.0)
    op = Operator(config=config)
    await op.start()
    try:
        await cluster.create_job(manifest("lost"))
        before = await eventually(lambda: cluster.running("lost", 5), what="5 running pods")
        async with cluster.api.delete(f"/api/v1/namespaces/{NAMESPACE}/pods/lost-trainer-0") as response:
            assert response.status < 300
        assert cluster.pods("lost")["lost-trainer-0"]["metadata"].get("deletionTimestamp")  # terminating

        forced = await eventually(lambda: next((e for e in cluster.events("lost") if e["reason"] == "ForceDeleted"),
                                               None), timeout=15, what="ForceDeleted event")
        assert forced["type"] == "Warning" and forced["message"].startswith("pod lost-trainer-0 was still terminating")
        after = await eventually(lambda: (u := cluster.running("lost", 5)) and u["lost-trainer-0"] !=
                                 before["lost-trainer-0"] and u, timeout=15, what="the replacement running")
        assert [n for n in after if after[n] != before[n]] == ["lost-trainer-0"]
        assert [f["reason"] for f in cluster.coordination("lost").failures()] == ["Deleted"]
    finally:
        await op.stop()
