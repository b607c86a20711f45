"""Small jobs and runs for the simulator's tests."""

from __future__ import annotations

from trainingjob_operator.api.spec import Role, TrainingJobSpec
from trainingjob_operator.simulate import Costs, FailureSpec, RunResult, build_config, simulate

HOUR = 3600.0
EMB_ONLY = ("embedding-server",)
ALL_ROLES = ("embedding-server", "sync-server", "trainer")


def small_spec(n_emb: int = 4, n_trainers: int = 2, **recovery: object) -> TrainingJobSpec:
    """A job whose interval bounds do not get in the way of the closed forms."""
    checkpoint = {"maxIntervalSeconds": 1e7, "minIntervalSeconds": 1.0}
    return TrainingJobSpec.model_validate({
        "replicas": {"trainer": {"replicas": n_trainers}, "embeddingServer": {"replicas": n_emb}},
        "recovery": {"checkpoint": checkpoint, **recovery},
    })


def run(mode: str, *, t_fail_job_s: float, days: float, costs: Costs, fixed_interval_s: float | None = None,
        roles: tuple[str, ...] = EMB_ONLY, seed: int = 0, spec: TrainingJobSpec | None = None,
        distribution: str = "exponential", weibull_shape: float = 1.0) -> RunResult:
    """One run whose failing nodes together fail every ``t_fail_job_s`` on average (the tuner's prior is the
    truth)."""
    spec = spec or small_spec()
    node_s = t_fail_job_s * sum(spec.replicas.count(Role(role)) for role in roles)
    failures = FailureSpec(mtbf_node_s=node_s, roles=roles, distribution=distribution, weibull_shape=weibull_shape)
    config = build_config(spec, mode, costs=costs, failures=failures, days=days, seed=seed,
                          prior_hours=node_s / HOUR, fixed_interval_s=fixed_interval_s)
    return simulate(config)
