"""Reading manifests with errors a person can act on: one line naming the field and the expectation."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from trainingjob_operator.api.spec import TrainingJob


class ManifestError(ValueError):
    """An invalid TrainingJob manifest. ``field`` is the dotted path, ``str()`` is one line."""

    def __init__(self, field: str, expectation: str, source: str | None = None) -> None:
        self.field = field
        self.expectation = expectation
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{field}: {expectation}")


_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_SHOWN_CHARS = 80  # of a rejected value, in the one-line message


def _field_path(loc: tuple[int | str, ...]) -> str:
    """``spec.model.tableRows[2]``; a key that is not a plain name is quoted (``labels["a b\n"]``), so the
    path stays one unambiguous line whatever a user typed as a key."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _PLAIN_KEY.match(str(part)):
            path += f".{part}" if path else str(part)
        else:
            path += f"[{json.dumps(str(part), ensure_ascii=False)}]"
    return path or "(manifest)"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else f"{text[:_SHOWN_CHARS]}... ({len(text)} characters)"


def _expectation(error: dict[str, Any]) -> str:
    msg = str(error["msg"])
    msg = msg.removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return "unknown field (check its spelling and nesting)"
    if error["type"] == "missing":
        return "is required"
    given = error.get("input")
    if error["type"] not in ("model_type",) and not isinstance(given, dict | list) and "got" not in msg:
        msg += f" (got {_shown(given)})"
    msg = " ".join(msg.split()) if "\n" in msg or "\r" in msg else msg
    # A validator's own message may quote the value whole: a huge one is cut, as _shown cuts it.
    limit = 4 * _SHOWN_CHARS
    return msg if len(msg) <= limit else f"{msg[:limit]}... ({len(msg)} characters)"


def error_from_validation(exc: ValidationError, source: str | None = None) -> ManifestError:
    """The first validation error as a ManifestError (pydantic lists them in document order)."""
    first = exc.errors()[0]
    # Errors raised by a model validator have the model's path; the message names the field.
    return ManifestError(_field_path(tuple(first["loc"])), _expectation(dict(first)), source)


def parse_manifest(document: Any, source: str | None = None) -> TrainingJob:
    if not isinstance(document, dict):
        raise ManifestError("(manifest)", "must be a YAML mapping with apiVersion, kind, metadata, spec", source)
    try:
        return TrainingJob.model_validate(document)
    except ValidationError as exc:
        raise error_from_validation(exc, source) from None


def load_manifest(path: str | Path) -> TrainingJob:
    """Parse one TrainingJob manifest from a YAML file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ManifestError("(file)", f"cannot be read: {exc.strerror}", str(path)) from None
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ManifestError("(yaml)", f"is not valid YAML{where}", str(path)) from None
    # A file for kubectl apply may also hold what the job needs (a PersistentVolumeClaim): the job is its one
    # TrainingJob document.
    jobs = [d for d in documents if isinstance(d, dict) and d.get("kind") == "TrainingJob"] \
        if len(documents) > 1 else documents
    if len(jobs) != 1:
        raise ManifestError("(manifest)", f"expected exactly one TrainingJob document, found {len(jobs)}", str(path))
    return parse_manifest(jobs[0], str(path))
