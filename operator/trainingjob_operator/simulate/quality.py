"""A model-quality proxy: the expected change of held-out AUC as a linear function of PLS.

CPR observes that the final accuracy drop grows roughly linearly with PLS (``PAPERS.md`` §1.5 [R]); it
publishes no slope (§6). This project's own runs give one: ``benchmarks/cpr_table.py`` trains the demo
DLRM with four injected failures per run under every recovery variant and records each run's PLS and its
AUC against a failure-free run of the same backend and repeat. A least-squares line through the origin,
``dAUC = slope * PLS``, over the 16 runs with failures of ``benchmarks/results/cpr_table.json`` (PLS 0 to
0.077) gives :data:`AUC_PER_PLS` with standard error :data:`AUC_PER_PLS_SE`.

Weakness, stated plainly: the slope is 1.4 standard errors from zero; run-to-run AUC noise (about 0.005
between two failure-free runs) is larger than any effect PLS had at these PLS values; the teacher of the
synthetic data puts almost all its per-id signal in the hottest rows (``tailSignal: 0``), so losing a
shard's recent updates barely matters there; and a 2M-sample run says nothing about a 30-day one, where
lost updates are relearnt from later samples. Read the expected AUC change as an order of magnitude with
the sign CPR reports, not a prediction. :func:`calibrate` recomputes it from newer runs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

AUC_PER_PLS = -0.0268
"""AUC change per unit PLS (PLS 0.02 -> -0.00054 AUC), from ``benchmarks/results/cpr_table.json``."""

AUC_PER_PLS_SE = 0.0195
CALIBRATION_SOURCE = ("benchmarks/results/cpr_table.json: 16 runs with 4 injected failures each (local and "
                      "kubernetes backends, 2 repeats, variants full/partial/partial+MFU/partial+SSU); "
                      "least squares through the origin of auc_delta on pls")


@dataclasses.dataclass(frozen=True)
class Calibration:
    slope: float  # AUC per unit PLS
    standard_error: float | None
    runs: int
    source: str = CALIBRATION_SOURCE


DEFAULT_CALIBRATION = Calibration(AUC_PER_PLS, AUC_PER_PLS_SE, 16)


def expected_auc_change(pls: float, slope: float = AUC_PER_PLS) -> float:
    """The expected held-out AUC change of a run that lost ``pls`` of its samples (negative: worse)."""
    return slope * pls


def calibrate(rows: Iterable[Mapping[str, Any]], source: str = "rows") -> Calibration | None:
    """The slope of ``auc_delta`` on ``pls`` through the origin over rows with failures (``cpr_table.json``'s
    ``rows``: every variant but failure-free); None without a run that lost samples."""
    points = [(float(r.get("pls") or 0.0), float(r["auc_delta"])) for r in rows
              if r.get("variant") != "failure-free" and isinstance(r.get("auc_delta"), int | float)
              and (r.get("failures") or 0) > 0]
    sxx = sum(x * x for x, _ in points)
    if sxx <= 0.0:
        return None
    slope = sum(x * y for x, y in points) / sxx
    se = None
    if len(points) > 1:
        residual = sum((y - slope * x) ** 2 for x, y in points) / (len(points) - 1)
        se = math.sqrt(residual / sxx)
    return Calibration(slope, se, len(points), source)
