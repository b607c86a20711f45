"""Reading what a real run measured: costs and failures from a local run's summary JSON.

``trainingjob run --summary S`` writes (``local/summary.py``): ``checkpoint.cost`` (the tuner's save
cost: ``o_save_s``, ``partial_o_save_s``, ``uncovered``, and its parts), ``checkpoint.o_load_s`` (every
measured shard load) and ``failures`` (``role``, ``rank``, ``time_s``, ``recovered_after_s``, ...). A
failure log is that ``failures`` list, in a summary or on its own.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from trainingjob_operator.api.spec import ROLES, Role, TrainingJob
from trainingjob_operator.planning import assumed_measurements
from trainingjob_operator.simulate.config import Costs, LoggedFailure, SimulateInputError


def _read_json(path: Path, option: str) -> Any:
    try:
        text = path.read_text()
    except OSError as exc:
        raise SimulateInputError(option, f"{path}: cannot be read: {exc.strerror or exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SimulateInputError(option, f"{path}: not JSON (line {exc.lineno}: {exc.msg})") from None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return None
    return float(value)


def measured_costs(summary: Any, path: Path | str = "summary") -> dict[str, float]:
    """The costs a summary holds, by :class:`Costs` field name (those it lacks are left out)."""
    if not isinstance(summary, dict):
        raise SimulateInputError("--summary", f"{path}: expected a run summary (a JSON object)")
    out: dict[str, float] = {}
    checkpoint: dict[str, Any] = summary["checkpoint"] if isinstance(summary.get("checkpoint"), dict) else {}
    if summary.get("workload") == "pytorch":
        return _pytorch_costs(summary, checkpoint)
    cost: dict[str, Any] = checkpoint["cost"] if isinstance(checkpoint.get("cost"), dict) else {}
    for key, field in (("o_save_s", "o_save_s"), ("partial_o_save_s", "o_save_partial_s"),
                       ("uncovered", "uncovered")):
        value = _number(cost.get(key))
        if value is not None:
            out[field] = value
    loads = [v for v in (_number(x) for x in checkpoint.get("o_load_s") or []) if v is not None]
    if loads:
        out["o_load_s"] = statistics.median(loads)
    failures = [f for f in summary.get("failures") or [] if isinstance(f, dict)]
    recovered = {role: [v for f in failures if f.get("role") == role
                        if (v := _number(f.get("recovered_after_s"))) is not None] for role in (r.value for r in ROLES)}
    others = recovered[Role.TRAINER.value] + recovered[Role.SYNC_SERVER.value]
    if others:
        out["o_res_s"] = statistics.median(others)
    elif recovered[Role.EMBEDDING_SERVER.value]:
        # A replaced server is ready once its shard is loaded: its recovery time includes the load.
        out["o_res_s"] = max(0.0, statistics.median(recovered[Role.EMBEDDING_SERVER.value]) - out.get("o_load_s", 0.0))
    return out


def _pytorch_costs(summary: dict[str, Any], checkpoint: dict[str, Any]) -> dict[str, float]:
    """A pytorch workload's summary: a save's cost (the loop stands still for all of it), a load's, and the
    restart (a failure to the first step of the next generation, less the load it includes)."""
    out: dict[str, float] = {}
    if (save := _number(checkpoint.get("o_save_s_median"))) is not None:
        out["o_save_s"] = save
    loads = [v for v in (_number(x) for x in checkpoint.get("o_load_s") or []) if v is not None]
    if loads:
        out["o_load_s"] = statistics.median(loads)
    resumes = [v for r in summary.get("recoveries") or [] if isinstance(r, dict)
               if (v := _number(r.get("resume_seconds"))) is not None]
    if resumes:
        out["o_res_s"] = max(0.0, statistics.median(resumes) - out.get("o_load_s", 0.0))
    return out


def resolve_costs(job: TrainingJob, *, summary: Path | None = None, o_save: float | None = None,
                  o_save_partial: float | None = None, o_load: float | None = None, o_res: float | None = None,
                  uncovered: float | None = None) -> tuple[Costs, list[str]]:
    """The costs to simulate with: each option, else the summary's measurement, else ``trainingjob plan``'s
    size model (``planning.assumed_measurements`` on the scaled job). Returns them and where each came from."""
    measured = measured_costs(_read_json(summary, "--summary"), summary) if summary is not None else {}
    assumed = assumed_measurements(job)
    fallback = {"o_save_s": assumed.o_save_s, "o_load_s": assumed.o_load_s, "o_res_s": assumed.o_res_s}
    given = {"o_save_s": o_save, "o_save_partial_s": o_save_partial, "o_load_s": o_load, "o_res_s": o_res,
             "uncovered": uncovered}
    values: dict[str, float | None] = {}
    notes = []
    for field, value in given.items():
        if value is not None:
            values[field], origin = value, "option"
        elif field in measured:
            values[field], origin = measured[field], f"summary {summary}"
        elif field in fallback:
            values[field], origin = fallback[field], "assumed (trainingjob plan's size model)"
        else:
            values[field], origin = None, "default"
        if values[field] is not None:
            notes.append(f"{field.removesuffix('_s')} = {values[field]:.6g} ({origin})")
    o_save_s, o_load_s, o_res_s = values["o_save_s"], values["o_load_s"], values["o_res_s"]
    assert o_save_s is not None and o_load_s is not None and o_res_s is not None
    costs = Costs(o_save_s=o_save_s, o_load_s=o_load_s, o_res_s=o_res_s, o_save_partial_s=values["o_save_partial_s"],
                  uncovered=values["uncovered"], source="; ".join(notes))
    return costs, notes


def failure_log(path: Path) -> tuple[LoggedFailure, ...]:
    """The failures to replay: a summary's ``failures`` list, or such a list on its own."""
    data = _read_json(path, "--failure-log")
    entries = data.get("failures") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise SimulateInputError("--failure-log", f"{path}: expected a summary with a failures list, or a list")
    roles = {r.value for r in ROLES}
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise SimulateInputError("--failure-log", f"{path}: failures[{i}] is not an object")
        role, rank, when = entry.get("role"), entry.get("rank"), entry.get("time_s")
        if role not in roles:
            raise SimulateInputError("--failure-log", f"{path}: failures[{i}].role must be one of "
                                                      f"{', '.join(sorted(roles))}, got {role!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise SimulateInputError("--failure-log", f"{path}: failures[{i}].rank must be a rank (0, 1, ...), "
                                                      f"got {rank!r}")
        seconds = _number(when)
        if seconds is None:
            raise SimulateInputError("--failure-log", f"{path}: failures[{i}].time_s must be seconds since the "
                                                      f"job started, got {when!r}")
        out.append(LoggedFailure(str(role), int(rank), seconds))
    if not out:
        raise SimulateInputError("--failure-log", f"{path}: no failures to replay")
    return tuple(out)
