"""A discrete-event simulator of a TrainingJob at cluster scale (``trainingjob simulate``, ``docs/simulate.md``).

It is a third shell around the product's pure core: it builds ``ObservedReplica``s from simulated
replicas, calls ``reconcile.reconcile`` and applies its actions, re-plans with
``core.recovery.tuning_inputs`` and ``tuning.plan``, and counts lost samples with ``core.accounting``.
Nothing here touches processes, Redis or Kubernetes; matplotlib is imported only to draw plots.
"""

from trainingjob_operator.simulate.config import (
    MODES,
    Costs,
    FailureSpec,
    LoggedFailure,
    SimConfig,
    SimulateInputError,
    build_config,
    scale_spec,
)
from trainingjob_operator.simulate.engine import RunResult, Simulation, closed_form, simulate

__all__ = [
    "MODES",
    "Costs",
    "FailureSpec",
    "LoggedFailure",
    "RunResult",
    "SimConfig",
    "SimulateInputError",
    "Simulation",
    "build_config",
    "closed_form",
    "scale_spec",
    "simulate",
]
