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
