"""The pure builders of pods, the Service and the ConfigMap."""

from __future__ import annotations

import json
from typing import Any

import pytest

from trainingjob_operator.api import parse_manifest
from trainingjob_operator.api.loading import ManifestError
from trainingjob_operator.api.spec import Role, TrainingJob, spec_from_json
from trainingjob_operator.k8s import resources
from trainingjob_operator.k8s.resources import (
    Owner,
    admit,
    checkpoint_durability,
    render_checkpoint_claims,
    render_config_map,
    render_pod,
    render_service,
)
from trainingjob_operator.reconcile import ReplicaId

OWNER = Owner(name="job", uid="uid-1")
REDIS = "redis://redis:6379/0"


def make_job(**spec: Any) -> TrainingJob:
    return parse_manifest({"apiVersion": "training.cpr.dev/v1alpha1", "kind": "TrainingJob",
                           "metadata": {"name": "job", "namespace": "ml"}, "spec": spec})


def env_of(pod: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in pod["spec"]["containers"][0]["env"]}


def test_pod_name_labels_and_owner() -> None:
    pod = render_pod(make_job(), ReplicaId(Role.EMBEDDING_SERVER, 1), owner=OWNER, redis_url=REDIS, generation=3)
    meta = pod["metadata"]
    assert meta["name"] == "job-embedding-server-1" and meta["namespace"] == "ml"
    assert meta["labels"] == {
        "training.cpr.dev/job": "job", "training.cpr.dev/role": "embedding-server", "training.cpr.dev/rank": "1",
        "app.kubernetes.io/name": "dlrm-trainer", "app.kubernetes.io/instance": "job",
        "app.kubernetes.io/component": "embedding-server", "app.kubernetes.io/part-of": "trainingjob",
        "app.kubernetes.io/managed-by": "trainingjob-operator"}
    assert meta["ownerReferences"] == [{"apiVersion": "training.cpr.dev/v1alpha1", "kind": "TrainingJob",
                                        "name": "job", "uid": "uid-1", "controller": True,
                                        "blockOwnerDeletion": True}]
    assert meta["annotations"] == {"training.cpr.dev/generation": "3"}
    assert pod["spec"]["restartPolicy"] == "Never"
    assert (pod["spec"]["hostname"], pod["spec"]["subdomain"]) == ("job-embedding-server-1", "job")


def test_pod_env_contract() -> None:
    pod = render_pod(make_job(), ReplicaId(Role.TRAINER, 0), owner=OWNER, redis_url=REDIS, generation=2)
    assert env_of(pod) == {
        "TJ_JOB": "job", "TJ_NAMESPACE": "ml", "TJ_ROLE": "trainer", "TJ_RANK": "0", "TJ_REDIS_URL": REDIS,
        "TJ_SPEC": {"configMapKeyRef": {"name": "job-spec", "key": "spec.json"}},
        "POD_IP": {"fieldRef": {"fieldPath": "status.podIP"}},
        "TJ_INSTANCE": {"fieldRef": {"fieldPath": "metadata.uid"}},
        "TJ_GENERATION": "2", "TJ_CHECKPOINT_DIR": "/checkpoints", "TJ_GRPC_PORT": "50051",
    }
    assert pod["spec"]["containers"][0]["command"] == ["python", "-m", "dlrm_trainer"]


def test_role_settings_pass_through_but_never_override_the_contract() -> None:
    job = make_job(image="img:spec", replicas={"trainer": {
        "replicas": 1, "image": "img:trainer", "env": {"NCCL_DEBUG": "INFO", "TJ_RANK": "7"},
        "resources": {"requests": {"cpu": "4", "nvidia.com/gpu": 1}, "limits": {"memory": "8Gi"}},
        "nodeSelector": {"pool": "gpu"}, "tolerations": [{"key": "gpu", "operator": "Exists"}]}})
    pod = render_pod(job, ReplicaId(Role.TRAINER, 0), owner=OWNER, redis_url=REDIS, generation=0)
    container = pod["spec"]["containers"][0]
    assert container["image"] == "img:trainer"
    assert env_of(pod)["NCCL_DEBUG"] == "INFO" and env_of(pod)["TJ_RANK"] == "0"
    assert container["resources"] == {"requests": {"cpu": "4", "nvidia.com/gpu": 1},
                                      "limits": {"memory": "8Gi", "nvidia.com/gpu": 1}}
    assert pod["spec"]["nodeSelector"] == {"pool": "gpu"}
    assert pod["spec"]["tolerations"] == [{"key": "gpu", "operator": "Exists"}]
    server = render_pod(job, ReplicaId(Role.SYNC_SERVER, 0), owner=OWNER, redis_url=REDIS, generation=0)
    assert server["spec"]["containers"][0]["image"] == "img:spec"


@pytest.mark.parametrize(("role", "probed"), [
    pytest.param(Role.EMBEDDING_SERVER, True, id="embedding-server"),
    pytest.param(Role.SYNC_SERVER, True, id="sync-server"),
    pytest.param(Role.TRAINER, False, id="trainer"),
])
def test_servers_have_grpc_health_probes(role: Role, probed: bool) -> None:
    container = render_pod(make_job(), ReplicaId(role, 0), owner=OWNER, redis_url=REDIS,
                           generation=0)["spec"]["containers"][0]
    probes = {k for k in container if k.endswith("Probe")}
    if not probed:
        assert probes == set() and "ports" not in container
        return
    assert probes == {"startupProbe", "readinessProbe", "livenessProbe"}
    for probe in probes:
        assert container[probe]["grpc"] == {"port": 50051, "service": ""}
    assert container["ports"] == [{"name": "grpc", "containerPort": 50051, "protocol": "TCP"}]


TMP = {"name": "tmp", "emptyDir": {}}
TMP_MOUNT = {"name": "tmp", "mountPath": "/tmp"}


@pytest.mark.parametrize(("checkpoint", "volume"), [
    pytest.param({}, {"name": "checkpoints", "persistentVolumeClaim": {"claimName": "checkpoints-job-{pod}"}},
                 id="default-claim-per-replica"),
    pytest.param({"storage": "pvc:ckpt-claim"},
                 {"name": "checkpoints", "persistentVolumeClaim": {"claimName": "ckpt-claim"}}, id="pvc-shorthand"),
    pytest.param({"volume": {"kind": "sharedClaim", "claimName": "rwx"}},
                 {"name": "checkpoints", "persistentVolumeClaim": {"claimName": "rwx"}}, id="shared-claim"),
    pytest.param({"volume": {"kind": "emptyDir"}}, {"name": "checkpoints", "emptyDir": {}}, id="explicit-emptydir"),
])
@pytest.mark.parametrize("server", [ReplicaId(Role.EMBEDDING_SERVER, 1), ReplicaId(Role.SYNC_SERVER, 0)],
                         ids=["embedding-server", "sync-server"])
def test_servers_mount_their_checkpoint_volume(checkpoint: dict[str, Any], volume: dict[str, Any],
                                               server: ReplicaId) -> None:
    job = make_job(recovery={"checkpoint": checkpoint})
    pod = render_pod(job, server, owner=OWNER, redis_url=REDIS, generation=0)
    expected = json.loads(json.dumps(volume).replace("{pod}", f"{server.role.value}-{server.rank}"))
    assert pod["spec"]["volumes"] == [TMP, expected]
    assert pod["spec"]["containers"][0]["volumeMounts"] == [TMP_MOUNT, {"name": "checkpoints",
                                                                        "mountPath": "/checkpoints"}]
    assert env_of(pod)["TJ_CHECKPOINT_DIR"] == "/checkpoints"
    trainer = render_pod(job, ReplicaId(Role.TRAINER, 0), owner=OWNER, redis_url=REDIS, generation=0)
    assert trainer["spec"]["volumes"] == [TMP]  # only the writable /tmp of a read-only root filesystem


def test_one_owned_claim_per_server_rank_by_default() -> None:
    job = make_job(replicas={"embeddingServer": {"replicas": 3}},
                   recovery={"checkpoint": {"volume": {"size": "50Gi", "storageClassName": "fast"}}})
    claims = render_checkpoint_claims(job, owner=OWNER)
    assert [c["metadata"]["name"] for c in claims] == [
        "checkpoints-job-embedding-server-0", "checkpoints-job-embedding-server-1",
        "checkpoints-job-embedding-server-2", "checkpoints-job-sync-server-0"]
    for claim in claims:
        assert claim["spec"] == {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "50Gi"}},
                                 "storageClassName": "fast"}
        assert claim["metadata"]["ownerReferences"][0]["uid"] == "uid-1"  # deleted with the job
    retained = render_checkpoint_claims(make_job(recovery={"checkpoint": {"volume": {"retainPolicy": "Retain"}}}),
                                        owner=OWNER)
    assert retained and all("ownerReferences" not in c["metadata"] for c in retained)
    for other in ({"kind": "emptyDir"}, {"kind": "sharedClaim", "claimName": "rwx"}):
        assert render_checkpoint_claims(make_job(recovery={"checkpoint": {"volume": other}}), owner=OWNER) == []


@pytest.mark.parametrize("checkpoint", [
    pytest.param({"objectStore": {"url": "s3://ckpt/team-a/", "endpoint": "http://minio.minio:9000",
                                  "region": "eu-west-1", "credentialsSecret": "s3-creds"}}, id="object-store"),
    pytest.param({"storage": "s3://ckpt/team-a"}, id="s3-shorthand"),
])
def test_object_store_checkpoints_need_no_volume_and_keep_credentials_in_the_secret(checkpoint: dict[str, Any]) -> None:
    job = make_job(recovery={"checkpoint": checkpoint})
    for server in (ReplicaId(Role.EMBEDDING_SERVER, 1), ReplicaId(Role.SYNC_SERVER, 0)):
        pod = render_pod(job, server, owner=OWNER, redis_url=REDIS, generation=0)
        assert pod["spec"]["volumes"] == [TMP] and pod["spec"]["containers"][0]["volumeMounts"] == [TMP_MOUNT]
        env = env_of(pod)
        assert env["TJ_CHECKPOINT_DIR"] == "s3://ckpt/team-a/ml/job"  # <url>/<namespace>/<job>: jobs never mix
        if "objectStore" in checkpoint:
            assert (env["AWS_ENDPOINT_URL"], env["AWS_DEFAULT_REGION"]) == ("http://minio.minio:9000", "eu-west-1")
            assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID"}}
            assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "s3-creds",
                                                                     "key": "AWS_SECRET_ACCESS_KEY"}}
        else:  # no endpoint, region or Secret: AWS S3 with the pod's own identity (IRSA, workload identity)
            assert not any(name.startswith("AWS_") for name in env)
    assert render_checkpoint_claims(job, owner=OWNER) == []
    assert checkpoint_durability(job) == (True, "ObjectStore", "checkpoints in s3://ckpt/team-a/ml/job")


def test_role_env_cannot_redirect_object_store_credentials() -> None:
    job = make_job(recovery={"checkpoint": {"objectStore": {"url": "s3://ckpt", "credentialsSecret": "s3-creds"}}},
                   replicas={"embeddingServer": {"env": {"AWS_ACCESS_KEY_ID": "mine", "OTHER": "1"}}})
    env = env_of(render_pod(job, ReplicaId(Role.EMBEDDING_SERVER, 0), owner=OWNER, redis_url=REDIS, generation=0))
    assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID"}}
    assert env["OTHER"] == "1"


@pytest.mark.parametrize(("checkpoint", "error"), [
    pytest.param({"storage": "s3://Bad_Bucket"}, "storage must be s3://<bucket>", id="bad-bucket"),
    pytest.param({"objectStore": {"url": "gs://x/y"}}, "must be s3://<bucket>", id="not-s3"),
    pytest.param({"objectStore": {"url": "s3://ckpt"}, "volume": {"kind": "emptyDir"}},
                 "objectStore and volume both say where checkpoints live", id="two-places"),
    pytest.param({"objectStore": {"url": "s3://ckpt", "endpoint": "minio:9000"}}, "endpoint", id="endpoint-scheme"),
])
def test_object_store_mistakes_are_named(checkpoint: dict[str, Any], error: str) -> None:
    with pytest.raises(ManifestError, match=error):
        make_job(recovery={"checkpoint": checkpoint})


@pytest.mark.parametrize(("volume", "durable", "reason"), [
    pytest.param({}, True, "ClaimPerReplica", id="default"),
    pytest.param({"kind": "sharedClaim", "claimName": "rwx"}, True, "SharedClaim", id="shared"),
    pytest.param({"kind": "emptyDir"}, False, "EmptyDir", id="emptydir-warns"),
])
def test_checkpoint_durability_condition(volume: dict[str, Any], durable: bool, reason: str) -> None:
    got = checkpoint_durability(make_job(recovery={"checkpoint": {"volume": volume}}))
    assert got[:2] == (durable, reason)
    if not durable:
        assert "loses every update" in got[2]


def test_pods_run_as_the_images_non_root_user_and_can_write_their_volume() -> None:
    for rid in (ReplicaId(Role.EMBEDDING_SERVER, 0), ReplicaId(Role.TRAINER, 0)):
        pod = render_pod(make_job(), rid, owner=OWNER, redis_url=REDIS, generation=0)
        assert pod["spec"]["securityContext"] | {} == {
            "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
            "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"}}
        assert pod["spec"]["containers"][0]["securityContext"] == {
            "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": True}
        assert pod["spec"]["automountServiceAccountToken"] is False


@pytest.mark.parametrize(("timeout", "threshold"), [(600.0, 120), (1800.0, 360), (12.0, 3)])
def test_the_startup_probe_allows_the_spec_startup_timeout(timeout: float, threshold: int) -> None:
    job = make_job(recovery={"startupTimeoutSeconds": max(timeout, 10.0)})
    probe = render_pod(job, ReplicaId(Role.EMBEDDING_SERVER, 0), owner=OWNER, redis_url=REDIS,
                       generation=0)["spec"]["containers"][0]["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= timeout
    assert probe["failureThreshold"] == threshold


def test_headless_service_selects_the_jobs_pods() -> None:
    service = render_service(make_job(), owner=OWNER)
    assert service["metadata"]["name"] == "job"
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"training.cpr.dev/job": "job"}
    assert service["metadata"]["ownerReferences"][0]["uid"] == "uid-1"


def test_config_map_holds_the_spec_json() -> None:
    job = make_job(replicas={"trainer": {"replicas": 5}})
    config_map = render_config_map(job, owner=OWNER)
    assert config_map["metadata"]["name"] == "job-spec"
    assert spec_from_json(config_map["data"]["spec.json"]) == job.spec


def test_redis_url_comes_from_the_spec_else_the_operator_default() -> None:
    body = {"apiVersion": "training.cpr.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": "job", "namespace": "ml", "uid": "u"}, "spec": {}, "status": {"phase": "?"}}
    assert admit(body, REDIS)[1] == REDIS
    own = {**body, "spec": {"redis": {"url": "redis://own:6379/1"}}}
    assert admit(own, REDIS)[1] == "redis://own:6379/1"
    with pytest.raises(ManifestError) as raised:
        admit(body, None)
    assert raised.value.field == "spec.redis.url"


def test_replica_of_reads_labels_and_rejects_strangers() -> None:
    assert resources.replica_of({"training.cpr.dev/role": "trainer", "training.cpr.dev/rank": "3"}) == \
        ReplicaId(Role.TRAINER, 3)
    assert resources.replica_of({"training.cpr.dev/role": "chef", "training.cpr.dev/rank": "3"}) is None
    assert resources.replica_of({"training.cpr.dev/role": "trainer"}) is None


# --- the per-role pod template -------------------------------------------------------------------

GPU_TRAINERS = {
    "metadata": {"labels": {"team": "ranking", "kueue.x-k8s.io/queue-name": "gpu"},
                 "annotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"}},
    "spec": {
        "volumes": [{"name": "criteo", "persistentVolumeClaim": {"claimName": "criteo-1tb", "readOnly": True}}],
        "containers": [{"name": "dlrm", "volumeMounts": [{"name": "criteo", "mountPath": "/data", "readOnly": True}],
                        "envFrom": [{"secretRef": {"name": "wandb"}}],
                        "env": [{"name": "NCCL_DEBUG", "value": "WARN"},
                                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]},
                       {"name": "exporter", "image": "dcgm-exporter:3", "ports": [{"containerPort": 9400}]}],
        "imagePullSecrets": [{"name": "registry"}],
        "serviceAccountName": "trainer",
        "priorityClassName": "training-high",
        "schedulerName": "volcano",
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "nvidia.com/gpu.product", "operator": "In", "values": ["H100"]}]}]}}},
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                       "whenUnsatisfiable": "ScheduleAnyway",
                                       "labelSelector": {"matchLabels": {"training.cpr.dev/role": "trainer"}}}],
        "nodeSelector": {"pool": "gpu"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "securityContext": {"runAsUser": 2000, "supplementalGroups": [3000]},
    },
}


def test_a_role_template_merges_under_the_operators_fields() -> None:
    job = make_job(replicas={"trainer": {"template": GPU_TRAINERS, "nodeSelector": {"pool": "mine"},
                                         "resources": {"limits": {"nvidia.com/gpu": 1}}}},
                   data={"source": "criteo", "path": "/data/train"})
    pod = render_pod(job, ReplicaId(Role.TRAINER, 1), owner=OWNER, redis_url=REDIS, generation=0)
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["labels"]["team"] == "ranking" and meta["labels"]["kueue.x-k8s.io/queue-name"] == "gpu"
    assert meta["labels"]["training.cpr.dev/rank"] == "1"  # ours are all still there
    assert meta["annotations"] == {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false",
                                   "training.cpr.dev/generation": "0"}
    main, sidecar = spec["containers"]
    assert main["name"] == "dlrm" and sidecar["name"] == "exporter"
    assert main["volumeMounts"] == [TMP_MOUNT, {"name": "criteo", "mountPath": "/data", "readOnly": True}]
    assert spec["volumes"] == [TMP, GPU_TRAINERS["spec"]["volumes"][0]]
    assert main["envFrom"] == [{"secretRef": {"name": "wandb"}}]
    env = env_of(pod)
    assert env["NCCL_DEBUG"] == "WARN" and env["NODE"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["TJ_ROLE"] == "trainer" and env["TJ_RANK"] == "1"  # the contract is untouched
    assert main["resources"] == {"limits": {"nvidia.com/gpu": 1}}
    assert main["command"] == ["python", "-m", "dlrm_trainer"]
    for key in ("imagePullSecrets", "serviceAccountName", "priorityClassName", "schedulerName", "affinity",
                "topologySpreadConstraints"):
        assert spec[key] == GPU_TRAINERS["spec"][key], key
    assert spec["nodeSelector"] == {"pool": "mine"}  # the role's own nodeSelector wins on the same key
    assert spec["tolerations"] == GPU_TRAINERS["spec"]["tolerations"]
    # The template overrides security-context fields on purpose; the rest stays restricted.
    assert spec["securityContext"]["runAsUser"] == 2000 and spec["securityContext"]["supplementalGroups"] == [3000]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["restartPolicy"] == "Never" and spec["hostname"] == "job-trainer-1"
    # Other roles are not touched by the trainers' template.
    server = render_pod(job, ReplicaId(Role.EMBEDDING_SERVER, 0), owner=OWNER, redis_url=REDIS, generation=0)
    assert "team" not in server["metadata"]["labels"] and "serviceAccountName" not in server["spec"]


def test_the_template_survives_the_round_trip_through_the_config_map() -> None:
    job = make_job(replicas={"trainer": {"template": GPU_TRAINERS}})
    assert spec_from_json(job.spec_json()) == job.spec


@pytest.mark.parametrize(("template", "error"), [
    pytest.param({"metadata": {"labels": {"training.cpr.dev/role": "x"}}}, "training.cpr.dev/role.*reserved",
                 id="our-label"),
    pytest.param({"metadata": {"labels": {"app.kubernetes.io/managed-by": "me"}}}, "reserved", id="app-label"),
    pytest.param({"spec": {"containers": [{"name": "dlrm", "env": [{"name": "TJ_RANK", "value": "0"}]}]}},
                 r"containers\[0\].env\[0\].name 'TJ_RANK' belongs to the operator's env contract", id="contract-env"),
    pytest.param({"spec": {"containers": [{"name": "dlrm", "env": [{"name": "POD_IP", "value": "1.2.3.4"}]}]}},
                 "env contract", id="pod-ip"),
    pytest.param({"spec": {"containers": [{"name": "dlrm", "image": "mine:1"}]}},
                 r"main container\) may set only.*image are the operator's", id="main-image"),
    pytest.param({"spec": {"containers": [{"name": "dlrm", "command": ["sh"]}]}}, "command are the operator's",
                 id="main-command"),
    pytest.param({"spec": {"containers": [{"name": "sidecar"}]}}, r"containers\[0\] \(sidecar\) needs an image",
                 id="sidecar-image"),
    pytest.param({"spec": {"volumes": [{"name": "checkpoints", "emptyDir": {}}]}},
                 r"volumes\[0\].name 'checkpoints' is the operator's own volume", id="checkpoint-volume"),
    pytest.param({"spec": {"volumes": [{"name": "d", "emptyDir": {}}], "containers": [
        {"name": "dlrm", "volumeMounts": [{"name": "d", "mountPath": "/checkpoints"}]}]}},
                 "checkpoint and /tmp volumes and their paths are its own", id="checkpoint-path"),
    pytest.param({"spec": {"containers": [{"name": "dlrm", "volumeMounts": [{"name": "nope", "mountPath": "/x"}]}]}},
                 "mounts 'nope', which template volumes do not declare", id="undeclared-volume"),
    pytest.param({"spec": {"restartPolicy": "Always"}}, r"restartPolicy", id="restart-policy"),
    pytest.param({"spec": {"hostname": "x"}}, r"hostname", id="hostname"),
    pytest.param({"spec": {"serviceAccountName": "Not_A_Name"}}, "serviceAccountName.*DNS-1123", id="sa-name"),
    pytest.param({"spec": {"imagePullSecrets": [{"name": ""}]}}, "imagePullSecrets", id="pull-secret"),
])
def test_a_template_cannot_take_what_the_operator_owns(template: dict[str, Any], error: str) -> None:
    with pytest.raises(ManifestError, match=error) as caught:
        make_job(replicas={"trainer": {"template": template}})
    assert "spec.replicas.trainer.template" in str(caught.value)


def test_the_reserved_env_covers_the_whole_contract() -> None:
    from trainingjob_operator.api.template import reserved_env
    from trainingjob_operator.core.contract import CONTRACT_ENV

    assert all(reserved_env(name) for name in CONTRACT_ENV)


# --- the operator's trainer defaults (the chart's trainer.* values) -------------------------------


def test_the_charts_trainer_defaults_fill_only_what_a_job_leaves_unset() -> None:
    from trainingjob_operator.k8s.config import trainer_defaults_from_env

    defaults = trainer_defaults_from_env(json.dumps({
        "resources": {"limits": {"nvidia.com/gpu": 1}}, "nodeSelector": {},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}))
    body = {"apiVersion": "training.cpr.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": "job", "namespace": "ml"}, "spec": {}}
    job, _ = admit(body, REDIS, defaults)
    pod = render_pod(job, ReplicaId(Role.TRAINER, 0), owner=OWNER, redis_url=REDIS, generation=0)
    assert pod["spec"]["containers"][0]["resources"] == {"limits": {"nvidia.com/gpu": 1}}
    assert pod["spec"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert "nodeSelector" not in pod["spec"]  # an empty default sets nothing
    server = render_pod(job, ReplicaId(Role.EMBEDDING_SERVER, 0), owner=OWNER, redis_url=REDIS, generation=0)
    assert server["spec"]["containers"][0]["resources"] == {} and "tolerations" not in server["spec"]
    # The job's own field wins, whole, even an empty one: a CPU-only job on a GPU-default operator.
    body["spec"] = {"replicas": {"trainer": {"resources": {}, "tolerations": []}}}
    job, _ = admit(body, REDIS, defaults)
    pod = render_pod(job, ReplicaId(Role.TRAINER, 0), owner=OWNER, redis_url=REDIS, generation=0)
    assert pod["spec"]["containers"][0]["resources"] == {} and "tolerations" not in pod["spec"]


@pytest.mark.parametrize("value", ['{"resources": {"gpus": {"x": 1}}}', "[1]", "{not json"])
def test_a_malformed_trainer_default_stops_the_operator_naming_the_variable(value: str) -> None:
    from trainingjob_operator.k8s.config import trainer_defaults_from_env

    with pytest.raises(ValueError, match="TJ_DEFAULT_TRAINER_ROLE"):
        trainer_defaults_from_env(value)


# --- gang placement ------------------------------------------------------------------------------


@pytest.mark.parametrize(("gang", "api_version", "scheduler"), [
    pytest.param({"scheduler": "volcano", "queue": "training"}, "scheduling.volcano.sh/v1beta1", "volcano",
                 id="volcano"),
    pytest.param({"scheduler": "coscheduling", "scheduleTimeoutSeconds": 120}, "scheduling.x-k8s.io/v1alpha1",
                 "scheduler-plugins-scheduler", id="coscheduling"),
])
def test_a_gang_renders_one_pod_group_of_every_replica_and_joins_each_pod_to_it(
    gang: dict[str, Any], api_version: str, scheduler: str
) -> None:
    job = make_job(runPolicy={"gang": gang}, replicas={"trainer": {"replicas": 4}, "embeddingServer": {"replicas": 3}})
    group = resources.render_pod_group(job, owner=OWNER)
    assert group is not None and group["apiVersion"] == api_version and group["kind"] == "PodGroup"
    assert group["metadata"]["name"] == "job" and group["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert group["spec"]["minMember"] == 4 + 3 + 1
    pod = render_pod(job, ReplicaId(Role.TRAINER, 2), owner=OWNER, redis_url=REDIS, generation=0)
    assert pod["spec"]["schedulerName"] == scheduler
    if gang["scheduler"] == "volcano":
        assert group["spec"]["queue"] == "training"
        assert pod["metadata"]["annotations"]["scheduling.k8s.io/group-name"] == "job"
    else:
        assert group["spec"]["scheduleTimeoutSeconds"] == 120
        assert pod["metadata"]["labels"]["scheduling.x-k8s.io/pod-group"] == "job"
    assert resources.render_pod_group(make_job(), owner=OWNER) is None


def test_a_gang_and_a_template_scheduler_are_one_choice_too_many() -> None:
    with pytest.raises(ManifestError, match=r"schedulerName and runPolicy\.gang both choose the scheduler"):
        make_job(runPolicy={"gang": {"scheduler": "volcano"}},
                 replicas={"embeddingServer": {"template": {"spec": {"schedulerName": "other"}}}})


def test_the_network_policy_lets_only_the_jobs_pods_reach_its_servers_and_is_a_valid_object() -> None:
    import kubernetes_validate

    policy = resources.render_network_policy(make_job(), owner=OWNER)
    assert policy is not None
    kubernetes_validate.validate(policy, "1.30", strict=True)
    assert policy["spec"]["podSelector"] == {
        "matchLabels": {"training.cpr.dev/job": "job"},
        "matchExpressions": [{"key": "training.cpr.dev/role", "operator": "In",
                              "values": ["embedding-server", "sync-server"]}]}
    assert policy["spec"]["ingress"] == [{"from": [{"podSelector": {"matchLabels": {"training.cpr.dev/job": "job"}}}],
                                          "ports": [{"protocol": "TCP", "port": 50051}]}]
    # It selects the server pods by their own labels, and only them.
    server = render_pod(make_job(), ReplicaId(Role.SYNC_SERVER, 0), owner=OWNER, redis_url=REDIS, generation=0)
    trainer = render_pod(make_job(), ReplicaId(Role.TRAINER, 0), owner=OWNER, redis_url=REDIS, generation=0)
    role_in = policy["spec"]["podSelector"]["matchExpressions"][0]["values"]
    assert server["metadata"]["labels"]["training.cpr.dev/role"] in role_in
    assert trainer["metadata"]["labels"]["training.cpr.dev/role"] not in role_in
    assert resources.render_network_policy(make_job(networkPolicy=False), owner=OWNER) is None
