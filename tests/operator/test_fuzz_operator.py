"""Fuzzed TrainingJobs against the real operator (issue #10): every broken one is marked Failed with a condition
naming the broken field, nothing is created for it, and the operator neither crashes nor hot-loops."""

from __future__ import annotations

import time

from tests.operator.conftest import NAMESPACE, Cluster, Operator, eventually, quietly
from tests.support.fuzz import broken_manifest, names_the_place
from trainingjob_operator.api import ManifestError, parse_manifest

SEEDS = range(60)


async def test_broken_jobs_fail_with_the_field_named_and_the_operator_stays_well(cluster: Cluster,
                                                                                 operator: Operator) -> None:
    cases = {}
    for seed in SEEDS:
        document, path, how = broken_manifest(seed)
        if path[0] in ("metadata", "apiVersion", "kind"):
            continue  # the API server itself decides those (a name, a kind): not the operator's to judge
        name = f"fuzz-{seed}"
        document["metadata"] = {"name": name, "namespace": NAMESPACE}
        try:
            parse_manifest(document)
            valid = True
        except ManifestError:
            valid = False
        cases[name] = (path, how, valid)
        await cluster.create_job(document)
    assert sum(not valid for _, _, valid in cases.values()) >= 30, "most mutations break the manifest"

    def settled() -> bool:
        return all((cluster.phase(name) is not None) for name in cases)

    await eventually(settled, timeout=60, what="every job has a phase")
    for name, (path, how, valid) in cases.items():
        if valid:
            continue
        condition = cluster.condition(name, "Failed")
        assert condition is not None and condition["reason"] == "InvalidSpec", (name, path, how, cluster.status(name))
        field = condition["message"].split(": ", 1)[0]
        assert names_the_place(field, path), (how, path, condition["message"])
        assert "\n" not in condition["message"]
        assert not cluster.pods(name), f"{name}: pods created for an invalid job"

    # No hot loop: once every invalid job is reported, nobody writes its status again.
    since = time.monotonic()
    await quietly(3.0)
    invalid = {name for name, (_, _, valid) in cases.items() if not valid}
    rewrites = [e for e in cluster.requests("PATCH", "trainingjobs", since) if e.name in invalid]
    assert rewrites == [], rewrites[:5]
    assert operator.thread is not None and operator.thread.is_alive() and operator.error is None
