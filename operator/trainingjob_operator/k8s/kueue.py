"""Kueue admission for TrainingJobs. Pure: what to create and what an admission means; the coordinator calls it.

Kueue admits the jobs it knows (batch Jobs, JobSets, Kubeflow jobs) through its job framework; a custom
resource of another operator takes part through a ``Workload`` that operator owns (Kueue's "custom job"
integration). The operator does that for a TrainingJob labelled ``kueue.x-k8s.io/queue-name``:

1. it creates a Workload ``trainingjob-<job>`` owned by the job (a controller ownerReference), one pod set per
   role with its replica count and the pod template the operator will create (resources, node selector,
   tolerations, priority class);
2. until the Workload is admitted (``Admitted=True`` with ``status.admission``) the job is held suspended: no
   pods, phase ``Suspended``, the ``Suspended`` condition says it waits for the queue;
3. once admitted, it creates the pods, adding each pod set's ResourceFlavor ``nodeLabels`` to their node
   selector (the flavor Kueue assigned);
4. if Kueue evicts the Workload (preemption, ``Evicted=True``, admission withdrawn) the job is suspended again
   with progress and checkpoints kept, and resumes where it stopped when admitted again;
5. when the job finishes the Workload gets ``Finished=True``, which releases its quota.

Why not Kueue's plain-pod integration (pod groups with scheduling gates): it treats a failed pod's replacement
as a new member of a fixed group and would gate the replacement pods partial recovery creates one at a time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from trainingjob_operator.api.spec import Role, TrainingJob

KUEUE_GROUP = "kueue.x-k8s.io"
KUEUE_VERSION = "v1beta1"
QUEUE_LABEL = f"{KUEUE_GROUP}/queue-name"
PRIORITY_LABEL = f"{KUEUE_GROUP}/priority-class"


def queue_name(job: TrainingJob) -> str | None:
    """The LocalQueue a job asks for (its ``kueue.x-k8s.io/queue-name`` label), or None: not queued."""
    return job.metadata.labels.get(QUEUE_LABEL) or None


def workload_name(job: str) -> str:
    return f"trainingjob-{job}"


def render_workload(job: TrainingJob, owner_reference: Mapping[str, Any],
                    pods: Mapping[Role, Mapping[str, Any]]) -> dict[str, Any]:
    """The Workload for a queued job; ``pods``: one rendered pod per role (rank 0), whose spec is the pod set's
    template (Kueue sums its container requests times the count)."""
    pod_sets = []
    for role in job.spec.roles():
        pod = pods[role]
        # Warm standby pods (recovery.standby) hold their requests too: they are part of the quota asked for.
        count = job.spec.replicas.count(role) + job.spec.recovery.standby.count(role)
        pod_sets.append({"name": role.value, "count": count,
                         "template": {"metadata": {"labels": dict(pod["metadata"].get("labels", {}))},
                                      "spec": pod["spec"]}})
    spec: dict[str, Any] = {"queueName": queue_name(job), "podSets": pod_sets}
    priority = job.metadata.labels.get(PRIORITY_LABEL)
    if priority:
        spec["priorityClassName"] = priority
        spec["priorityClassSource"] = "kueue.x-k8s.io/workloadpriorityclass"
    return {"apiVersion": f"{KUEUE_GROUP}/{KUEUE_VERSION}", "kind": "Workload",
            "metadata": {"name": workload_name(job.name), "namespace": job.namespace,
                         "labels": {"training.cpr.dev/job": job.name},
                         "ownerReferences": [dict(owner_reference)]},
            "spec": spec}


@dataclasses.dataclass(frozen=True)
class Admission:
    """What Kueue's admission says: whether the job may run, and the flavors per pod set."""

    admitted: bool
    flavors: Mapping[str, tuple[str, ...]]  # pod set (role) -> ResourceFlavor names assigned to it
    reason: str  # why not (for the Suspended condition), or "Admitted"


def _condition(status: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    return next((c for c in status.get("conditions") or () if c.get("type") == type_), None)


def admission_of(workload: Mapping[str, Any] | None, queue: str) -> Admission:
    """Admitted only with ``Admitted=True``, an ``admission`` and no ``Evicted=True`` (Kueue withdraws the
    admission after an eviction; until it has, the job must stop)."""
    if workload is None:
        return Admission(False, {}, f"waiting for Kueue admission (LocalQueue {queue}): no Workload yet")
    status = workload.get("status") or {}
    admitted = _condition(status, "Admitted")
    evicted = _condition(status, "Evicted")
    admission = status.get("admission")
    if evicted is not None and evicted.get("status") == "True":
        return Admission(False, {}, f"evicted by Kueue ({evicted.get('reason', 'Evicted')}: "
                                    f"{evicted.get('message', '')}); waiting to be admitted again")
    if admitted is None or admitted.get("status") != "True" or not admission:
        pending = _condition(status, "QuotaReserved")
        detail = f": {pending.get('message')}" if pending is not None and pending.get("message") else ""
        return Admission(False, {}, f"waiting for Kueue admission (LocalQueue {queue}){detail}")
    flavors = {str(a.get("name")): tuple(sorted(set((a.get("flavors") or {}).values())))
               for a in admission.get("podSetAssignments") or ()}
    return Admission(True, flavors, "Admitted")


def finished_conditions(conditions: list[dict[str, Any]], phase: str, message: str, at: str) -> list[dict[str, Any]]:
    """The Workload's conditions with ``Finished=True`` (which releases its quota), the others kept."""
    finished = {"type": "Finished", "status": "True", "reason": "Succeeded" if phase == "Succeeded" else "Failed",
                "message": message or f"TrainingJob {phase}", "lastTransitionTime": at}
    return [*(c for c in conditions if c.get("type") != "Finished"), finished]


def with_node_labels(pod: dict[str, Any], labels: Mapping[str, str]) -> dict[str, Any]:
    """The pod with a flavor's node labels added to its node selector (the pod's own keys win)."""
    if labels:
        pod["spec"]["nodeSelector"] = {**labels, **pod["spec"].get("nodeSelector", {})}
    return pod
