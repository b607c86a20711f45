"""The one seam between the operator and the Kubernetes API (besides kopf's own watching).

It uses kopf's API client (``kopf._cogs.clients.api``): the same aiohttp session, credentials,
re-authentication on 401 and retries with backoff on 5xx/connection errors as kopf itself. That
module is private to kopf, so it is imported here only; kopf is pinned (``kopf==1.45.2``) and a
kopf upgrade that moves it changes this file alone. Requests are counted per verb and resource
(``requests``), which tests and benchmarks read.

Error hierarchy (kopf's errors are chained as ``__cause__``)::

    KubeError            any failed request (``code``: HTTP status, or None)
     +-- NotFound        404
     +-- Conflict        409 (exists already, or a precondition such as the pod's UID failed)
"""

from __future__ import annotations

import base64
import collections
import logging
from typing import Any

import aiohttp
import kopf
from kopf._cogs.clients import api as _api
from kopf._cogs.clients import errors as _errors

from trainingjob_operator.api.spec import GROUP, PLURAL, VERSION

_MERGE = {"Content-Type": "application/merge-patch+json"}
_JSON_PATCH = {"Content-Type": "application/json-patch+json"}


class KubeError(Exception):
    """A Kubernetes API request failed."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class NotFound(KubeError):
    """HTTP 404: the object is not there."""


class Conflict(KubeError):
    """HTTP 409: the object exists already, or a delete precondition did not hold."""


def _core(namespace: str, plural: str, name: str | None = None, sub: str | None = None) -> str:
    return "/".join(p for p in (f"/api/v1/namespaces/{namespace}/{plural}", name, sub) if p)


def _kueue(namespace: str, plural: str, name: str | None = None, sub: str | None = None) -> str:
    return "/".join(p for p in (f"/apis/kueue.x-k8s.io/v1beta1/namespaces/{namespace}/{plural}", name, sub) if p)


def _job_url(namespace: str, name: str, sub: str | None = None) -> str:
    base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"
    return f"{base}/{sub}" if sub else base


class Kube:
    """Typed calls the operator makes; every method maps one API request."""

    def __init__(self, settings: kopf.OperatorSettings, logger: logging.Logger | None = None) -> None:
        self.settings = settings
        self.logger = logger or logging.getLogger("trainingjob.kube")
        self.requests: collections.Counter[str] = collections.Counter()

    async def _call(self, method: str, url: str, what: str, payload: Any = None,
                    headers: dict[str, str] | None = None, retry: bool = True) -> Any:
        self.requests[what] += 1
        try:
            return await self._request(method, url, payload, headers, retry)
        except _errors.APINotFoundError as e:
            raise NotFound(f"{method.upper()} {url}: not found", 404) from e
        except _errors.APIConflictError as e:
            raise Conflict(f"{method.upper()} {url}: conflict", 409) from e
        except _errors.APIError as e:
            raise KubeError(f"{method.upper()} {url}: {e}", e.code) from e
        except (aiohttp.ClientError, TimeoutError) as e:
            raise KubeError(f"{method.upper()} {url}: {e!r}") from e

    async def _request(self, method: str, url: str, payload: Any, headers: dict[str, str] | None,
                       retry: bool = True) -> Any:
        fn = {"post": _api.post, "patch": _api.patch, "delete": _api.delete, "get": _api.get}[method]
        # retry=False: one attempt; the caller backs off itself (kopf would retry a 403 nine times).
        extra: dict[str, Any] = {} if retry else {"backoffs": ()}
        return await fn(url, payload=payload, headers=headers, settings=self.settings, logger=self.logger, **extra)

    # --- pods -------------------------------------------------------------------------------------
    async def create_pod(self, namespace: str, manifest: dict[str, Any]) -> bool:
        """Create a pod; False when one of that name exists already (409). One attempt: a refusal (quota, Pod
        Security admission, a webhook) reaches the coordinator at once, which shows it and backs off."""
        try:
            await self._call("post", _core(namespace, "pods"), "create pods", manifest, retry=False)
        except Conflict:
            return False
        return True

    async def delete_pod(self, namespace: str, name: str, *, uid: str | None = None,
                         grace_period_s: int | None = None) -> bool:
        """Delete a pod (only that incarnation when ``uid`` is given); False when already gone."""
        options: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if uid:
            options["preconditions"] = {"uid": uid}
        if grace_period_s is not None:
            options["gracePeriodSeconds"] = grace_period_s
        try:
            await self._call("delete", _core(namespace, "pods", name), "delete pods", options)
        except (NotFound, Conflict):
            return False  # gone, or already replaced by a pod with another UID
        return True

    async def patch_pod(self, namespace: str, name: str, operations: list[dict[str, Any]]) -> bool:
        """Apply a JSON patch to a pod; False when its ``test`` operations failed (422, never retried) or it is
        gone."""
        try:
            await self._call("patch", _core(namespace, "pods", name), "patch pods", operations, _JSON_PATCH)
        except NotFound:
            return False
        except KubeError as e:
            if e.code == 422:
                return False
            raise
        return True

    async def _create(self, url: str, what: str, manifest: dict[str, Any]) -> bool:
        """POST one object; False when one of that name exists already (409): creates are idempotent."""
        try:
            await self._call("post", url, what, manifest)
        except Conflict:
            return False
        return True

    # --- the job's Service and ConfigMap ----------------------------------------------------------
    async def create_service(self, namespace: str, manifest: dict[str, Any]) -> bool:
        return await self._create(_core(namespace, "services"), "create services", manifest)

    async def create_claim(self, namespace: str, manifest: dict[str, Any]) -> bool:
        """Create a PersistentVolumeClaim; False when it exists already (a replacement reuses it)."""
        return await self._create(_core(namespace, "persistentvolumeclaims"), "create persistentvolumeclaims", manifest)

    async def create_config_map(self, namespace: str, manifest: dict[str, Any]) -> bool:
        return await self._create(_core(namespace, "configmaps"), "create configmaps", manifest)

    async def patch_config_map(self, namespace: str, name: str, data: dict[str, str]) -> None:
        await self._call("patch", _core(namespace, "configmaps", name), "patch configmaps", {"data": data}, _MERGE)

    async def delete_object(self, namespace: str, plural: str, name: str, *, owner_uid: str | None = None) -> bool:
        """Delete a Service, ConfigMap, claim or pod by name; False when already gone. With ``owner_uid``, only
        an object that owner owns (a same-named object someone else made is left alone), and only that
        incarnation of it (a UID precondition)."""
        options: dict[str, Any] | None = None
        if owner_uid is not None:
            try:
                found = await self._call("get", _core(namespace, plural, name), f"get {plural}")
            except NotFound:
                return False
            meta = found.get("metadata") or {}
            if not any(ref.get("uid") == owner_uid for ref in meta.get("ownerReferences") or ()):
                self.logger.warning(f"not deleting {plural}/{name}: the TrainingJob does not own it")
                return False
            options = {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {"uid": meta.get("uid")}}
        try:
            await self._call("delete", _core(namespace, plural, name), f"delete {plural}", options)
        except (NotFound, Conflict):
            return False
        return True

    async def delete_job(self, namespace: str, name: str, uid: str) -> bool:
        """Delete this TrainingJob (that UID only: never a newer one of the same name); False when gone."""
        options = {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {"uid": uid},
                   "propagationPolicy": "Background"}
        try:
            await self._call("delete", _job_url(namespace, name), "delete trainingjobs", options)
        except (NotFound, Conflict):
            return False
        return True

    async def get_secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's data, decoded; None when there is no such Secret."""
        try:
            found = await self._call("get", _core(namespace, "secrets", name), "get secrets")
        except NotFound:
            return None
        data = found.get("data") or {}
        return {k: base64.b64decode(v).decode() for k, v in data.items()} | dict(found.get("stringData") or {})

    async def create_secret(self, namespace: str, manifest: dict[str, Any]) -> bool:
        return await self._create(_core(namespace, "secrets"), "create secrets", manifest)

    async def create_network_policy(self, namespace: str, manifest: dict[str, Any]) -> bool:
        return await self._create(f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies",
                                  "create networkpolicies", manifest)

    async def create_pod_group(self, namespace: str, manifest: dict[str, Any]) -> bool:
        """Create a Volcano or scheduler-plugins PodGroup; False when it exists already."""
        group, version = manifest["apiVersion"].split("/")
        return await self._create(f"/apis/{group}/{version}/namespaces/{namespace}/podgroups", "create podgroups",
                                  manifest)

    # --- Kueue -------------------------------------------------------------------------------------
    async def get_workload(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = await self._call("get", _kueue(namespace, "workloads", name), "get workloads")
        except NotFound:
            return None
        return found

    async def create_workload(self, namespace: str, manifest: dict[str, Any]) -> bool:
        return await self._create(_kueue(namespace, "workloads"), "create workloads", manifest)

    async def patch_workload_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        await self._call("patch", _kueue(namespace, "workloads", name, "status"), "patch workloads/status",
                         {"status": status}, _MERGE)

    async def get_resource_flavor(self, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = await self._call("get", f"/apis/kueue.x-k8s.io/v1beta1/resourceflavors/{name}",
                                                     "get resourceflavors")
        except NotFound:
            return None
        return found

    # --- the TrainingJob --------------------------------------------------------------------------
    async def patch_job_status(self, namespace: str, name: str, status_patch: dict[str, Any]) -> None:
        """Merge-patch the status subresource."""
        await self._call("patch", _job_url(namespace, name, "status"), "patch trainingjobs/status",
                         {"status": status_patch}, _MERGE)

    def total_requests(self) -> int:
        return sum(self.requests.values())
