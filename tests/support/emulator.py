"""An in-memory Kubernetes API server for the operator's tests and benchmarks.

kmock's ``KubernetesEmulator`` stores what it is sent and nothing more (TESTING-NOTES.md). This
subclass adds the few API-server behaviours the operator's tests depend on, and nothing else:

- on create: ``metadata.uid``, ``resourceVersion``, ``creationTimestamp``, ``generation``, the
  namespace from the URL, and a name from ``generateName`` (kopf posts Events that way);
- on patch: a new ``resourceVersion`` (kopf checks it for consistency);
- a tiny kubelet: a created pod becomes Running after ``pod_startup_s`` (``None``: it stays
  Pending), and, with ``pod_termination_s`` set, a deleted pod lingers that long with a
  ``deletionTimestamp`` (graceful termination) before it is gone;
- a journal of every request with a monotonic timestamp, for latency and request counts;
- constant-time request matching: kmock matches a request against its reactions by scanning all
  past requests (quadratic in their number), which a benchmark's tens of thousands of requests
  cannot afford. Here the scan sees only the requests in flight, and the history is dropped; the
  journal keeps what tests and benchmarks need. kmock's own request views (``api.requests``...)
  therefore show only requests in flight.

- a force delete (``gracePeriodSeconds: 0``) removes a held pod at once, as a real API server does;
- admission: ``pod_admission`` refuses pod creates with a 403 or 422 ``Status`` (quota, Pod Security admission,
  a webhook), and a failed JSON-patch ``test`` is a 422 as on a real server (kopf relies on it);
- the status subresource kept apart: a write to an object ignores its ``status``, a write to ``/status``
  changes only the status (pods, TrainingJobs, Workloads, PodGroups);
- garbage collection: deleting an object deletes the objects whose ownerReferences name its uid.

Still missing compared to a real API server: strategic merge patches (everything is a JSON merge
patch), resourceVersion conflicts, schema validation, label selectors on lists and watches.

kmock is a development dependency: this module lives in tests/ and is never shipped.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock

from trainingjob_operator.api.spec import GROUP, KIND, PLURAL, SHORT_NAME, SINGULAR, VERSION

VERBS = ["list", "watch", "get", "create", "patch", "update", "delete"]
PODS = kmock.resource("", "v1", "pods")
KUBELET_FINALIZER = "emulator.kmock/kubelet"  # holds a deleted pod while it "terminates"
MAIN_CONTAINER = "dlrm"

RESOURCES: dict[str, dict[str, Any]] = {
    f"{GROUP}/{VERSION}/{PLURAL}": {
        "kind": KIND, "singular": SINGULAR, "shortnames": [SHORT_NAME], "namespaced": True,
        "verbs": VERBS, "subresources": ["status"],
    },
    "v1/pods": {"kind": "Pod", "singular": "pod", "namespaced": True, "verbs": VERBS, "subresources": ["status"]},
    "v1/persistentvolumeclaims": {"kind": "PersistentVolumeClaim", "singular": "persistentvolumeclaim",
                                  "namespaced": True, "verbs": VERBS},
    "v1/secrets": {"kind": "Secret", "singular": "secret", "namespaced": True, "verbs": VERBS},
    "v1/services": {"kind": "Service", "singular": "service", "namespaced": True, "verbs": VERBS},
    "v1/configmaps": {"kind": "ConfigMap", "singular": "configmap", "namespaced": True, "verbs": VERBS},
    "v1/events": {"kind": "Event", "singular": "event", "namespaced": True, "verbs": VERBS},
    "kueue.x-k8s.io/v1beta1/workloads": {"kind": "Workload", "singular": "workload", "namespaced": True,
                                         "verbs": VERBS, "subresources": ["status"]},
    "kueue.x-k8s.io/v1beta1/resourceflavors": {"kind": "ResourceFlavor", "singular": "resourceflavor",
                                               "namespaced": False, "verbs": VERBS},
    "scheduling.volcano.sh/v1beta1/podgroups": {"kind": "PodGroup", "singular": "podgroup", "namespaced": True,
                                                "verbs": VERBS, "subresources": ["status"]},
    "scheduling.x-k8s.io/v1alpha1/podgroups": {"kind": "PodGroup", "singular": "podgroup", "namespaced": True,
                                               "verbs": VERBS, "subresources": ["status"]},
    "networking.k8s.io/v1/networkpolicies": {"kind": "NetworkPolicy", "singular": "networkpolicy",
                                             "namespaced": True, "verbs": VERBS},
    "v1/namespaces": {"kind": "Namespace", "singular": "namespace", "namespaced": False, "verbs": VERBS},
    "apiextensions.k8s.io/v1/customresourcedefinitions": {
        "kind": "CustomResourceDefinition", "singular": "customresourcedefinition", "namespaced": False,
        "verbs": VERBS,
    },
}


@dataclass(frozen=True)
class JournalEntry:
    """One request as the server saw it (``at`` is ``time.monotonic()``)."""

    at: float
    method: str
    action: str | None
    plural: str | None
    namespace: str | None
    name: str | None
    subresource: str | None
    user_agent: str


def _grace(options: Any) -> int | None:
    """gracePeriodSeconds of a DELETE's DeleteOptions body, if any."""
    return options.get("gracePeriodSeconds") if isinstance(options, dict) else None


def _status_response(code: int, message: str) -> aiohttp.web.Response:
    """A refused request as the API server answers it: a ``Status`` object."""
    reason = {403: "Forbidden", 422: "Invalid", 409: "AlreadyExists", 404: "NotFound"}.get(code, "BadRequest")
    return aiohttp.web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                      "message": message, "reason": reason, "code": code}, status=code)


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@attrs.define(kw_only=True)
class ApiServerEmulator(kmock.KubernetesEmulator):
    """``async with ApiServerEmulator() as api, kmock.Server(api): api.url``."""

    pod_startup_s: float | None = 0.0
    pod_termination_s: float | None = None
    hold_deleted_pods: bool = False  # a deleted pod keeps a kubelet finalizer until a test kubelet removes it
    # Admission: called with every pod create's body; (HTTP status, message) refuses it as a quota, Pod Security
    # admission or a webhook would (403), or as validation does (422). None admits it.
    pod_admission: Callable[[dict[str, Any]], tuple[int, str] | None] | None = None
    journal: list[JournalEntry] = attrs.field(factory=list)
    _versions: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1))
    _kubelet_tasks: set[asyncio.Task[None]] = attrs.field(factory=set)
    _in_flight: list[kmock.Request] = attrs.field(factory=list)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for key, info in RESOURCES.items():
            self.resources[key] = dict(info)  # type: ignore[assignment]

    # --- the API server side ------------------------------------------------------------------
    def __iter__(self) -> Iterator[kmock.Request]:
        # What kmock's views (and its matching of reactions) iterate over: requests in flight only.
        yield from self._in_flight

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        self._record(request)
        self._requests.clear()  # kmock's history; the journal has what we need
        self._in_flight.append(request)
        try:
            return await self._handle_tracked(request)
        finally:
            self._in_flight[:] = [r for r in self._in_flight if r is not request]

    async def _handle_tracked(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        action = request.action
        is_pod = request.resource is not None and request.resource.plural == "pods"
        resource = request.resource
        if resource is not None and resource.plural and resource.version:
            key = "/".join(p for p in (resource.group, resource.version, resource.plural) if p)
            if key not in self.resources:  # an API the server does not serve (Kueue not installed): 404, not stored
                return _status_response(404, f"the server could not find the requested resource ({key})")
        if is_pod and action == kmock.action.CREATE and isinstance(request.data, dict) and self.pod_admission:
            refused = self.pod_admission(request.data)
            if refused is not None:
                return _status_response(*refused)
        if action == kmock.action.UPDATE and isinstance(request.data, dict) and self._has_status(resource):
            self._separate_status(request)
        if action == kmock.action.CREATE and isinstance(request.data, dict):
            self._fill_created(request)
        elif action == kmock.action.UPDATE and isinstance(request.data, dict):
            request.data.setdefault("metadata", {})["resourceVersion"] = str(next(self._versions))
        owner_uid = self._uid_of(request) if action == kmock.action.DELETE else None
        try:
            response = await super()._handle(request)
        except jsonpatch.JsonPatchTestFailed as e:
            # A JSON patch whose ``test`` op fails (kopf tests resourceVersion when it removes its finalizer) is
            # a 422 on a real API server; kopf then re-reads the object and tries again. kmock would answer 500,
            # which kopf retries unchanged, nine times, with the same stale resourceVersion.
            return _status_response(422, f"the JSON patch test failed: {e}")
        if owner_uid is not None and response.status < 300:
            self._spawn(self._collect_garbage(request.resource, request.namespace, request.name, owner_uid))
        if is_pod and response.status < 300:
            if action == kmock.action.CREATE and self.pod_startup_s is not None:
                meta = request.data["metadata"]
                self._spawn(self._start_pod(meta["namespace"], meta["name"], meta["uid"]))
            elif action == kmock.action.DELETE and request.name and _grace(request.data) == 0 \
                    and (self.pod_termination_s is not None or self.hold_deleted_pods):
                # A force delete (grace 0) removes the object at once, whatever its kubelet says.
                self._spawn(self._finish_termination(request.namespace or "", request.name, wait=False))
            elif action == kmock.action.DELETE and self.pod_termination_s is not None and request.name:
                self._spawn(self._finish_termination(request.namespace or "", request.name))
        return response

    def _uid_of(self, request: kmock.Request) -> str | None:
        key = (request.resource, request.namespace, request.name)
        if not request.name or key not in self.objects or self.objects[key].deleted:
            return None
        return (self.objects[key].raw.get("metadata") or {}).get("uid")

    async def _collect_garbage(self, resource: Any, namespace: str | None, name: str | None, uid: str) -> None:
        """Background deletion: once the owner is gone (its finalizers released), delete every object whose
        ownerReferences name its uid, through the API (watchers see them go), as the garbage collector does."""
        key = (resource, namespace, name)
        for _ in range(3000):  # up to 5 minutes of finalizers
            obj = self.objects[key] if key in self.objects else None  # noqa: SIM401 (no .get: kmock's ObjectsArray)
            if obj is None or obj.deleted or (obj.raw.get("metadata") or {}).get("uid") != uid:
                break
            await asyncio.sleep(0.1)
        else:
            return
        for (res, ns, dependent), obj in list(self.objects.items()):
            if obj.deleted:
                continue
            refs = (obj.raw.get("metadata") or {}).get("ownerReferences") or []
            if not any(r.get("uid") == uid for r in refs):
                continue
            group = f"/apis/{res.group}/{res.version}" if res.group else f"/api/{res.version}"
            path = f"{group}/namespaces/{ns}/{res.plural}/{dependent}" if ns else f"{group}/{res.plural}/{dependent}"
            async with self.delete(path) as response:
                await response.read()

    def _has_status(self, resource: Any) -> bool:
        if resource is None or not resource.plural:
            return False
        key = "/".join(p for p in (resource.group, resource.version, resource.plural) if p)
        return "status" in RESOURCES.get(key, {}).get("subresources", ())

    @staticmethod
    def _separate_status(request: kmock.Request) -> None:
        """The status subresource, as an API server keeps it: a write to the object ignores its status, a write
        to ``/status`` changes nothing but the status."""
        data = request.data
        if request.subresource == "status":
            for key in list(data):
                if key != "status" and not (key == "metadata" and isinstance(data[key], dict)):
                    del data[key]
            if isinstance(data.get("metadata"), dict):  # only what optimistic concurrency needs
                data["metadata"] = {k: v for k, v in data["metadata"].items() if k == "resourceVersion"}
                if not data["metadata"]:
                    del data["metadata"]
        elif request.subresource is None:
            data.pop("status", None)

    def _record(self, request: kmock.Request) -> None:
        resource = request.resource
        name = request.name
        if name is None and request.action == kmock.action.CREATE and isinstance(request.data, dict):
            name = request.data.get("metadata", {}).get("name")  # creates name the object in the body
        self.journal.append(JournalEntry(
            at=time.monotonic(), method=str(request.method.value if request.method else ""),
            action=request.action.value if request.action else None,
            plural=resource.plural if resource is not None else None,
            namespace=request.namespace, name=name, subresource=request.subresource,
            user_agent=request.headers.get("User-Agent", ""),
        ))

    def _fill_created(self, request: kmock.Request) -> None:
        meta = request.data.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:10]}"
        if request.namespace and not meta.get("namespace"):
            meta["namespace"] = request.namespace
        meta["uid"] = str(uuid.uuid4())
        meta["resourceVersion"] = str(next(self._versions))
        meta["creationTimestamp"] = _now_iso()
        meta.setdefault("generation", 1)
        resource = request.resource
        if resource is not None and resource.plural == "pods":
            if self.pod_termination_s is not None or self.hold_deleted_pods:
                meta["finalizers"] = [*meta.get("finalizers", []), KUBELET_FINALIZER]
            request.data.setdefault("status", {"phase": "Pending"})

    # --- the kubelet side ---------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._kubelet_tasks.add(task)
        task.add_done_callback(self._kubelet_tasks.discard)

    def pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The stored pod, or None when absent or deleted."""
        key = (PODS, namespace, name)
        if key not in self.objects:
            return None
        obj = self.objects[key]
        return None if obj.deleted else dict(obj.raw)

    async def _start_pod(self, namespace: str, name: str, uid: str) -> None:
        await asyncio.sleep(self.pod_startup_s or 0.0)
        pod = self.pod(namespace, name)
        if pod is None or pod["metadata"].get("uid") != uid or pod["metadata"].get("deletionTimestamp"):
            return  # replaced or deleted meanwhile
        if pod.get("status", {}).get("phase") not in (None, "Pending"):
            return  # a test already decided its fate
        now = _now_iso()
        await self.patch_pod_status(namespace, name, {
            "phase": "Running", "startTime": now, "podIP": "10.0.0.1",
            "containerStatuses": [{"name": MAIN_CONTAINER, "ready": True, "restartCount": 0,
                                   "state": {"running": {"startedAt": now}}}],
        })

    async def _finish_termination(self, namespace: str, name: str, wait: bool = True) -> None:
        if wait:
            await asyncio.sleep(self.pod_termination_s or 0.0)
        pod = self.pod(namespace, name)
        if pod is None:
            return
        finalizers = [f for f in pod["metadata"].get("finalizers", []) if f != KUBELET_FINALIZER]
        await self._patch(f"/api/v1/namespaces/{namespace}/pods/{name}", {"metadata": {"finalizers": finalizers}})

    # --- helpers for tests and benchmarks -----------------------------------------------------
    async def _patch(self, path: str, body: dict[str, Any]) -> None:
        headers = {"Content-Type": "application/merge-patch+json"}
        async with self.patch(path, json=body, headers=headers) as response:
            if response.status >= 400 and response.status != 404:
                raise RuntimeError(f"PATCH {path} -> {response.status}: {await response.text()}")

    async def patch_pod_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        await self._patch(f"/api/v1/namespaces/{namespace}/pods/{name}/status", {"status": status})

    async def finish_pod(self, namespace: str, name: str, exit_code: int, reason: str | None = None) -> None:
        """What the kubelet reports when the container exits: Succeeded on 0, else Failed."""
        terminated: dict[str, Any] = {"exitCode": exit_code, "finishedAt": _now_iso(),
                                      "reason": reason or ("Completed" if exit_code == 0 else "Error")}
        await self.patch_pod_status(namespace, name, {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "containerStatuses": [{"name": MAIN_CONTAINER, "ready": False, "restartCount": 0,
                                   "state": {"terminated": terminated}}],
        })

    async def release_pod(self, namespace: str, name: str) -> None:
        """The kubelet is done with a deleted pod: drop its finalizer so the object goes away."""
        await self._finish_termination(namespace, name, wait=False)

    async def evict_pod(self, namespace: str, name: str) -> None:
        await self.patch_pod_status(namespace, name, {
            "phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory.",
        })

    async def stop_kubelet(self) -> None:
        for task in list(self._kubelet_tasks):
            task.cancel()
        await asyncio.gather(*self._kubelet_tasks, return_exceptions=True)

    def live(self, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Every stored, not deleted object of a resource (optionally in one namespace)."""
        out = []
        for (resource, ns, _), obj in self.objects.items():
            if resource.plural == plural and not obj.deleted and (namespace is None or ns == namespace):
                out.append(dict(obj.raw))
        return out
