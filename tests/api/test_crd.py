"""The committed CRD is generated from the pydantic model; these tests fail when they drift."""

from pathlib import Path
from typing import Any

import yaml

from trainingjob_operator.api.crd import crd, crd_yaml

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "crds" / "trainingjob.yaml"


def test_committed_crd_matches_the_model() -> None:
    assert COMMITTED.read_text() == crd_yaml(), "crds/ is stale: run `make crd`"


def _walk(node: dict[str, Any], path: str = "") -> list[str]:
    """Paths of nodes that break Kubernetes' structural-schema rules."""
    problems = []
    if "$ref" in node or "anyOf" in node or "allOf" in node or "title" in node:
        problems.append(path)
    if "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields") \
            and not node.get("x-kubernetes-int-or-string"):
        problems.append(path + " (no type)")
    for name, child in node.get("properties", {}).items():
        problems += _walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        problems += _walk(node["items"], path + "[]")
    if isinstance(node.get("additionalProperties"), dict):
        problems += _walk(node["additionalProperties"], path + "{}")
    return problems


def test_schema_is_structural() -> None:
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert _walk(schema) == []


def test_names_subresource_and_printer_columns() -> None:
    doc = yaml.safe_load(COMMITTED.read_text())
    spec = doc["spec"]
    assert doc["metadata"]["name"] == "trainingjobs.training.cpr.dev"
    assert spec["names"]["shortNames"] == ["tj"] and spec["scope"] == "Namespaced"
    version = spec["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase" and columns["AUC"] == ".status.progress.auc"


def test_schema_carries_validation_from_the_model() -> None:
    spec = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    trainer = spec["replicas"]["properties"]["trainer"]["properties"]["replicas"]
    assert trainer["minimum"] == 1 and trainer["type"] == "integer"
    assert spec["recovery"]["properties"]["mode"]["enum"] == ["partial", "full", "auto"]
    resources = spec["replicas"]["properties"]["trainer"]["properties"]["resources"]
    assert resources["additionalProperties"]["additionalProperties"] == {"x-kubernetes-int-or-string": True}
    pls = spec["recovery"]["properties"]["plsTarget"]
    assert pls["exclusiveMinimum"] is True and pls["minimum"] == 0.0
