"""The API-server emulator behaves as an API server where the operator relies on it (each of these fails on
kmock's plain ``KubernetesEmulator``): the status subresource kept apart, garbage collection through
ownerReferences, admission refusals, a failed JSON-patch ``test`` answered 422, force deletes, unknown APIs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import kmock
import pytest

from tests.support.emulator import ApiServerEmulator
from tests.support.waiting import eventually

JOBS = "/apis/training.cpr.dev/v1alpha1/namespaces/ml/trainingjobs"
PODS = "/api/v1/namespaces/ml/pods"
MERGE = {"Content-Type": "application/merge-patch+json"}


@pytest.fixture
async def api() -> AsyncIterator[ApiServerEmulator]:
    async with ApiServerEmulator() as served, kmock.Server(served):
        served.pod_startup_s = None
        yield served
        await served.stop_kubelet()


async def call(api: ApiServerEmulator, method: str, path: str, body: Any = None,
               headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with getattr(api, method)(path, json=body, headers=headers) as response:
        return response.status, await response.json(content_type=None)


def job(name: str) -> dict[str, Any]:
    return {"apiVersion": "training.cpr.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
            "spec": {"image": "a"}}


async def test_the_status_subresource_is_kept_apart(api: ApiServerEmulator) -> None:
    await call(api, "post", JOBS, job("j"))
    await call(api, "patch", f"{JOBS}/j/status", {"status": {"phase": "Running"}, "spec": {"image": "b"}}, MERGE)
    _, body = await call(api, "get", f"{JOBS}/j")
    assert (body["status"]["phase"], body["spec"]["image"]) == ("Running", "a")  # /status changed only status
    await call(api, "patch", f"{JOBS}/j", {"status": {"phase": "Failed"}, "spec": {"image": "c"}}, MERGE)
    _, body = await call(api, "get", f"{JOBS}/j")
    assert (body["status"]["phase"], body["spec"]["image"]) == ("Running", "c")  # the object ignored status


async def test_deleting_an_owner_collects_what_it_owns_and_nothing_else(api: ApiServerEmulator) -> None:
    _, owner = await call(api, "post", JOBS, job("j"))
    ref = {"apiVersion": "training.cpr.dev/v1alpha1", "kind": "TrainingJob", "name": "j",
           "uid": owner["metadata"]["uid"], "controller": True}
    for name, refs in (("owned", [ref]), ("stranger", [])):
        await call(api, "post", "/api/v1/namespaces/ml/configmaps",
                   {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "ownerReferences": refs}})
    await call(api, "delete", f"{JOBS}/j")
    await eventually(lambda: [c["metadata"]["name"] for c in api.live("configmaps", "ml")] == ["stranger"],
                     what="the owned ConfigMap collected")


async def test_admission_refusals_patch_tests_force_deletes_and_unknown_apis(api: ApiServerEmulator) -> None:
    api.pod_admission = lambda pod: (403, "exceeded quota") if pod["metadata"]["name"] == "no" else None
    status, body = await call(api, "post", PODS, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "no"}})
    assert (status, body["reason"], body["message"]) == (403, "Forbidden", "exceeded quota")
    assert api.pod("ml", "no") is None

    await call(api, "post", JOBS, job("j"))
    stale = [{"op": "test", "path": "/metadata/resourceVersion", "value": "0"},
             {"op": "add", "path": "/metadata/finalizers", "value": ["x"]}]
    status, _ = await call(api, "patch", f"{JOBS}/j", stale, {"Content-Type": "application/json-patch+json"})
    assert status == 422  # what kopf expects when its finalizer patch raced another write

    api.hold_deleted_pods = True
    await call(api, "post", PODS, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}})
    await call(api, "delete", f"{PODS}/p")
    assert api.pod("ml", "p") is not None  # held: terminating until its kubelet confirms
    await call(api, "delete", f"{PODS}/p", {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0})
    await eventually(lambda: api.pod("ml", "p") is None, what="force-deleted at once")

    status, _ = await call(api, "get", "/apis/example.com/v1/namespaces/ml/widgets/w")
    assert status == 404
    status, _ = await call(api, "post", "/apis/example.com/v1/namespaces/ml/widgets", {"metadata": {"name": "w"}})
    assert status == 404  # not stored: the server does not serve that API
