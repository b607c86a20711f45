"""Deleting every TrainingJob before the operator goes (the chart's pre-delete hook: ``trainingjob uninstall-jobs``).

A TrainingJob carries the operator's finalizer until the operator has deleted its children; with the operator
uninstalled first, the jobs (and their namespaces) would wait for it forever. The hook runs while the operator
still runs: it deletes every TrainingJob and waits until the operator has let them go.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from trainingjob_operator.api.spec import GROUP, PLURAL, VERSION


def _api(kubeconfig_host: str | None = None) -> object:
    from kubernetes import client, config

    if kubeconfig_host is not None:  # tests: an emulated API server
        configuration = client.Configuration()
        configuration.host = kubeconfig_host
        return client.CustomObjectsApi(client.ApiClient(configuration))
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi()


def delete_all_jobs(namespaces: list[str] | None, timeout_s: float, say: Callable[[str], None],
                    host: str | None = None) -> int:
    """Delete every TrainingJob (of ``namespaces``, or all) and wait until they are gone; returns how many remain
    (0 on success)."""
    api = _api(host)

    def names() -> list[tuple[str, str]]:
        if namespaces:
            items = [i for ns in namespaces
                     for i in api.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]]  # type: ignore[attr-defined]
        else:
            items = api.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]  # type: ignore[attr-defined]
        return sorted((i["metadata"]["namespace"], i["metadata"]["name"]) for i in items)

    jobs = names()
    say(f"deleting {len(jobs)} TrainingJob(s)")
    for ns, name in jobs:
        api.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout_s
    while (left := names()) and time.monotonic() < deadline:
        time.sleep(1.0)
    for ns, name in left:
        say(f"still there after {timeout_s:g}s: {ns}/{name} (is the operator running? see the chart's README, "
            "'Uninstalling')")
    return len(left)
