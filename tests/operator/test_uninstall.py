"""The chart's pre-delete hook (``trainingjob uninstall-jobs``) deletes every TrainingJob while the operator still
runs and waits until the operator has released its finalizer: nothing is left trapped after ``helm uninstall``.
The real ``kubernetes`` client against the emulated API server, the real kopf operator."""

from __future__ import annotations

import asyncio

from tests.operator.conftest import Cluster, Operator, eventually, manifest
from trainingjob_operator.k8s.uninstall import delete_all_jobs


async def test_the_pre_delete_hook_deletes_every_job_and_waits_for_the_operator(
    cluster: Cluster, operator: Operator
) -> None:
    for name in ("one", "two"):
        await cluster.create_job(manifest(name))
    await eventually(lambda: cluster.running("one", 5) and cluster.running("two", 5), what="both jobs running")
    lines: list[str] = []

    left = await asyncio.get_running_loop().run_in_executor(
        None, lambda: delete_all_jobs(None, 30.0, lines.append, host=str(cluster.api.url).rstrip("/")))

    assert left == 0 and lines == ["deleting 2 TrainingJob(s)"]
    assert not cluster.job_exists("one") and not cluster.job_exists("two")
    assert cluster.pods("one") == {} and cluster.pods("two") == {}  # the operator deleted the children first


async def test_without_the_operator_the_hook_says_what_is_left(cluster: Cluster, operator: Operator) -> None:
    await cluster.create_job(manifest("orphan"))
    await eventually(lambda: cluster.running("orphan", 5), what="running")
    await operator.stop()  # uninstalled too early: nobody releases the finalizer
    lines: list[str] = []
    left = await asyncio.get_running_loop().run_in_executor(
        None, lambda: delete_all_jobs(None, 2.0, lines.append, host=str(cluster.api.url).rstrip("/")))
    assert left == 1
    assert lines[-1].startswith("still there after 2s: ml/orphan (is the operator running?")
