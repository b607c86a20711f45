"""A restarted operator resumes from the status it persisted: it recreates nothing needlessly."""

from __future__ import annotations

import time

from tests.operator.conftest import JOBS_URL, NAMESPACE, Cluster, Operator, eventually, manifest, quietly


async def test_an_operator_restart_mid_job_recreates_no_pod(cluster: Cluster, operator: Operator) -> None:
    await cluster.create_job(manifest("steady"))
    before = await eventually(lambda: cluster.running("steady", 5), what="5 running pods")
    await eventually(lambda: cluster.phase("steady") == "Running", what="phase Running")
    memory = cluster.status("steady")["coordinator"]

    await operator.restart()
    restarted_at = time.monotonic()
    await eventually(lambda: ("ml", "steady") in operator.context.jobs, what="coordinator resumed")
    await quietly(1.0)  # four ticks

    assert cluster.uids("steady") == before
    assert cluster.requests("POST", "pods", since=restarted_at) == []
    assert cluster.requests("DELETE", "pods", since=restarted_at) == []
    assert cluster.phase("steady") == "Running"
    assert cluster.status("steady")["coordinator"]["createdAt"] == memory["createdAt"]
    assert [e["reason"] for e in cluster.events("steady")].count("Running") == 1  # not announced twice


async def test_a_pod_that_failed_while_the_operator_was_down_is_replaced_after_restart(
    cluster: Cluster, operator: Operator
) -> None:
    await cluster.create_job(manifest("down"))
    before = await eventually(lambda: cluster.running("down", 5), what="5 running pods")
    await operator.stop()

    await cluster.api.finish_pod(NAMESPACE, "down-trainer-0", 1)
    await operator.start()

    after = await eventually(lambda: (u := cluster.running("down", 5)) and u != before and u, what="replaced")
    assert [name for name in after if after[name] != before[name]] == ["down-trainer-0"]
    assert cluster.coordination("down").generation() == 1


async def test_a_replacement_interrupted_by_a_restart_is_finished_without_counting_twice(
    cluster: Cluster, operator: Operator
) -> None:
    await cluster.create_job(manifest("mid"))
    before = await eventually(lambda: cluster.running("mid", 5), what="5 running pods")
    await eventually(lambda: cluster.phase("mid") == "Running", what="phase Running")
    await operator.stop()
    # As if the last operator recorded the failure and decided the replacement, then died before
    # its delete reached the API server.
    await cluster.api.finish_pod(NAMESPACE, "mid-trainer-1", 1)
    coordinator = dict(cluster.status("mid")["coordinator"])
    coordinator.update(generation=1, failures=1, replacing=["trainer-1"], restarts={"trainer-1": 1},
                       restartTimes={"trainer-1": [time.time()]})
    async with cluster.api.patch(f"{JOBS_URL}/mid/status", json={"status": {"coordinator": coordinator}},
                                 headers={"Content-Type": "application/merge-patch+json"}) as response:
        assert response.status < 300

    await operator.start()

    after = await eventually(lambda: (u := cluster.running("mid", 5)) and u != before and u, what="replaced")
    assert [name for name in after if after[name] != before[name]] == ["mid-trainer-1"]
    await eventually(lambda: cluster.phase("mid") == "Running", what="Running again")
    recovery = cluster.status("mid")["recovery"]
    assert (recovery["failures"], recovery["generation"]) == (1, 1)
    assert cluster.status("mid")["replicas"]["trainer"]["restarts"] == 1
