"""Broken TrainingJob manifests from a seed: a valid manifest with one place broken (a wrong-typed, out of
range, huge, non-finite or unicode value; an unknown key; a missing key). Shared by the operator's fuzz test
and ``benchmarks/fuzz_manifests.py``; ``tests/api/test_fuzz_manifests.py`` explores the same space with
hypothesis."""

from __future__ import annotations

import copy
import json
import math
import random
import re
from typing import Any

from trainingjob_operator.api import parse_manifest

Path = list[str | int]

VALID: dict[str, Any] = parse_manifest({
    "apiVersion": "training.cpr.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "fuzz", "namespace": "ml"},
    "spec": {"model": {"tableRows": [100, 200, 300], "sparseFeatures": 3},
             "replicas": {"trainer": {"env": {"A": "1"}, "nodeSelector": {"pool": "gpu"}}},
             "recovery": {"checkpoint": {"objectStore": {"url": "s3://bucket/p", "endpoint": "http://minio:9000"}}}},
}).model_dump(mode="json", by_alias=True, exclude_none=True)

ODD_VALUES: list[Any] = [
    None, True, False, 0, -1, 1, 2**31, -(2**63), 10**30, 0.5, -0.0, 1e308, math.inf, -math.inf, math.nan, "",
    "x", "-1", "1e999", "NaN", "10Gi", "s3://", "redis://x", "true", "😀", "é中", "\u0000", "a\nb", "x" * 10_000,
    [], [1, 2], ["a"], {}, {"a": 1}, {"": None},
]


def node_at(document: Any, path: Path) -> Any:
    for key in path:
        document = document[key]
    return document


def places(node: Any, path: Path | None = None) -> list[Path]:
    """Every path into the document (mappings by key, lists by index), the root excluded."""
    path = path or []
    out: list[Path] = []
    if isinstance(node, dict):
        for key, value in node.items():
            out.append([*path, key])
            out.extend(places(value, [*path, key]))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out.append([*path, i])
            out.extend(places(value, [*path, i]))
    return out


PLACES = places(VALID)
MAPPINGS: list[Path] = [[], *(p for p in PLACES if isinstance(node_at(VALID, p), dict))]


def broken_manifest(seed: int) -> tuple[dict[str, Any], Path, str]:
    """(manifest, the broken place, how) for one seed."""
    rng = random.Random(seed)
    document = copy.deepcopy(VALID)
    how = rng.choice(["replace", "replace", "replace", "unknown", "delete"])
    if how == "unknown":
        mapping = rng.choice(MAPPINGS)
        key = rng.choice(["x", "Spec", "replica", "😀", "a.b", "a b", "\n", "trainSample", "recover"])
        if key in node_at(document, mapping):
            key += "_"
        node_at(document, mapping)[key] = rng.choice(ODD_VALUES)
        return document, [*mapping, key], how
    path = rng.choice(PLACES)
    parent = node_at(document, path[:-1])
    if how == "delete" and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        how = "replace"
        parent[path[-1]] = copy.deepcopy(rng.choice(ODD_VALUES))
    return document, path, how


def components(field: str) -> Path:
    """``spec.model.tableRows[2]`` -> ["spec", "model", "tableRows", 2]; ``labels["a.b"]`` -> ["labels", "a.b"]."""
    out: Path = []
    for part in re.findall(r'\["(?:[^"\\]|\\.)*"\]|\[\d+\]|[^.\[\]]+', field):
        if part.startswith('["'):
            out.append(json.loads(part[1:-1]))
        elif part.startswith("["):
            out.append(int(part[1:-1]))
        else:
            out.append(part)
    return out


def names_the_place(field: str, path: Path) -> bool:
    """The field an error names leads to the broken place: the place, an object holding it, or inside it."""
    named = components(field)
    return bool(named) and (named == path[: len(named)] or path == named[: len(path)])
