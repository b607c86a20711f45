"""Fuzzed manifests (issue #10): whatever a user writes, the answer is one line naming the field, never a crash.

Each example takes a valid TrainingJob (every field written out, as ``trainingjob validate`` prints it) and
breaks it at one random place: a value of the wrong type, out of range, huge, non-finite or unicode; an
unknown key; a missing key. The manifest either parses, or fails with a ``ManifestError`` whose field path
leads to the broken place (a cross-field rule names the object holding both fields), in one line.
``benchmarks/fuzz_manifests.py`` runs 10,000 of them through the CLI's parser and the operator.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.fuzz import MAPPINGS, PLACES, VALID, Path, names_the_place, node_at
from trainingjob_operator.api import ManifestError, parse_manifest

odd_values = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.text(alphabet="😀é中\u0000\t\n", max_size=8),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    st.sampled_from(["", "-1", "1e999", "NaN", "10Gi", "s3://", "redis://x", "0", "true", "x" * 10_000]),
)


def set_at(document: dict[str, Any], path: Path, value: Any) -> None:
    node_at(document, path[:-1])[path[-1]] = value


def delete_at(document: dict[str, Any], path: Path) -> None:
    del node_at(document, path[:-1])[path[-1]]


@st.composite
def broken(draw: st.DrawFn) -> tuple[dict[str, Any], Path, str]:
    document = copy.deepcopy(VALID)
    how = draw(st.sampled_from(["replace", "replace", "replace", "unknown", "delete"]))
    if how == "unknown":
        mapping = draw(st.sampled_from(MAPPINGS))
        key = draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in node_at(document, mapping)))
        set_at(document, [*mapping, key], draw(odd_values))
        return document, [*mapping, key], how
    path = draw(st.sampled_from(PLACES))
    if how == "delete" and not isinstance(path[-1], int):
        delete_at(document, path)
    else:
        set_at(document, path, draw(odd_values))
    return document, path, how


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(broken())
def test_a_broken_manifest_is_one_line_naming_the_broken_field(case: tuple[dict[str, Any], Path, str]) -> None:
    document, path, how = case
    try:
        parse_manifest(document)
    except ManifestError as error:
        message = str(error)
        assert "\n" not in message and "\r" not in message, message
        # The field named leads to the broken place: the place itself, an object holding it (a rule about several
        # fields of one object names that object), or a field inside it (a value replaced by an empty mapping).
        assert names_the_place(error.field, path), f"{how} at {path}: error names {error.field!r}: {message}"
        assert len(message) < 2000  # a 10,000-character value is quoted, not the wall of text around it
    # Anything else (TypeError, RecursionError, ...) is a crash and fails the test by itself.


def test_non_finite_numbers_are_refused_where_a_number_is_expected() -> None:
    document = copy.deepcopy(VALID)
    document["spec"]["recovery"]["plsTarget"] = math.nan
    try:
        parse_manifest(document)
    except ManifestError as error:
        assert error.field == "spec.recovery.plsTarget"
    else:
        raise AssertionError("NaN accepted as a PLS target")
