"""The run summary written by `trainingjob run --summary PATH` (a pure function of what was seen)."""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path
from typing import Any

from trainingjob_operator.api.spec import TrainingJob
from trainingjob_operator.local.processes import Incarnation
from trainingjob_operator.local.recovery import FailureRecord

SCHEMA_VERSION = 1


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def build_summary(
    *, job: TrainingJob, status: str, started: float, ended: float, results: dict[int, dict[str, Any]],
    history: dict[str, list[Incarnation]], restarts: dict[str, int], failures: list[FailureRecord],
    conditions: list[dict[str, Any]], lost_samples: float, recovery: dict[str, Any] | None = None,
    progress: dict[int, int] | None = None,
) -> dict[str, Any]:
    """``progress``: each trainer's last reported samples, which count where a trainer has no final result (a
    failed or interrupted job keeps what it trained, and its last learning-curve AUC, in its summary)."""
    recovery = dict(recovery or {})
    trainers = [results[r] for r in sorted(results)]
    trained = sum(int(t.get("trained_samples", 0)) for t in trainers)
    train_wall = max((float(t.get("wall_seconds", 0.0)) for t in trainers), default=0.0)
    replicas = []
    peak_by_role: dict[str, float] = {}
    for name, incarnations in history.items():
        role, _, rank = name.rpartition("-")
        peak = max((i.peak_rss_mb for i in incarnations), default=0.0)
        peak_by_role[role] = max(peak_by_role.get(role, 0.0), peak)
        replicas.append({
            "role": role, "rank": int(rank), "restarts": restarts.get(name, 0),
            "pids": [dataclasses.asdict(i) for i in incarnations], "peak_rss_mb": round(peak, 1),
        })
    samples = sum(int(t.get("samples", 0)) for t in trainers) + sum(
        n for rank, n in (progress or {}).items() if rank not in results)
    final_aucs = [float(t["auc"]) for t in trainers if "auc" in t]
    curve = sorted(recovery.get("curve") or [], key=lambda p: p.get("samples", 0))
    auc, auc_from = _mean(final_aucs), "final evaluation" if final_aucs else None
    if auc is None and curve:
        auc, auc_from = float(curve[-1]["auc"]), f"learning curve at {curve[-1].get('samples')} samples"
    n_emb = job.spec.replicas.embedding_server.replicas
    stalls = [float(s) for s in recovery.pop("o_save_s", [])]
    checkpoint = {
        "saves": len(recovery.get("checkpoints", [])),
        "cost": recovery.pop("save_cost", None),
        "stall_seconds_total": round(sum(stalls), 3),
        # Each shard stalls only its own RPCs; per-shard stall time over training time.
        "overhead_fraction": round(sum(stalls) / n_emb / train_wall, 5) if train_wall > 0 else None,
        "o_load_s": recovery.pop("o_load_s", []),
        "errors": recovery.pop("checkpoint_errors", {}),
    }
    return {
        "schemaVersion": SCHEMA_VERSION,
        "job": job.name,
        "namespace": job.namespace,
        "status": status,
        "samples": samples,
        "target_samples": job.spec.data.planned_samples,
        "auc": auc,
        "auc_from": auc_from,
        "logloss": _mean([float(t["log_loss"]) for t in trainers if "log_loss" in t]),
        "normalized_entropy": _mean([float(t["normalized_entropy"]) for t in trainers if "normalized_entropy" in t]),
        "teacher_auc": next((t["teacher_auc"] for t in trainers if "teacher_auc" in t), None),
        "wall_seconds": round(ended - started, 3),
        "train_seconds": round(train_wall, 3),
        "samples_per_second": round(trained / train_wall, 1) if train_wall > 0 else None,
        "sync": {
            "mode": job.spec.training.sync.mode.value,
            "algorithm": job.spec.training.sync.algorithm.value,
            "exchanges": sum(int(t.get("syncs", 0)) for t in trainers),
            "sync_gap_steps": _mean([float(t["sync_gap_steps"]) for t in trainers if "sync_gap_steps" in t]),
        },
        "peak_rss_mb_by_role": {k: round(v, 1) for k, v in sorted(peak_by_role.items())},
        "replicas": replicas,
        "failures": [dataclasses.asdict(f) for f in failures],
        "lost_samples": round(lost_samples),
        # A portion in [0, 1] (core.accounting): a shard losing the same samples twice counts them once.
        "pls": round(min(1.0, lost_samples / samples), 6) if samples else None,
        "restarts": {f"{r['role']}-{r['rank']}": r["restarts"] for r in replicas},
        "checkpoint": checkpoint,
        "recovery": recovery,
        "conditions": conditions,
        "trainers": trainers,
    }


def write_summary(summary: dict[str, Any], path: Path) -> None:
    """Atomic write: a reader never sees half a summary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def step_at(trace: list[tuple[float, int, int]], when: float) -> int | None:
    """The last step rank 0 reported at or before ``when`` (absolute time)."""
    steps = [step for t, step, _ in trace if t <= when]
    return steps[-1] if steps else None


def restarts_of(failures: list[FailureRecord], resumes: list[dict[str, Any]], trace: list[tuple[float, int, int]],
                started: float) -> list[dict[str, Any]]:
    """Per failure of a pytorch workload: when training resumed (the first step of a later generation), from
    which checkpoint step, and the work lost (steps trained before the failure and trained again)."""
    out = []
    for failure in failures:
        failed_at = started + (failure.injected_at_s if failure.injected_at_s is not None else failure.time_s)
        resume = next((r for r in resumes if int(r["generation"]) >= failure.generation and r["time"] >= failed_at),
                      None)
        before = step_at(trace, failed_at)
        entry: dict[str, Any] = {"replica": failure.name, "generation": failure.generation,
                                 "step_at_failure": before}
        if resume is not None:
            entry["resume_seconds"] = round(float(resume["time"]) - failed_at, 3)
            entry["resumed_from_step"] = resume.get("resumed_from")
            if before is not None:
                entry["lost_steps"] = before - int(resume.get("resumed_from") or 0)
        out.append(entry)
    return out


def build_pytorch_summary(facts: dict[str, Any]) -> dict[str, Any]:
    """The summary of a pytorch workload: progress as its rank 0 reported it, the script's own result, each
    failure's in-place restart, and the checkpoints with the tuned interval."""
    job: TrainingJob = facts["job"]
    started, ended = float(facts["started"]), float(facts["ended"])
    steps = facts["steps"]
    failures: list[FailureRecord] = facts["failures"]
    trace = facts.get("trace") or []
    replicas = []
    for name, incarnations in facts["history"].items():
        role, _, rank = name.rpartition("-")
        replicas.append({"role": role, "rank": int(rank), "restarts": facts["restarts"].get(name, 0),
                         "pids": [dataclasses.asdict(i) for i in incarnations],
                         "peak_rss_mb": round(max((i.peak_rss_mb for i in incarnations), default=0.0), 1)})
    recovery = dict(facts["recovery"])
    saves = [float(s) for s in facts["save_costs"]]
    restarts = restarts_of(failures, facts["resumes"], trace, started)
    lost = [r["lost_steps"] for r in restarts if "lost_steps" in r]
    resumed = [r["resume_seconds"] for r in restarts if "resume_seconds" in r]
    return {
        "schemaVersion": SCHEMA_VERSION,
        "job": job.name,
        "namespace": job.namespace,
        "workload": "pytorch",
        "status": facts["status"],
        "wall_seconds": round(ended - started, 3),
        "step": steps.step if steps is not None else 0,
        "tokens": steps.tokens if steps is not None else 0,
        "tokens_per_second": None if steps is None or steps.tokens_per_second is None else round(
            steps.tokens_per_second, 1),
        "loss": steps.loss if steps is not None else None,
        "result": facts["result"],
        "failures": [dataclasses.asdict(f) for f in failures],
        "restarts_in_place": max(0, len(facts["resumes"]) - 1),
        "recoveries": restarts,
        "lost_steps_per_failure": _mean([float(x) for x in lost]),
        "resume_seconds_median": statistics.median(resumed) if resumed else None,
        "checkpoint": {
            "saves": len(facts["checkpoints"]),
            "o_save_s_median": statistics.median(saves) if saves else None,
            "save_seconds_total": round(sum(saves), 3),
            "o_load_s": [round(float(x), 4) for x in facts["load_costs"]],
            "interval": recovery.get("interval"),
            "interval_history": recovery.get("interval_history"),
        },
        "replicas": replicas,
        "restarts": {f"{r['role']}-{r['rank']}": r["restarts"] for r in replicas},
        "conditions": facts["conditions"],
    }
