"""Prometheus metrics of the operator, in a registry of their own (one per operator instance)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from trainingjob_operator.api.status import Phase

# Replacement latency spans milliseconds (emulator) to minutes (image pulls, checkpoint loads).
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.jobs = Gauge("trainingjob_jobs", "TrainingJobs coordinated by this operator, by phase.",
                          ["phase"], registry=self.registry)
        self.failures = Counter("trainingjob_replica_failures", "Replica failures detected, by role and reason.",
                                ["role", "reason"], registry=self.registry)
        self.restarts = Counter("trainingjob_replica_restarts", "Replicas recreated after a failure, by role.",
                                ["role"], registry=self.registry)
        self.stuck = Counter("trainingjob_replicas_stuck", "Replicas found unable to start (image pull, "
                             "unschedulable, config error, refused create), by role and reason.",
                             ["role", "reason"], registry=self.registry)
        self.failure_to_replacement = Histogram(
            "trainingjob_failure_to_replacement_seconds",
            "From detecting a replica failure to the replacement pod's create request.",
            buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.reconcile = Histogram("trainingjob_reconcile_seconds", "One reconcile step of one job.",
                                   buckets=_LATENCY_BUCKETS, registry=self.registry)
        self._phases: dict[tuple[str, str], Phase] = {}
        for phase in Phase:
            self.jobs.labels(phase.value).set(0)

    def set_phase(self, job: tuple[str, str], phase: Phase | None) -> None:
        """Track a job's phase (None: the job is gone) and refresh the per-phase gauge."""
        before = self._phases.pop(job, None)
        if phase is not None:
            self._phases[job] = phase
        if before is not phase:
            if before is not None:
                self.jobs.labels(before.value).dec()
            if phase is not None:
                self.jobs.labels(phase.value).inc()

    def serve(self, port: int, addr: str = "0.0.0.0") -> Callable[[], None]:
        """Serve /metrics on a port in a thread; returns the function that stops it."""
        server, thread = start_http_server(port, addr=addr, registry=self.registry)

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

        return stop
