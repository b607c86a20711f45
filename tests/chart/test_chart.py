"""The Helm chart, rendered and linted offline.

Real here: Helm's own template engine and linter (the Go SDK inside helm-python-sdk), the
Kubernetes OpenAPI schemas of a recent release (kubernetes-validate, strict: unknown fields fail),
and `/bin/sh` + `shuf` for the operator's priority wrapper. Not covered (needs an API server,
see e2e/): installing the CRDs, RBAC evaluation, admission, kopf peering between live pods.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from trainingjob_operator.api import parse_manifest
from trainingjob_operator.api.spec import RoleSpec

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "trainingjob-operator"
RELEASE, NAMESPACE = "tj", "tj-system"
FULLNAME = "tj-trainingjob-operator"
# A recent Kubernetes release shipped by kubernetes-validate; the chart asks for >= 1.27.
KUBE_VERSION = "1.33"
# Kinds whose schemas kubernetes-validate cannot know (CRD-defined); everything else must validate.
CRD_KINDS = {"ClusterKopfPeering", "KopfPeering", "ServiceMonitor"}

GPU = {"trainer": {"gpu": {"enabled": True, "count": 2}, "nodeSelector": {"nvidia.com/gpu.present": "true"}}}
HA_NAMESPACED = {
    "operator": {"replicas": 3, "watchNamespaces": ["team-a", "team-b"]},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
}
EXTERNAL_REDIS = {"redis": {"external": {"url": "redis://redis.infra.svc:6379/3"}}}
EXTERNAL_REDIS_SECRET = {"redis": {"external": {"existingSecret": "tj-redis", "existingSecretKey": "url"}}}
STANDALONE = {"operator": {"replicas": 1, "peering": {"enabled": False}}}

VARIANTS = [
    pytest.param({}, id="default"),
    pytest.param(GPU, id="gpu"),
    pytest.param(HA_NAMESPACED, id="ha-namespaced"),
    pytest.param(EXTERNAL_REDIS, id="external-redis"),
    pytest.param(EXTERNAL_REDIS_SECRET, id="external-redis-secret"),
    pytest.param(STANDALONE, id="standalone"),
]


# --- helpers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chart() -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: helm_python.Chart, values: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rendered object, in template order (NOTES.txt is text, not a manifest)."""
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    return [
        doc
        for path, text in sorted(manifests.items())
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = one(docs, "Deployment", FULLNAME)["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def permissions(rules: list[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    """RBAC rules flattened to (apiGroup, resource, verb, resourceName or '*')."""
    out = set()
    for rule in rules:
        assert "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    for name in rule.get("resourceNames", ["*"]):
                        out.add((group, resource, verb, name))
    return out


def expand(group_resources: dict[tuple[str, str], tuple[str, ...]], name: str = "*") -> set[tuple[str, str, str, str]]:
    return {(g, r, v, name) for (g, r), verbs in group_resources.items() for v in verbs}


# What the operator does in a namespace it serves, and nothing more (see templates/_rbac.tpl).
NAMESPACED = expand({
    ("training.cpr.dev", "trainingjobs"): ("get", "list", "watch", "patch", "delete"),
    ("training.cpr.dev", "trainingjobs/status"): ("get", "patch"),
    ("training.cpr.dev", "trainingjobs/finalizers"): ("update",),
    ("", "pods"): ("get", "list", "watch", "create", "delete", "patch"),
    ("", "services"): ("get", "list", "watch", "create", "delete", "patch"),
    ("", "persistentvolumeclaims"): ("get", "list", "create", "delete"),
    ("", "configmaps"): ("get", "list", "watch", "create", "delete", "patch"),
    ("", "events"): ("create",),
    ("", "secrets"): ("get", "create", "delete"),
    ("kueue.x-k8s.io", "workloads"): ("get", "create"),
    ("kueue.x-k8s.io", "workloads/status"): ("patch",),
    ("scheduling.volcano.sh", "podgroups"): ("create",),
    ("scheduling.x-k8s.io", "podgroups"): ("create",),
    ("networking.k8s.io", "networkpolicies"): ("create",),
})
CRD_READ = expand({("apiextensions.k8s.io", "customresourcedefinitions"): ("get", "list", "watch"),
                   ("kueue.x-k8s.io", "resourceflavors"): ("get",)})


def peering(resource: str, name: str = FULLNAME) -> set[tuple[str, str, str, str]]:
    groups = ("kopf.dev", "zalando.org")
    return expand({(g, resource): ("list", "watch") for g in groups}) | expand(
        {(g, resource): ("get", "patch") for g in groups}, name=name
    )


# --- lint and schema validation ----------------------------------------------------------------


@pytest.mark.parametrize("values", VARIANTS)
def test_helm_lint_finds_no_errors_or_warnings(values: dict[str, Any]) -> None:
    report = helm_python.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}.0")
    assert report["errors"] == []
    # Severity 1 is informational (e.g. "icon is recommended"); 2 is a warning, 3 an error.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("values", VARIANTS)
def test_every_rendered_manifest_validates_against_kubernetes_schemas(
    chart: helm_python.Chart, values: dict[str, Any]
) -> None:
    docs = render(chart, values)
    assert docs
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            assert doc["kind"] in CRD_KINDS, f"{where}: no schema for a kind we did not expect"
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}")


def test_chart_crds_are_valid_custom_resource_definitions(chart: helm_python.Chart) -> None:
    names = set()
    for crd_file in chart.crds:
        for doc in yaml.safe_load_all(crd_file["data"]):
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
            names.add(doc["metadata"]["name"])
    assert names == {"trainingjobs.training.cpr.dev", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}


def test_chart_crd_is_an_exact_copy_of_the_repository_crd() -> None:
    source = ROOT / "crds" / "trainingjob.yaml"
    copy = CHART / "crds" / "trainingjob.yaml"
    assert source.exists(), "crds/trainingjob.yaml is missing: run `trainingjob crd`"
    assert copy.read_bytes() == source.read_bytes(), (
        "charts/trainingjob-operator/crds/trainingjob.yaml differs from crds/trainingjob.yaml: "
        "`trainingjob crd` (make crd) must write both"
    )


# --- RBAC ---------------------------------------------------------------------------------------


def test_cluster_wide_rbac_grants_exactly_what_the_operator_needs(chart: helm_python.Chart) -> None:
    docs = render(chart, {})
    role = one(docs, "ClusterRole", FULLNAME)
    assert permissions(role["rules"]) == NAMESPACED | CRD_READ | peering("clusterkopfpeerings")
    assert find(docs, "Role") == [] and find(docs, "RoleBinding") == []
    binding = one(docs, "ClusterRoleBinding", FULLNAME)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": FULLNAME}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
    one(docs, "ServiceAccount", FULLNAME)


def test_namespaced_rbac_grants_pod_access_only_in_watched_namespaces(chart: helm_python.Chart) -> None:
    docs = render(chart, HA_NAMESPACED)
    cluster_role = one(docs, "ClusterRole", FULLNAME)
    # Cluster-wide only what kopf needs for discovery: CRDs, and namespaces to resolve --namespace.
    assert permissions(cluster_role["rules"]) == CRD_READ | expand({("", "namespaces"): ("list", "watch")})
    roles = find(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert permissions(role["rules"]) == NAMESPACED | peering("kopfpeerings")
    for binding in find(docs, "RoleBinding"):
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
    assert sorted(b["metadata"]["namespace"] for b in find(docs, "RoleBinding")) == ["team-a", "team-b"]


@pytest.mark.parametrize("values", VARIANTS)
def test_rbac_never_uses_wildcards_or_reads_secrets_it_did_not_make(chart: helm_python.Chart,
                                                                     values: dict[str, Any]) -> None:
    """Secrets: the operator creates each job's Redis-user Secret, reads it back by name after a restart and
    deletes it with the job; it can never list or watch Secrets (which would read every Secret of a namespace)."""
    docs = render(chart, values)
    for role in find(docs, "ClusterRole") + find(docs, "Role"):
        for group, resource, verb, _ in permissions(role["rules"]):
            assert "*" not in (group, resource, verb)
            assert resource not in ("pods/exec", "pods/log", "nodes")
            assert resource != "secrets" or verb in ("get", "create", "delete"), verb
            assert verb not in ("deletecollection", "escalate", "bind", "impersonate")


def test_standalone_operator_gets_no_peering_permissions(chart: helm_python.Chart) -> None:
    role = one(render(chart, STANDALONE), "ClusterRole", FULLNAME)
    assert permissions(role["rules"]) == NAMESPACED | CRD_READ


# --- operator Deployment: peering, namespaces, ports, env -------------------------------------


def operator_flags(container: dict[str, Any]) -> list[str]:
    return container["args"]


@pytest.mark.parametrize(
    "values", [pytest.param({}, id="default-2-replicas"), pytest.param(HA_NAMESPACED, id="3-replicas")]
)
def test_more_than_one_replica_runs_with_kopf_peering(chart: helm_python.Chart, values: dict[str, Any]) -> None:
    docs = render(chart, values)
    deployment = one(docs, "Deployment", FULLNAME)
    assert deployment["spec"]["replicas"] > 1
    container = operator_container(docs)
    flags = operator_flags(container)
    assert "--standalone" not in flags
    assert f"--peering={FULLNAME}" in flags
    # Same-priority kopf peers all freeze; each pod must draw its own priority.
    assert "--priority=" in " ".join(container["command"])
    # The peering object kopf keeps alive must exist, or the replicas would not see each other.
    watched = values.get("operator", {}).get("watchNamespaces", [])
    if watched:
        peerings = find(docs, "KopfPeering", FULLNAME)
        assert sorted(p["metadata"]["namespace"] for p in peerings) == sorted(watched)
        assert find(docs, "ClusterKopfPeering") == []
    else:
        one(docs, "ClusterKopfPeering", FULLNAME)
    pdb = one(docs, "PodDisruptionBudget", FULLNAME)
    assert pdb["spec"]["minAvailable"] == 1
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_single_replica_without_peering_runs_standalone(chart: helm_python.Chart) -> None:
    docs = render(chart, STANDALONE)
    container = operator_container(docs)
    assert container["command"] == ["trainingjob", "operator"]
    assert "--standalone" in operator_flags(container)
    assert not any(f.startswith("--peering") for f in operator_flags(container))
    assert find(docs, "ClusterKopfPeering") == [] and find(docs, "KopfPeering") == []
    assert find(docs, "PodDisruptionBudget") == []
    # Without peering, an old and a new operator must never overlap during an upgrade.
    assert one(docs, "Deployment", FULLNAME)["spec"]["strategy"] == {"type": "Recreate"}


def test_several_replicas_without_peering_are_refused(chart: helm_python.Chart) -> None:
    with pytest.raises(helm_python.HelmError, match="peering"):
        render(chart, {"operator": {"replicas": 2, "peering": {"enabled": False}}})


def test_priority_wrapper_passes_a_random_priority_and_every_flag(chart: helm_python.Chart, tmp_path: Path) -> None:
    """Run the rendered `sh -c` wrapper for real with a stand-in `trainingjob` that prints its argv."""
    fake = tmp_path / "trainingjob"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    container = operator_container(render(chart, {}))
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    argv = container["command"] + container["args"]
    seen = set()
    for _ in range(3):
        out = subprocess.run(argv, env=env, check=True, capture_output=True, text=True).stdout.splitlines()
        assert out[0] == "operator"
        assert out[1].startswith("--priority=")
        priority = int(out[1].removeprefix("--priority="))
        assert 1 <= priority <= 1_000_000_000
        seen.add(priority)
        assert out[2:] == container["args"]
    assert len(seen) > 1


def test_cluster_wide_operator_watches_all_namespaces(chart: helm_python.Chart) -> None:
    flags = operator_flags(operator_container(render(chart, {})))
    assert "--all-namespaces" in flags
    assert not any(f.startswith("--namespace") for f in flags)


def test_namespaced_operator_watches_only_listed_namespaces(chart: helm_python.Chart) -> None:
    flags = operator_flags(operator_container(render(chart, HA_NAMESPACED)))
    assert "--all-namespaces" not in flags
    assert [f for f in flags if f.startswith("--namespace")] == ["--namespace=team-a", "--namespace=team-b"]


def test_metrics_and_health_ports_match_flags_probes_and_service(chart: helm_python.Chart) -> None:
    values = {**HA_NAMESPACED, "operator": {**HA_NAMESPACED["operator"], "metricsPort": 9200, "healthPort": 8181}}
    docs = render(chart, values)
    container = operator_container(docs)
    flags = operator_flags(container)
    assert "--metrics-port=9200" in flags
    assert "--liveness=http://0.0.0.0:8181/healthz" in flags
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 9200, "health": 8181}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    service = one(docs, "Service", f"{FULLNAME}-metrics")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9200, "targetPort": "metrics", "protocol": "TCP"}]
    pod_labels = one(docs, "Deployment", FULLNAME)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    monitor = one(docs, "ServiceMonitor", FULLNAME)
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


def test_service_monitor_is_off_by_default(chart: helm_python.Chart) -> None:
    assert find(render(chart, {}), "ServiceMonitor") == []


def test_operator_env_names_its_namespace_and_pod(chart: helm_python.Chart) -> None:
    env = env_of(operator_container(render(chart, {})))
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    # kopf's peering identity.
    assert env["POD_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


# --- Redis ------------------------------------------------------------------------------------


def redis_objects(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "redis"]


def test_bundled_redis_keeps_an_append_only_file_on_a_volume(chart: helm_python.Chart) -> None:
    docs = render(chart, {})
    name = f"{FULLNAME}-redis"
    deployment = one(docs, "Deployment", name)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--dir") + 1] == "/data"
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": name}} in pod["volumes"]
    one(docs, "PersistentVolumeClaim", name)
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    service = one(docs, "Service", name)
    assert service["spec"]["ports"][0]["port"] == 6379
    # Trainer pods live in other namespaces: the URL must be namespace-qualified.
    url = env_of(operator_container(docs))["TJ_DEFAULT_REDIS_URL"]["value"]
    assert url == f"redis://{name}.{NAMESPACE}.svc:6379/0"


def test_redis_without_persistence_uses_an_empty_dir(chart: helm_python.Chart) -> None:
    docs = render(chart, {"redis": {"persistence": {"enabled": False}}})
    assert find(docs, "PersistentVolumeClaim") == []
    pod = one(docs, "Deployment", f"{FULLNAME}-redis")["spec"]["template"]["spec"]
    assert {"name": "data", "emptyDir": {}} in pod["volumes"]


def test_external_redis_url_replaces_the_bundled_redis(chart: helm_python.Chart) -> None:
    docs = render(chart, EXTERNAL_REDIS)
    assert redis_objects(docs) == []
    env = env_of(operator_container(docs))
    assert env["TJ_DEFAULT_REDIS_URL"] == {"name": "TJ_DEFAULT_REDIS_URL", "value": "redis://redis.infra.svc:6379/3"}


def test_external_redis_url_can_come_from_a_secret(chart: helm_python.Chart) -> None:
    docs = render(chart, EXTERNAL_REDIS_SECRET)
    assert redis_objects(docs) == []
    env = env_of(operator_container(docs))
    assert env["TJ_DEFAULT_REDIS_URL"]["valueFrom"] == {"secretKeyRef": {"name": "tj-redis", "key": "url"}}


def test_external_redis_url_with_a_wrong_scheme_is_refused(chart: helm_python.Chart) -> None:
    # values.schema.json refuses it first, naming the field as a JSON pointer (/redis/external/url);
    # the template's own check (same field, dotted) is tested without the schema further down.
    with pytest.raises(helm_python.HelmError, match=r"redis[./]external[./]url"):
        render(chart, {"redis": {"external": {"url": "http://redis:6379"}}})


# --- images and trainer defaults -----------------------------------------------------------------


def test_image_tags_default_to_the_app_version(chart: helm_python.Chart) -> None:
    app_version = chart.metadata["appVersion"]
    assert app_version == "0.1.0"
    docs = render(chart, {})
    container = operator_container(docs)
    assert container["image"] == f"ghcr.io/trainingjob-operator/operator:{app_version}"
    assert env_of(container)["TJ_DEFAULT_IMAGE"]["value"] == f"ghcr.io/trainingjob-operator/dlrm-trainer:{app_version}"
    gpu = env_of(operator_container(render(chart, GPU)))
    assert gpu["TJ_DEFAULT_IMAGE"]["value"] == f"ghcr.io/trainingjob-operator/dlrm-trainer:{app_version}-cuda"


def test_image_tags_and_pull_policy_come_from_values(chart: helm_python.Chart) -> None:
    values = {
        "operator": {"image": {"repository": "registry.local/tj-operator", "tag": "e2e", "pullPolicy": "Never"}},
        "trainer": {"image": {"repository": "registry.local/dlrm-trainer", "tag": "e2e"}, "gpu": {"enabled": True}},
        "redis": {"image": {"repository": "mirror.local/redis", "tag": "7.2.5"}},
    }
    docs = render(chart, values)
    container = operator_container(docs)
    assert container["image"] == "registry.local/tj-operator:e2e"
    assert container["imagePullPolicy"] == "Never"
    # An explicit trainer tag is used as is, without the CUDA suffix.
    assert env_of(container)["TJ_DEFAULT_IMAGE"]["value"] == "registry.local/dlrm-trainer:e2e"
    (redis,) = one(docs, "Deployment", f"{FULLNAME}-redis")["spec"]["template"]["spec"]["containers"]
    assert redis["image"] == "mirror.local/redis:7.2.5"


def trainer_defaults(docs: list[dict[str, Any]]) -> RoleSpec:
    """TJ_DEFAULT_TRAINER_ROLE is a fragment of spec.replicas.trainer: it must parse as a RoleSpec."""
    return RoleSpec.model_validate(json.loads(env_of(operator_container(docs))["TJ_DEFAULT_TRAINER_ROLE"]["value"]))


def test_trainer_pods_request_no_gpu_by_default(chart: helm_python.Chart) -> None:
    role = trainer_defaults(render(chart, {}))
    assert role.resources == {} and role.tolerations == [] and role.node_selector == {}


def test_gpu_defaults_reach_trainer_pods(chart: helm_python.Chart) -> None:
    role = trainer_defaults(render(chart, GPU))
    assert role.resources == {"limits": {"nvidia.com/gpu": 2}}
    assert role.node_selector == {"nvidia.com/gpu.present": "true"}
    assert [t.to_wire() for t in role.tolerations] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]


def test_gpu_limit_merges_with_other_trainer_resources(chart: helm_python.Chart) -> None:
    values = {"trainer": {"gpu": {"enabled": True, "resourceName": "amd.com/gpu"},
                          "resources": {"requests": {"cpu": "8", "memory": "32Gi"}, "limits": {"memory": "48Gi"}}}}
    role = trainer_defaults(render(chart, values))
    assert role.resources == {"requests": {"cpu": "8", "memory": "32Gi"},
                              "limits": {"memory": "48Gi", "amd.com/gpu": 1}}


# --- security -------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", VARIANTS)
def test_every_pod_runs_as_non_root_without_privileges(chart: helm_python.Chart, values: dict[str, Any]) -> None:
    workloads = find(render(chart, values), "Deployment")
    assert workloads
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert "resources" in container


def test_notes_summarise_the_install(chart: helm_python.Chart) -> None:
    notes = chart.render(EXTERNAL_REDIS, name=RELEASE, namespace=NAMESPACE)["trainingjob-operator/templates/NOTES.txt"]
    assert "redis://redis.infra.svc:6379/3 (external)" in notes
    assert f'kopf peering "{FULLNAME}"' in notes


# --- values.schema.json -------------------------------------------------------------------------
# Helm itself checks values against the schema (and the schema against the draft-07 meta-schema)
# before it renders anything: these tests go through the same engine as `helm install`.

SCHEMA_FILE = CHART / "values.schema.json"


def load_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA_FILE.read_text())
    return schema


def resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follow a local `$ref` ("#/definitions/name"); the schema uses no other kind."""
    while "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/definitions/"), f"unexpected $ref {ref}"
        node = schema["definitions"][ref.removeprefix("#/definitions/")]
    return node


def undescribed(schema: dict[str, Any], node: dict[str, Any], value: Any, path: str) -> list[str]:
    """Keys of `value` (a values.yaml subtree) that the schema `node` does not list in its properties.

    A node without `properties` is a free-form map (resources, nodeSelector, ...): its keys are
    data, not chart settings. Every other mapping key, at any depth, list items included, must
    be a property.
    """
    node = resolve(schema, node)
    missing: list[str] = []
    if isinstance(value, dict) and "properties" in node:
        for key, child in value.items():
            where = f"{path}.{key}" if path else key
            if key in node["properties"]:
                missing += undescribed(schema, node["properties"][key], child, where)
            else:
                missing.append(where)
    elif isinstance(value, list) and "items" in node:
        for i, item in enumerate(value):
            missing += undescribed(schema, node["items"], item, f"{path}[{i}]")
    return missing


def unused(schema: dict[str, Any], node: dict[str, Any], value: Any, path: str) -> list[str]:
    """Schema properties of a chart-settings mapping that values.yaml does not have (dead keys)."""
    node = resolve(schema, node)
    if not (isinstance(value, dict) and value and "properties" in node):
        return []
    dead: list[str] = []
    for key, child in node["properties"].items():
        where = f"{path}.{key}" if path else key
        dead += unused(schema, child, value[key], where) if key in value else [where]
    return dead


def open_objects(schema: dict[str, Any], node: dict[str, Any], path: str) -> set[str]:
    """Paths of the schema's objects that accept keys they do not list."""
    node = resolve(schema, node)
    found: set[str] = set()
    if node.get("type") == "object" and node.get("additionalProperties") is not False:
        found.add(path)
    for key, child in node.get("properties", {}).items():
        found |= open_objects(schema, child, f"{path}.{key}" if path else key)
    if "items" in node:
        found |= open_objects(schema, node["items"], f"{path}[]")
    return found


# Maps whose keys are Kubernetes data, not chart settings. Opening another level must be deliberate.
FREE_FORM = {
    "commonLabels",
    "serviceAccount.annotations",
    "metrics.serviceMonitor.labels",
    "operator.extraEnv[]",
    "trainer.resources.requests",
    "trainer.resources.limits",
    "trainer.nodeSelector",
    *(
        f"{part}.{key}"
        for part in ("operator", "redis")
        for key in ("resources", "nodeSelector", "affinity", "podSecurityContext", "securityContext")
    ),
    "operator.podAnnotations",
    "operator.podLabels",
}


def test_chart_ships_the_schema_as_draft_07(chart: helm_python.Chart) -> None:
    schema = load_schema()
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert chart.schema == schema


def test_default_values_pass_the_schema(chart: helm_python.Chart) -> None:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    chart.validate_schema(defaults)
    # The same defaults given explicitly, as `helm install -f values.yaml` would, render too.
    assert render(chart, defaults)


def test_every_key_in_values_yaml_is_described_by_the_schema() -> None:
    schema = load_schema()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert undescribed(schema, schema, values, "") == []
    assert unused(schema, schema, values, "") == []


def test_schema_closes_every_level_except_free_form_maps() -> None:
    schema = load_schema()
    assert open_objects(schema, schema, "") == FREE_FORM


BAD_VALUES = [
    pytest.param(
        {"operator": {"replicas": "two"}}, "'/operator/replicas': got string, want integer", id="replicas-string"
    ),
    pytest.param({"operator": {"replicas": 0}}, "'/operator/replicas': minimum", id="replicas-zero"),
    pytest.param({"operator": {"replicas": None}}, "'/operator': missing property 'replicas'", id="replicas-null"),
    pytest.param(
        {"operator": {"image": {"pullPolicy": "Sometimes"}}}, "'/operator/image/pullPolicy'", id="pull-policy"
    ),
    pytest.param({"redis": {"image": {"pullPolicy": "always"}}}, "'/redis/image/pullPolicy'", id="redis-pull-policy"),
    pytest.param(
        {"trainer": {"gpu": {"count": "1"}}}, "'/trainer/gpu/count': got string, want integer", id="gpu-count-string"
    ),
    pytest.param({"trainer": {"gpu": {"count": 0}}}, "'/trainer/gpu/count': minimum", id="gpu-count-zero"),
    pytest.param({"opertor": {"replicas": 1}}, "'opertor' not allowed", id="misspelt-top-level-key"),
    pytest.param({"operator": {"replica": 1}}, "'replica' not allowed", id="misspelt-nested-key"),
    pytest.param({"redis": {"appendfsync": "sometimes"}}, "'/redis/appendfsync'", id="appendfsync"),
    pytest.param({"operator": {"metricsPort": 70000}}, "'/operator/metricsPort': maximum", id="metrics-port"),
    pytest.param({"operator": {"healthPort": 0}}, "'/operator/healthPort': minimum", id="health-port"),
    pytest.param({"metrics": {"service": {"type": "Internal"}}}, "'/metrics/service/type'", id="service-type"),
    pytest.param({"redis": {"external": {"url": "http://redis:6379"}}}, "'/redis/external/url'", id="redis-url"),
    pytest.param(
        {"trainer": {"resources": {"limits": {"cpu": 0.5}}}},
        "'/trainer/resources/limits/cpu'",
        id="fractional-trainer-quantity",
    ),
    pytest.param(
        {"trainer": {"resources": {"limit": {"cpu": "1"}}}}, "'limit' not allowed", id="misspelt-trainer-resources"
    ),
    pytest.param(
        {"trainer": {"gpu": {"tolerations": [{"key": "gpu", "efect": "NoSchedule"}]}}},
        "'efect' not allowed",
        id="misspelt-toleration",
    ),
    pytest.param({"operator": {"watchNamespaces": ["Team_A"]}}, "'/operator/watchNamespaces/0'", id="namespace"),
    pytest.param(
        {"operator": {"peering": {"enabled": "yes"}}}, "'/operator/peering/enabled': got string", id="boolean-as-string"
    ),
]


@pytest.mark.parametrize(("values", "message"), BAD_VALUES)
def test_bad_values_are_refused_naming_the_field(
    chart: helm_python.Chart, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm_python.HelmValuesError) as refused:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert message in str(refused.value)


def test_helm_lint_reports_schema_violations() -> None:
    report = helm_python.lint(CHART, {"operator": {"replicas": "two"}}, namespace=NAMESPACE)
    assert any("/operator/replicas" in error for error in report["errors"])


def test_templates_still_refuse_a_wrong_redis_scheme_without_the_schema(tmp_path: Path) -> None:
    """`helm install --skip-schema-validation` bypasses the schema; the template's check remains."""
    copy = tmp_path / "chart"
    shutil.copytree(CHART, copy)
    (copy / "values.schema.json").unlink()
    with (
        helm_python.Chart.load(copy) as loaded,
        pytest.raises(helm_python.HelmError, match=r"redis\.external\.url must start with redis://"),
    ):
        loaded.render({"redis": {"external": {"url": "http://redis:6379"}}}, name=RELEASE, namespace=NAMESPACE)


def test_readme_table_names_only_keys_the_schema_has() -> None:
    schema = load_schema()
    readme = (CHART / "README.md").read_text()
    table = readme.split("## Values are checked", 1)[1].split("\n## ", 1)[0]
    first_cells = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `")]
    # Full paths only: `.scrapeTimeout` continues the previous key, `*.tolerations` means several.
    keys = [key for cell in first_cells for key in re.findall(r"`([a-zA-Z][a-zA-Z.]*)`", cell)]
    assert len(keys) >= 15
    for key in keys:
        node = schema
        for part in key.split("."):
            node = resolve(schema, node)
            assert part in node.get("properties", {}), f"README names {key}, the schema has no {part}"
            node = node["properties"][part]


# --- NOTES.txt ----------------------------------------------------------------------------------

HEREDOC = re.compile(r"^kubectl apply(?P<ns>(?: -n \S+)?) -f - <<'EOF'\n(?P<body>.*?)\nEOF$", re.MULTILINE | re.DOTALL)


def notes(chart: helm_python.Chart, values: dict[str, Any]) -> str:
    text: str = chart.render(values, name=RELEASE, namespace=NAMESPACE)["trainingjob-operator/templates/NOTES.txt"]
    return text


@pytest.mark.parametrize("values", VARIANTS)
def test_notes_print_a_valid_training_job_to_apply(chart: helm_python.Chart, values: dict[str, Any]) -> None:
    text = notes(chart, values)
    # No file the chart user may not have.
    assert "-f examples/" not in text
    (found,) = HEREDOC.finditer(text)
    manifest = yaml.safe_load(found["body"])
    job = parse_manifest(manifest, "NOTES.txt")
    assert job.name == "dlrm-small"
    # The same small job as the repository's example, so the two cannot drift apart.
    assert manifest == yaml.safe_load((ROOT / "examples" / "dlrm-small.yaml").read_text())
    watched = values.get("operator", {}).get("watchNamespaces", [])
    expected_ns = f" -n {watched[0]}" if watched else ""
    assert found["ns"] == expected_ns
    assert f"kubectl get tj{expected_ns} -w" in text


def test_notes_name_the_gpus_each_trainer_gets(chart: helm_python.Chart) -> None:
    job_part = notes(chart, GPU).split("Run a small job", 1)[1]
    assert "Each trainer gets 2 x nvidia.com/gpu" in job_part
    assert "gpu" not in notes(chart, {}).split("Run a small job", 1)[1].lower()


# --- the bundled Redis's NetworkPolicy ---------------------------------------------------------------


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_only_the_operator_and_training_pods_reach_the_bundled_redis(chart: helm_python.Chart) -> None:
    from trainingjob_operator.k8s.resources import Owner, render_pod
    from trainingjob_operator.reconcile import ReplicaId

    docs = render(chart, {})
    policy = one(docs, "NetworkPolicy", f"{FULLNAME}-redis")
    redis_pod = one(docs, "Deployment", f"{FULLNAME}-redis")["spec"]["template"]["metadata"]["labels"]
    operator_pod = one(docs, "Deployment", FULLNAME)["spec"]["template"]["metadata"]["labels"]
    assert labels_match(policy["spec"]["podSelector"]["matchLabels"], redis_pod)
    assert not labels_match(policy["spec"]["podSelector"]["matchLabels"], operator_pod)
    [rule] = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]
    peers = rule["from"]
    # The operator's pods (this namespace), and every pod the operator creates for a job (any namespace).
    assert labels_match(peers[0]["podSelector"]["matchLabels"], operator_pod) and "namespaceSelector" not in peers[0]
    job = parse_manifest({"apiVersion": "training.cpr.dev/v1alpha1", "kind": "TrainingJob",
                          "metadata": {"name": "j", "namespace": "team-a"}})
    for role in ("trainer", "embedding-server", "sync-server"):
        pod = render_pod(job, ReplicaId.parse(f"{role}-0"), owner=Owner("j", "u"), redis_url="redis://r", generation=0)
        assert labels_match(peers[1]["podSelector"]["matchLabels"], pod["metadata"]["labels"]), role
    assert peers[1]["namespaceSelector"] == {}
    # No bundled Redis, or switched off: no policy.
    assert find(render(chart, {"redis": {"external": {"url": "redis://redis.infra:6379/0"}}}), "NetworkPolicy") == []
    assert find(render(chart, {"redis": {"networkPolicy": {"enabled": False}}}), "NetworkPolicy") == []


# --- uninstall: no TrainingJob left trapped --------------------------------------------------------


def test_uninstall_runs_a_pre_delete_hook_that_deletes_every_job_with_the_operators_rights(
    chart: helm_python.Chart,
) -> None:
    docs = render(chart, {})
    hook = one(docs, "Job", f"{FULLNAME}-uninstall-jobs")
    assert hook["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"
    pod = hook["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["trainingjob", "uninstall-jobs", "--timeout", "300"]
    assert container["image"] == operator_container(docs)["image"]
    assert pod["serviceAccountName"] == one(docs, "Deployment", FULLNAME)["spec"]["template"]["spec"][
        "serviceAccountName"]
    # Its service account may list and delete TrainingJobs wherever the operator serves them.
    role = one(docs, "ClusterRole", FULLNAME)
    assert {("training.cpr.dev", "trainingjobs", v, "*") for v in ("list", "delete")} <= permissions(role["rules"])
    namespaced = render(chart, {"operator": {"watchNamespaces": ["team-a", "team-b"]}})
    command = one(namespaced, "Job", f"{FULLNAME}-uninstall-jobs")["spec"]["template"]["spec"]["containers"][0][
        "command"]
    assert command[-4:] == ["--namespace", "team-a", "--namespace", "team-b"]
    assert find(render(chart, {"operator": {"uninstall": {"deleteJobs": False}}}), "Job") == []
