"""Warm standby pods on Kubernetes, pure parts: the pod the operator renders, the JSON patch that hands it a rank,
how the operator observes it, the standby's env contract and the spec rules for ``recovery.standby``."""

from __future__ import annotations

import copy
import re
from typing import Any

import jsonpatch
import pytest
from pydantic import ValidationError

from trainingjob_operator.api import parse_manifest
from trainingjob_operator.api.loading import ManifestError
from trainingjob_operator.api.spec import Role, TrainingJob, TrainingJobSpec
from trainingjob_operator.core import contract
from trainingjob_operator.k8s.observe import observe_pod, observe_standby
from trainingjob_operator.k8s.resources import (
    Owner,
    assignment_patch,
    is_standby_name,
    render_pod,
    render_standby_pod,
    replica_of,
    standby_of,
    standby_pod_name,
)
from trainingjob_operator.reconcile import ReplicaId, ReplicaPhase

JOB_LABEL, ROLE_LABEL, RANK_LABEL = "training.cpr.dev/job", "training.cpr.dev/role", "training.cpr.dev/rank"
STANDBY_LABEL = "training.cpr.dev/standby"
GENERATION, ASSIGNED_AT = "training.cpr.dev/generation", "training.cpr.dev/assigned-at"
SHARED = {"volume": {"kind": "sharedClaim", "claimName": "ckpt"}}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
SERVERS = [pytest.param(Role.EMBEDDING_SERVER, id="embedding-server"),
           pytest.param(Role.SYNC_SERVER, id="sync-server")]
ALL_ROLES = [*SERVERS, pytest.param(Role.TRAINER, id="trainer")]
CREATED = "2026-01-01T00:00:00Z"
CREATED_S = 1767225600.0
# As in test_resources.py (not imported: mypy would then check that module too).
OWNER = Owner(name="job", uid="uid-1")
REDIS = "redis://redis:6379/0"


def make_job(name: str = "job", **spec: Any) -> TrainingJob:
    return parse_manifest({"apiVersion": "training.cpr.dev/v1alpha1", "kind": "TrainingJob",
                           "metadata": {"name": name, "namespace": "ml"}, "spec": spec})


def env_of(pod: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in main_container(pod)["env"]}


def shared_job(name: str = "job", **spec: Any) -> TrainingJob:
    """A job whose server checkpoints are on one shared claim, with standbys of every role."""
    spec.setdefault("recovery", {"checkpoint": SHARED, "standby": {"trainer": 1, "embeddingServer": 1,
                                                                   "syncServer": 1}})
    return make_job(name, **spec)


def standby(job: TrainingJob | None = None, role: Role = Role.EMBEDDING_SERVER, suffix: str = "a1b2c3",
            **kw: Any) -> dict[str, Any]:
    return render_standby_pod(job or shared_job(), role, suffix, owner=OWNER, redis_url=REDIS, **kw)


def replica(job: TrainingJob | None = None, role: Role = Role.EMBEDDING_SERVER, **kw: Any) -> dict[str, Any]:
    return render_pod(job or shared_job(), ReplicaId(role, 0), owner=OWNER, redis_url=REDIS, generation=0, **kw)


def main_container(pod: dict[str, Any]) -> dict[str, Any]:
    (main,) = (c for c in pod["spec"]["containers"] if c["name"] == "dlrm")
    return dict(main)


def with_uid(pod: dict[str, Any], uid: str = "uid-standby") -> dict[str, Any]:
    pod = copy.deepcopy(pod)
    pod["metadata"]["uid"] = uid
    return pod


# --- names and labels ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ALL_ROLES)
def test_a_standby_pod_is_named_job_role_standby_suffix(role: Role) -> None:
    assert standby_pod_name("job", role, "a1b2c3") == f"job-{role.value}-standby-a1b2c3"
    assert standby(role=role)["metadata"]["name"] == f"job-{role.value}-standby-a1b2c3"
    assert standby(role=role)["metadata"]["namespace"] == "ml"


def test_is_standby_name_matches_only_that_jobs_standbys_of_that_role() -> None:
    assert is_standby_name("job", Role.TRAINER, "job-trainer-standby-a1b2c3")
    assert not is_standby_name("job", Role.TRAINER, "job-trainer-0")
    assert not is_standby_name("job", Role.TRAINER, "job-embedding-server-standby-a1b2c3")
    assert not is_standby_name("job", Role.TRAINER, "other-trainer-standby-a1b2c3")
    assert not is_standby_name("job", Role.EMBEDDING_SERVER, "job-embedding-server-1")


@pytest.mark.parametrize("role", ALL_ROLES)
def test_a_standby_pod_is_labelled_standby_with_its_job_and_role_and_no_rank(role: Role) -> None:
    labels = standby(role=role)["metadata"]["labels"]
    assert labels[JOB_LABEL] == "job" and labels[ROLE_LABEL] == role.value
    assert labels[STANDBY_LABEL] == "true"
    assert RANK_LABEL not in labels
    assert replica_of(labels) is None
    assert standby_of(labels) is role
    replica_labels = replica(role=role)["metadata"]["labels"]
    assert {k: v for k, v in labels.items() if k != STANDBY_LABEL} == {
        k: v for k, v in replica_labels.items() if k != RANK_LABEL}


@pytest.mark.parametrize("labels", [
    pytest.param({ROLE_LABEL: "trainer", RANK_LABEL: "0", STANDBY_LABEL: "true"}, id="already-assigned"),
    pytest.param({ROLE_LABEL: "trainer", RANK_LABEL: "0"}, id="replica"),
    pytest.param({ROLE_LABEL: "trainer", STANDBY_LABEL: "false"}, id="standby-false"),
    pytest.param({STANDBY_LABEL: "true"}, id="no-role"),
    pytest.param({ROLE_LABEL: "chef", STANDBY_LABEL: "true"}, id="unknown-role"),
    pytest.param(None, id="not-a-mapping"),
])
def test_standby_of_names_no_role_for_pods_that_are_not_waiting_standbys(labels: Any) -> None:
    assert standby_of(labels) is None


def test_standby_annotations_are_a_non_empty_map() -> None:
    annotations = standby()["metadata"]["annotations"]
    assert isinstance(annotations, dict) and annotations
    assert ASSIGNED_AT not in annotations


@pytest.mark.parametrize("role", ALL_ROLES)
def test_a_standby_hostname_is_a_dns_label_even_for_the_longest_job_name(role: Role) -> None:
    pod = standby(shared_job(name="j" * 40), role=role)
    hostname = pod["spec"]["hostname"]
    assert len(hostname) <= 63 and DNS_LABEL.match(hostname), hostname
    assert pod["metadata"]["name"] == f"{'j' * 40}-{role.value}-standby-a1b2c3"
    assert pod["spec"]["subdomain"] == "j" * 40


def test_standbys_of_one_job_get_distinct_hostnames() -> None:
    job = shared_job()
    hostnames = {standby(job, role, suffix)["spec"]["hostname"]
                 for role in (Role.EMBEDDING_SERVER, Role.TRAINER) for suffix in ("a1b2c3", "d4e5f6")}
    assert len(hostnames) == 4


# --- env -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("redis_secret", [None, "job-redis"], ids=["url-credentials", "redis-secret"])
@pytest.mark.parametrize("role", ALL_ROLES)
def test_a_standby_has_its_roles_replica_env_without_rank_or_generation_and_with_tj_standby(
        role: Role, redis_secret: str | None) -> None:
    job = shared_job(replicas={role_key(role): {"env": {"NCCL_DEBUG": "INFO", "TJ_STANDBY": "0"}}})
    pod = standby(job, role, redis_secret=redis_secret)
    env = env_of(pod)
    assert "TJ_RANK" not in env and "TJ_GENERATION" not in env
    assert env["TJ_STANDBY"] == "1"
    expected = {k: v for k, v in env_of(replica(job, role, redis_secret=redis_secret)).items()
                if k not in ("TJ_RANK", "TJ_GENERATION")}
    assert {k: v for k, v in env.items() if k != "TJ_STANDBY"} == expected
    assert expected["NCCL_DEBUG"] == "INFO"
    names = [e["name"] for e in main_container(pod)["env"]]
    assert len(names) == len(set(names)), names


def role_key(role: Role) -> str:
    head, *rest = role.value.split("-")
    return head + "".join(part.title() for part in rest)


@pytest.mark.parametrize("placement", [
    pytest.param(contract.pod_placement("job-spec", "spec.json"), id="pod"),
    pytest.param(None, id="process"),
])
@pytest.mark.parametrize("role", ALL_ROLES)
def test_standby_env_is_the_rank_0_replica_env_less_rank_and_generation_plus_tj_standby(
        role: Role, placement: contract.Placement | None) -> None:
    job = shared_job(replicas={role_key(role): {"env": {"EXTRA": "x", "TJ_STANDBY": "0", "TJ_RANK": "9"}}})
    placement = placement or contract.process_placement(job, "/tmp/ckpt")
    env = contract.standby_env(job, role, redis_url=REDIS, placement=placement)
    replica_env = contract.replica_env(job, ReplicaId(role, 0), redis_url=REDIS, generation=0, placement=placement)
    assert env == [*((k, v) for k, v in replica_env if k not in ("TJ_RANK", "TJ_GENERATION")), ("TJ_STANDBY", "1")]
    assert ("EXTRA", "x") in env
    assert [k for k, _ in env].count("TJ_STANDBY") == 1


# --- the rest of the pod is the replica's ---------------------------------------------------------------------


@pytest.mark.parametrize("role", ALL_ROLES)
def test_a_standby_pod_is_its_roles_replica_pod_but_for_name_labels_annotations_hostname_and_env(role: Role) -> None:
    job = shared_job(image="img:spec", replicas={role_key(role): {
        "resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "4Gi"}},
        "nodeSelector": {"pool": "warm"}}})
    pod, rank0 = standby(job, role), replica(job, role)
    assert pod["metadata"]["ownerReferences"] == rank0["metadata"]["ownerReferences"]
    spec, expected = dict(pod["spec"]), dict(rank0["spec"])
    spec.pop("hostname"), expected.pop("hostname")
    spec["containers"] = [{k: v for k, v in c.items() if k != "env"} for c in spec["containers"]]
    expected["containers"] = [{k: v for k, v in c.items() if k != "env"} for c in expected["containers"]]
    assert spec == expected


@pytest.mark.parametrize("role", SERVERS)
def test_a_server_standby_serves_grpc_with_probes_and_mounts_the_shared_claim(role: Role) -> None:
    job = shared_job(image="img:spec", replicas={role_key(role): {"resources": {"requests": {"cpu": "2"}}}})
    pod, rank0 = standby(job, role), replica(job, role)
    main, expected = main_container(pod), main_container(rank0)
    assert main["ports"] == [{"name": "grpc", "containerPort": 50051, "protocol": "TCP"}]
    assert {k for k in main if k.endswith("Probe")} == {"startupProbe", "readinessProbe", "livenessProbe"}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert main[probe] == expected[probe]
        assert main[probe]["grpc"] == {"port": 50051, "service": ""}
    assert {"name": "checkpoints", "mountPath": "/checkpoints"} in main["volumeMounts"]
    assert {"name": "checkpoints", "persistentVolumeClaim": {"claimName": "ckpt"}} in pod["spec"]["volumes"]
    assert main["image"] == expected["image"] == "img:spec"
    assert main["resources"] == expected["resources"] == {"requests": {"cpu": "2"}}
    assert main["securityContext"] == expected["securityContext"]
    assert pod["spec"]["securityContext"] == rank0["spec"]["securityContext"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


# --- the takeover's JSON patch -------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ALL_ROLES)
def test_the_assignment_patch_turns_the_standby_into_the_replica(role: Role) -> None:
    pod = with_uid(standby(role=role))
    assigned = jsonpatch.apply_patch(pod, assignment_patch("uid-standby", 2, 7, 1767225700.1234))
    meta = assigned["metadata"]
    assert meta["name"] == pod["metadata"]["name"]
    assert meta["labels"][RANK_LABEL] == "2"
    assert STANDBY_LABEL not in meta["labels"]
    assert meta["annotations"][GENERATION] == "7"
    assert float(meta["annotations"][ASSIGNED_AT]) == pytest.approx(1767225700.123)
    assert replica_of(meta["labels"]) == ReplicaId(role, 2)
    assert standby_of(meta["labels"]) is None
    assert assigned["spec"] == pod["spec"]


def test_the_assignment_patch_fails_on_another_incarnation() -> None:
    pod = with_uid(standby(), "uid-other")
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        jsonpatch.apply_patch(pod, assignment_patch("uid-standby", 0, 1, 100.0))


def test_the_assignment_patch_fails_on_a_pod_already_assigned() -> None:
    pod = with_uid(standby())
    assigned = jsonpatch.apply_patch(pod, assignment_patch("uid-standby", 0, 1, 100.0))
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        jsonpatch.apply_patch(assigned, assignment_patch("uid-standby", 1, 1, 200.0))


def test_the_assignment_patch_fails_on_a_replica_pod_with_that_uid() -> None:
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        jsonpatch.apply_patch(with_uid(replica()), assignment_patch("uid-standby", 0, 1, 100.0))


# --- observing standbys and assigned standbys ----------------------------------------------------------------


def running(pod: dict[str, Any], started: str = "2026-01-01T00:00:10Z") -> dict[str, Any]:
    pod = copy.deepcopy(pod)
    pod["metadata"]["creationTimestamp"] = CREATED
    pod["status"] = {"phase": "Running", "startTime": CREATED,
                     "containerStatuses": [{"name": "dlrm", "state": {"running": {"startedAt": started}}}]}
    return pod


@pytest.mark.parametrize(("phase", "expected"), [
    pytest.param(None, ReplicaPhase.PENDING, id="no-status"),
    pytest.param("Pending", ReplicaPhase.PENDING, id="pending"),
    pytest.param("Running", ReplicaPhase.RUNNING, id="running"),
    pytest.param("Unknown", ReplicaPhase.RUNNING, id="node-unreachable"),
    pytest.param("Succeeded", ReplicaPhase.SUCCEEDED, id="succeeded"),
    pytest.param("Failed", ReplicaPhase.FAILED, id="failed"),
])
def test_observe_standby_reads_name_role_uid_phase_and_creation(phase: str | None, expected: ReplicaPhase) -> None:
    pod = with_uid(standby(role=Role.TRAINER))
    pod["metadata"]["creationTimestamp"] = CREATED
    if phase:
        pod["status"] = {"phase": phase}
    view = observe_standby(pod)
    assert view is not None
    assert (view.name, view.role, view.instance, view.phase, view.created_at, view.deleting) == (
        "job-trainer-standby-a1b2c3", Role.TRAINER, "uid-standby", expected, CREATED_S, False)


def test_observe_standby_sees_a_deleting_standby() -> None:
    pod = with_uid(standby())
    pod["metadata"]["deletionTimestamp"] = CREATED
    view = observe_standby(pod)
    assert view is not None and view.deleting


def test_a_waiting_standby_is_no_replica_and_a_replica_or_assigned_standby_is_no_standby() -> None:
    waiting = running(with_uid(standby()))
    assert observe_pod(waiting) is None
    assert observe_standby(waiting) is not None
    assert observe_standby(running(with_uid(replica()))) is None
    assigned = jsonpatch.apply_patch(waiting, assignment_patch("uid-standby", 1, 3, CREATED_S + 500))
    assert observe_standby(assigned) is None
    assert observe_pod(assigned) is not None


def test_an_assigned_standbys_startup_budget_starts_at_its_assignment_and_its_handle_is_its_pod_name() -> None:
    waiting = running(with_uid(standby()))
    assigned = jsonpatch.apply_patch(waiting, assignment_patch("uid-standby", 1, 3, CREATED_S + 500.25))
    observed = observe_pod(assigned)
    assert observed is not None
    assert observed.id == ReplicaId(Role.EMBEDDING_SERVER, 1)
    assert observed.phase is ReplicaPhase.RUNNING
    assert observed.instance == "uid-standby"
    assert observed.started_at == pytest.approx(CREATED_S + 500.25)  # not the container's start (+10 s)
    assert observed.handle == "job-embedding-server-standby-a1b2c3"


def test_an_assigned_at_before_the_container_start_leaves_the_start() -> None:
    pod = running(with_uid(replica()), started="2026-01-01T00:01:40Z")
    pod["metadata"]["annotations"][ASSIGNED_AT] = f"{CREATED_S + 5:.3f}"
    observed = observe_pod(pod)
    assert observed is not None and observed.started_at == CREATED_S + 100


@pytest.mark.parametrize("value", ["", "soon", None], ids=["empty", "not-a-number", "null"])
def test_a_malformed_assigned_at_is_ignored(value: str | None) -> None:
    pod = running(with_uid(replica()))
    pod["metadata"]["annotations"][ASSIGNED_AT] = value
    observed = observe_pod(pod)
    assert observed is not None and observed.started_at == CREATED_S + 10


def test_a_replicas_handle_is_its_pod_name() -> None:
    observed = observe_pod(running(with_uid(replica(role=Role.TRAINER))))
    assert observed is not None and observed.handle == "job-trainer-0"


# --- recovery.standby in the spec ----------------------------------------------------------------------------


def spec_of(standby: dict[str, int], checkpoint: dict[str, Any] | None = None, **spec: Any) -> TrainingJobSpec:
    recovery: dict[str, Any] = {"standby": standby}
    if checkpoint is not None:
        recovery["checkpoint"] = checkpoint
    return TrainingJobSpec.model_validate({"recovery": recovery, **spec})


@pytest.mark.parametrize("checkpoint", [
    pytest.param(None, id="default-claim-per-replica"),
    pytest.param({"volume": {"kind": "claimPerReplica", "size": "1Gi"}}, id="explicit-claim-per-replica"),
])
@pytest.mark.parametrize(("standby", "field"), [
    pytest.param({"embeddingServer": 1}, "recovery.standby.embeddingServer", id="embedding-server"),
    pytest.param({"syncServer": 1}, "recovery.standby.syncServer", id="sync-server"),
    pytest.param({"trainer": 2, "syncServer": 1}, "recovery.standby.syncServer", id="sync-server-with-trainers"),
])
def test_server_standbys_are_refused_with_a_claim_per_replica(
        standby: dict[str, int], field: str, checkpoint: dict[str, Any] | None) -> None:
    with pytest.raises(ValidationError, match=re.escape(field)) as caught:
        spec_of(standby, checkpoint)
    assert "sharedClaim" in str(caught.value) and "objectStore" in str(caught.value)


def test_a_refused_server_standby_names_its_field_in_the_manifest_error() -> None:
    with pytest.raises(ManifestError, match=re.escape("recovery.standby.embeddingServer")):
        parse_manifest({"apiVersion": "training.cpr.dev/v1alpha1", "kind": "TrainingJob",
                        "metadata": {"name": "job"}, "spec": {"recovery": {"standby": {"embeddingServer": 1}}}})


@pytest.mark.parametrize("checkpoint", [
    pytest.param(SHARED, id="shared-claim"),
    pytest.param({"storage": "pvc:ckpt"}, id="pvc-shorthand"),
    pytest.param({"objectStore": {"url": "s3://bucket/prefix"}}, id="object-store"),
    pytest.param({"storage": "s3://bucket/prefix"}, id="s3-shorthand"),
    pytest.param({"volume": {"kind": "emptyDir"}}, id="empty-dir"),
])
def test_server_standbys_are_allowed_with_storage_every_rank_can_reach(checkpoint: dict[str, Any]) -> None:
    spec = spec_of({"embeddingServer": 2, "syncServer": 1, "trainer": 1}, checkpoint)
    standby = spec.recovery.standby
    assert [standby.count(r) for r in (Role.EMBEDDING_SERVER, Role.SYNC_SERVER, Role.TRAINER)] == [2, 1, 1]


@pytest.mark.parametrize("checkpoint", [
    pytest.param(None, id="claim-per-replica"),
    pytest.param(SHARED, id="shared-claim"),
    pytest.param({"objectStore": {"url": "s3://bucket/prefix"}}, id="object-store"),
    pytest.param({"volume": {"kind": "emptyDir"}}, id="empty-dir"),
])
def test_trainer_standbys_are_allowed_with_any_storage(checkpoint: dict[str, Any] | None) -> None:
    assert spec_of({"trainer": 3}, checkpoint).recovery.standby.count(Role.TRAINER) == 3


@pytest.mark.parametrize("standby", [{"trainer": 1}, {"embeddingServer": 1}, {"syncServer": 1}],
                         ids=["trainer", "embedding-server", "sync-server"])
def test_a_pytorch_workload_refuses_any_standby(standby: dict[str, int]) -> None:
    with pytest.raises(ValidationError, match=re.escape("recovery.standby")):
        spec_of(standby, SHARED, workload="pytorch", pytorch={"command": ["python", "train.py"]})
    spec_of({}, SHARED, workload="pytorch", pytorch={"command": ["python", "train.py"]})


@pytest.mark.parametrize("key", ["trainer", "embeddingServer", "syncServer"])
def test_a_negative_standby_count_is_refused(key: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest({"apiVersion": "training.cpr.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "j"},
                        "spec": {"recovery": {"checkpoint": SHARED, "standby": {key: -1}}}})
    assert caught.value.field == f"spec.recovery.standby.{key}"
    assert "greater than or equal to 0" in caught.value.expectation


def test_standbys_default_to_none_of_any_role() -> None:
    standby = TrainingJobSpec.model_validate({}).recovery.standby
    assert [standby.count(r) for r in Role] == [0] * len(Role)


def test_observe_standby_reads_why_a_pending_standby_cannot_start() -> None:
    pod = with_uid(standby())
    pod["status"] = {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes are available"}]}
    view = observe_standby(pod)
    assert view is not None and (view.waiting_reason, view.waiting_message) == ("Unschedulable",
                                                                                "0/3 nodes are available")
    pod["status"] = {"phase": "Pending", "containerStatuses": [
        {"name": "dlrm", "state": {"waiting": {"reason": "ContainerCreating"}}}]}
    view = observe_standby(pod)
    assert view is not None and view.waiting_reason is None  # starting, not stuck
