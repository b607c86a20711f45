"""Generate the TrainingJob CustomResourceDefinition from the pydantic models.

Kubernetes requires a *structural* schema: every node has a type, no $ref, no anyOf with null.
This module turns pydantic's JSON Schema into that form, so the CRD never drifts from the model
(`tests/api/test_crd.py` regenerates it and compares with `crds/`).
"""

from __future__ import annotations

from typing import Any

import yaml

from trainingjob_operator.api.spec import GROUP, KIND, PLURAL, SHORT_NAME, SINGULAR, VERSION, TrainingJobSpec
from trainingjob_operator.api.status import TrainingJobStatus

_DROP = {"title", "$defs"}


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        extra = {k: v for k, v in node.items() if k != "$ref"}
        node = {**defs[name], **extra}
    return node


def structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """One pydantic JSON-Schema node as a structural OpenAPI v3 schema node."""
    node = _resolve(node, defs)
    out: dict[str, Any] = {}
    if "anyOf" in node:
        options = [_resolve(o, defs) for o in node["anyOf"]]
        non_null = [o for o in options if o.get("type") != "null"]
        types = {o.get("type") for o in non_null}
        if len(non_null) == 1:
            out = structural(non_null[0], defs)
        elif types == {"integer", "string"}:
            out = {"x-kubernetes-int-or-string": True}
        else:
            out = {"x-kubernetes-preserve-unknown-fields": True}
        if len(non_null) < len(options):
            out["nullable"] = True
    elif "const" in node:
        out = {"type": node.get("type", "string"), "enum": [node["const"]]}
    else:
        kind = node.get("type")
        if kind == "object" or "properties" in node:
            out["type"] = "object"
            if "properties" in node:
                out["properties"] = {k: structural(v, defs) for k, v in node["properties"].items()}
            extra = node.get("additionalProperties")
            if isinstance(extra, dict) and extra:
                out["additionalProperties"] = structural(extra, defs)
            elif extra is True or (isinstance(extra, dict) and not extra) or "properties" not in node:
                out["x-kubernetes-preserve-unknown-fields"] = True
            if node.get("required"):
                out["required"] = list(node["required"])
        elif kind == "array":
            out["type"] = "array"
            out["items"] = structural(node.get("items", {}), defs) if node.get("items") else {
                "x-kubernetes-preserve-unknown-fields": True}
        elif kind is not None:
            out["type"] = kind
        else:
            out["x-kubernetes-preserve-unknown-fields"] = True
        for key in ("enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minItems",
                    "maxItems", "minLength", "maxLength", "pattern", "format"):
            if key in node:
                out[key] = node[key]
    # OpenAPI v3.0 (what Kubernetes speaks) has boolean exclusive bounds; JSON Schema 2020 numbers.
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(bound), int | float) and not isinstance(out.get(bound), bool):
            out[plain] = out.pop(bound)
            out[bound] = True
    if "description" in node:
        out["description"] = node["description"]
    default = node.get("default")
    if default is not None and not isinstance(default, dict | list):
        out["default"] = default
    return {k: v for k, v in out.items() if k not in _DROP}


def _model_schema(model: type) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True, mode="validation")  # type: ignore[attr-defined]
    return structural(schema, schema.get("$defs", {}))


def _printer_columns() -> list[dict[str, Any]]:
    return [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Trainers", "type": "integer", "jsonPath": ".spec.replicas.trainer.replicas"},
        {"name": "EmbServers", "type": "integer", "jsonPath": ".spec.replicas.embeddingServer.replicas"},
        {"name": "Samples", "type": "integer", "jsonPath": ".status.progress.samples"},
        {"name": "AUC", "type": "number", "jsonPath": ".status.progress.auc"},
        {"name": "Failures", "type": "integer", "jsonPath": ".status.recovery.failures"},
        {"name": "Interval", "type": "number", "jsonPath": ".status.recovery.intervalSeconds", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


def crd() -> dict[str, Any]:
    """The whole CustomResourceDefinition as a dict."""
    status = _model_schema(TrainingJobStatus)
    # kopf keeps its own bookkeeping under status; keep unknown fields there.
    status["x-kubernetes-preserve-unknown-fields"] = True
    root = {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": _model_schema(TrainingJobSpec),
            "status": status,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": KIND, "plural": PLURAL, "singular": SINGULAR, "shortNames": [SHORT_NAME],
                      "listKind": f"{KIND}List"},
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": root},
                "subresources": {"status": {}},
                "additionalPrinterColumns": _printer_columns(),
            }],
        },
    }


HEADER = "# Generated from trainingjob_operator.api by `trainingjob crd`; do not edit by hand.\n"


def crd_yaml() -> str:
    return HEADER + yaml.safe_dump(crd(), sort_keys=False, width=120)
