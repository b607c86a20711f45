"""The Kubernetes backend: a kopf operator around the shared reconcile core.

Pure modules (no I/O): ``resources`` (pods, Service, ConfigMap), ``observe`` (pods and Redis ->
what the core sees), ``reporting`` (status, persisted memory). Effects: ``kube`` (the API
seam), ``coordinator`` (one job's loop), ``handlers`` (kopf), ``main`` (starting it).
The in-memory API server for tests and benchmarks lives in ``tests/support/emulator.py``.

Importing this package does not import kopf; ``handlers`` registers with kopf when imported.
"""

from trainingjob_operator.k8s.resources import LABEL_JOB, LABEL_RANK, LABEL_ROLE, pod_name

__all__ = ["LABEL_JOB", "LABEL_RANK", "LABEL_ROLE", "pod_name", "run_operator"]


def __getattr__(name: str) -> object:
    if name == "run_operator":  # lazily: keeps kopf out of `import trainingjob_operator.k8s`
        from trainingjob_operator.k8s.main import run_operator

        return run_operator
    raise AttributeError(name)
