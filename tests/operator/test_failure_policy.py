"""When the operator gives up: permanent errors, exhausted restart budgets, invalid specs."""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import pytest

from tests.operator.conftest import JOBS_URL, NAMESPACE, Cluster, Operator, eventually, manifest, quietly
from trainingjob_operator.api import parse_manifest
from trainingjob_operator.api.loading import ManifestError
from trainingjob_operator.api.spec import spec_from_json


async def test_exit_code_78_fails_the_job_and_replaces_nothing(cluster: Cluster, operator: Operator) -> None:
    await cluster.create_job(manifest("perm"))
    before = await eventually(lambda: cluster.running("perm", 5), what="5 running pods")
    failed_at = time.monotonic()

    await cluster.api.finish_pod(NAMESPACE, "perm-embedding-server-1", 78)

    await eventually(lambda: cluster.phase("perm") == "Failed", what="phase Failed")
    failed = cluster.condition("perm", "Failed")
    assert failed is not None and failed["status"] == "True" and failed["reason"] == "PermanentError"
    assert "embedding-server-1 exited with code 78" in failed["message"]
    # The failed pod stays for inspection; the others are stopped; nothing is created.
    await eventually(lambda: list(cluster.pods("perm")) == ["perm-embedding-server-1"], what="others deleted")
    assert cluster.uids("perm")["perm-embedding-server-1"] == before["perm-embedding-server-1"]
    await quietly(0.5)
    assert cluster.requests("POST", "pods", since=failed_at) == []
    event = await eventually(lambda: next((e for e in cluster.events("perm") if e["reason"] == "PermanentError"),
                                          None), what="PermanentError event")
    assert event["type"] == "Warning"


async def test_a_pod_that_keeps_failing_exhausts_its_budget_and_fails_the_job(
    cluster: Cluster, operator: Operator
) -> None:
    await cluster.create_job(manifest("budget", recovery={"restartBudget": {"maxRestarts": 2, "windowSeconds": 600}}))
    uids = await eventually(lambda: cluster.running("budget", 5), what="5 running pods")

    def replaced(previous: str) -> dict[str, str] | None:
        now = cluster.running("budget", 5)
        return now if now and now["budget-trainer-0"] != previous else None

    for attempt in range(2):  # two failures are within budget: replaced each time
        await cluster.api.finish_pod(NAMESPACE, "budget-trainer-0", 1)
        previous = uids["budget-trainer-0"]
        uids = await eventually(functools.partial(replaced, previous), what=f"replacement {attempt + 1}")
    await cluster.api.finish_pod(NAMESPACE, "budget-trainer-0", 1)  # the third is one too many

    await eventually(lambda: cluster.phase("budget") == "Failed", what="phase Failed")
    failed = cluster.condition("budget", "Failed")
    assert failed is not None and failed["reason"] == "RestartBudgetExhausted"
    assert "trainer-0 failed 3 times within 600s (budget 2)" in failed["message"]
    assert cluster.status("budget")["recovery"]["failures"] == 3
    assert len(cluster.coordination("budget").failures()) == 3


async def test_an_invalid_spec_fails_with_a_condition_naming_the_field_and_others_are_served(
    cluster: Cluster, operator: Operator
) -> None:
    bad = manifest("bad", replicas={"syncServer": {"replicas": 2}})
    try:
        parse_manifest(bad)
    except ManifestError as e:
        expected = str(e)
    await cluster.create_job(bad)
    await cluster.create_job(manifest("good"))

    await eventually(lambda: cluster.phase("bad") == "Failed", what="bad job Failed")
    failed = cluster.condition("bad", "Failed")
    assert failed is not None and failed["reason"] == "InvalidSpec"
    assert failed["message"] == expected
    assert failed["message"].startswith("spec.replicas.syncServer.replicas")
    event = await eventually(lambda: next((e for e in cluster.events("bad") if e["reason"] == "InvalidSpec"), None),
                             what="InvalidSpec event")
    assert event["message"] == expected
    await eventually(lambda: cluster.running("good", 5), what="the good job runs")
    assert cluster.pods("bad") == {}
    # Reported once: no retry loop, no repeated events.
    await quietly(1.0)
    assert len([e for e in cluster.events("bad") if e["reason"] == "InvalidSpec"]) == 1


async def test_a_job_without_any_redis_fails_naming_spec_redis_url(cluster: Cluster, operator: Operator) -> None:
    operator.config = dataclasses.replace(operator.config, default_redis_url=None)
    await operator.restart()
    await cluster.create_job(manifest("noredis"))

    await eventually(lambda: cluster.phase("noredis") == "Failed", what="phase Failed")
    failed = cluster.condition("noredis", "Failed")
    assert failed is not None and failed["message"].startswith("spec.redis.url: is required")


async def test_an_invalid_spec_update_is_rejected_and_the_job_keeps_running(
    cluster: Cluster, operator: Operator
) -> None:
    await cluster.create_job(manifest("upd"))
    before = await eventually(lambda: cluster.running("upd", 5), what="5 running pods")

    patch = {"spec": {"replicas": {"trainer": {"replicas": 0}}}}
    async with cluster.api.patch(f"{JOBS_URL}/upd", json=patch,
                                 headers={"Content-Type": "application/merge-patch+json"}) as response:
        assert response.status < 300

    await eventually(lambda: any(e["reason"] == "SpecUpdateRejected" for e in cluster.events("upd")),
                     what="SpecUpdateRejected event")
    await quietly(0.5)
    assert cluster.uids("upd") == before
    assert cluster.phase("upd") == "Running"


async def test_a_drain_that_evicts_one_replica_again_and_again_does_not_fail_the_job(
    cluster: Cluster, operator: Operator
) -> None:
    """Evictions are the cluster's doing: by default they spend no restart budget and wait no backoff."""
    await cluster.create_job(manifest("drain", recovery={"restartBudget": {"maxRestarts": 1, "windowSeconds": 600}}))
    uids = await eventually(lambda: cluster.running("drain", 5), what="5 running pods")
    for attempt in range(4):
        previous = uids["drain-trainer-0"]
        await cluster.api.evict_pod(NAMESPACE, "drain-trainer-0")
        uids = await eventually(lambda p=previous: (u := cluster.running("drain", 5)) and u["drain-trainer-0"] != p
                                and u, what=f"replacement {attempt + 1}")
    await eventually(lambda: cluster.phase("drain") == "Running", what="phase Running again")
    assert [f["reason"] for f in cluster.coordination("drain").failures()] == ["Evicted"] * 4
    assert cluster.status("drain")["coordinator"].get("restartTimes", {}).get("trainer-0") is None


async def test_a_crash_looping_replica_is_replaced_after_a_backoff_shown_in_its_condition(
    cluster: Cluster, operator: Operator
) -> None:
    await cluster.create_job(manifest("loop", recovery={
        "restartBudget": {"maxRestarts": 10, "windowSeconds": 600},
        "failurePolicy": {"backoff": {"immediateReplacements": 1, "initialSeconds": 3, "maxSeconds": 60}}}))
    uids = await eventually(lambda: cluster.running("loop", 5), what="5 running pods")
    await cluster.api.finish_pod(NAMESPACE, "loop-trainer-0", 1)  # the first is replaced at once
    uids = await eventually(lambda p=uids["loop-trainer-0"]: (u := cluster.running("loop", 5))
                            and u["loop-trainer-0"] != p and u, what="the first replacement")

    await cluster.api.finish_pod(NAMESPACE, "loop-trainer-0", 1)  # the second waits 3 s
    failed_at = time.monotonic()
    recovering = await eventually(lambda: (c := cluster.condition("loop", "Recovering")) is not None
                                  and "backing off: trainer-0 in 3s" in c["message"] and c, what="backoff shown")
    assert recovering["status"] == "True"
    await eventually(lambda: "loop-trainer-0" not in cluster.pods("loop"), what="the failed pod deleted")
    await eventually(lambda p=uids["loop-trainer-0"]: (u := cluster.running("loop", 5)) and u["loop-trainer-0"] != p,
                     timeout=15, what="the second replacement")
    waited = time.monotonic() - failed_at
    assert waited >= 2.9, f"replaced after {waited:.1f}s, before its 3 s backoff"


async def patch_spec(cluster: Cluster, name: str, spec: dict[str, Any]) -> None:
    async with cluster.api.patch(f"{JOBS_URL}/{name}", json={"spec": spec},
                                 headers={"Content-Type": "application/merge-patch+json"}) as response:
        assert response.status < 300


async def test_a_corrected_invalid_spec_starts_the_job_without_an_operator_restart(
    cluster: Cluster, operator: Operator
) -> None:
    await cluster.create_job(manifest("fixme", replicas={"syncServer": {"replicas": 2}}))
    await eventually(lambda: cluster.phase("fixme") == "Failed", what="Failed: InvalidSpec")

    await patch_spec(cluster, "fixme", {"replicas": {"syncServer": {"replicas": 1}}})

    await eventually(lambda: cluster.running("fixme", 5), what="5 running pods")
    await eventually(lambda: cluster.phase("fixme") == "Running", what="phase Running")
    assert cluster.condition("fixme", "Failed") is None  # the InvalidSpec verdict is gone with the bad spec


@pytest.mark.parametrize(("change", "field"), [
    pytest.param({"replicas": {"embeddingServer": {"replicas": 3}}}, "spec.replicas.embeddingServer.replicas",
                 id="reshard"),
    pytest.param({"model": {"embeddingDim": 32}}, "spec.model", id="model"),
    pytest.param({"training": {"denseLearningRate": 0.5}}, "spec.training.denseLearningRate", id="learning-rate"),
])
async def test_a_running_job_refuses_changes_that_would_mix_two_specs(
    cluster: Cluster, operator: Operator, change: dict[str, Any], field: str
) -> None:
    await cluster.create_job(manifest("frozen"))
    before = await eventually(lambda: cluster.running("frozen", 5), what="5 running pods")

    await patch_spec(cluster, "frozen", change)

    rejected = await eventually(lambda: next((e for e in cluster.events("frozen")
                                              if e["reason"] == "SpecUpdateRejected"), None), what="rejected")
    assert rejected["message"].startswith(f"{field}: cannot change while the job runs")
    # The coordinator saw the change (a positive signal) and kept running the spec it started with.
    coordinator = operator.context.jobs[(NAMESPACE, "frozen")]
    await eventually(lambda: coordinator._spec_raw == cluster.job("frozen")["spec"], what="the coordinator saw it")
    config_map = next(c for c in cluster.api.live("configmaps", NAMESPACE) if c["metadata"]["name"] == "frozen-spec")
    assert spec_from_json(config_map["data"]["spec.json"]) == coordinator.job.spec
    assert coordinator.job.spec == parse_manifest(manifest("frozen")).spec
    assert cluster.uids("frozen") == before
