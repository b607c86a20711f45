"""The kopf handlers of the TrainingJob operator: decorators and thin bodies only.

Run it with ``trainingjob operator`` (``main.run_operator``) or plainly with
``kopf run -m trainingjob_operator.k8s.handlers --all-namespaces`` (settings from TJ_* env).

- ``configure`` (startup): kopf settings, the shared ``OperatorContext`` in ``memo.tj``;
- ``login``: an explicit connection when embedded (tests), else kopf's usual kubeconfig /
  in-cluster login;
- ``tj_pods`` (index): every pod labelled ``training.cpr.dev/job``, as ``ObservedReplica``
  values under ``(namespace, job)``; the coordinators read it instead of LISTing pods;
- ``pod_changed`` (event): wakes the job's coordinator at once;
- ``validate_job`` (create/resume/update): a bad spec fails the job with a condition naming the
  field and an Event, once, instead of an exception loop;
- ``coordinate`` (daemon): one ``JobCoordinator`` per TrainingJob, for the job's whole life;
- ``delete_children`` (delete): removes the job's pods, Service and ConfigMap and its Redis keys.
  A real cluster's garbage collector would do the Kubernetes part through ownerReferences; doing
  it here makes deletion immediate and works where there is no GC (the test emulator).

Why a daemon per job rather than a kopf timer: a timer cannot be woken early, so a failed pod would
wait for the next interval, and reconciling from the pod-event handler as well would run two steps
of one job at once. The daemon is the job's single writer: it steps at once when ``pod_changed``
pokes it and at least every ``tick_s`` otherwise (heartbeats), and it exits once the job is
finished and quiet, so finished jobs cost nothing.

Kopf's daemons keep a finalizer on every TrainingJob while the operator runs: delete the
TrainingJobs before uninstalling the operator, or they stay until it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import kopf

from trainingjob_operator.api.loading import ManifestError
from trainingjob_operator.api.spec import GROUP, PLURAL, VERSION, TrainingJobSpec, frozen_change
from trainingjob_operator.coordination import revoke_job_user
from trainingjob_operator.core.standby import StandbyView
from trainingjob_operator.k8s import resources
from trainingjob_operator.k8s.config import OperatorConfig
from trainingjob_operator.k8s.coordinator import JobCoordinator, JobKey, OperatorContext
from trainingjob_operator.k8s.kube import Kube
from trainingjob_operator.k8s.metrics import Metrics
from trainingjob_operator.k8s.observe import observe_pod, observe_standby
from trainingjob_operator.k8s.reporting import invalid_spec_status

FINALIZER = f"{GROUP}/finalizer"
JOB_PODS = {resources.LABEL_JOB: kopf.PRESENT}


def job_key(namespace: str | None, name: str) -> JobKey:
    return (namespace or "default", name)  # TrainingJobs are namespaced: never None in practice


def pods_index(kwargs: dict[str, Any]) -> kopf.Index[JobKey, Any]:
    """The ``tj_pods`` index, which kopf passes by the indexing handler's name."""
    index: kopf.Index[JobKey, Any] = kwargs["tj_pods"]
    return index


def context_of(memo: Any) -> OperatorContext:
    ctx: OperatorContext = memo["tj"]
    return ctx


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    config: OperatorConfig = memo.get("config") or OperatorConfig.from_env()
    # kopf's bookkeeping goes to annotations under our group, so status is ours alone.
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.posting.reporting_component = resources.MANAGED_BY
    settings.posting.level = logging.WARNING  # log records become Events only from WARNING up
    # Server-side filtering: the operator never receives pods of other workloads.
    settings.watching.label_selectors["v1", "pods"] = resources.LABEL_JOB
    settings.watching.server_timeout = 300  # re-list every 5 minutes at worst
    settings.watching.client_timeout = 330
    ctx = OperatorContext(config=config, kube=Kube(settings), metrics=Metrics())
    if config.metrics_port is not None:
        ctx.stop_metrics = ctx.metrics.serve(config.metrics_port)
    memo["config"], memo["tj"] = config, ctx
    logger.info(f"TrainingJob operator configured: tick {config.tick_s}s, "
                f"default Redis {'set' if config.default_redis_url else 'none'}")


@kopf.on.cleanup()
def cleanup(memo: Any, **_: Any) -> None:
    if "tj" in memo:
        context_of(memo).close()


@kopf.on.login()
def login(memo: Any, **kwargs: Any) -> kopf.ConnectionInfo | None:
    config: OperatorConfig | None = memo.get("config")
    if config is not None and config.connection is not None:
        connection: kopf.ConnectionInfo = config.connection
        return connection
    return kopf.login_via_client(**kwargs)


# Pod handlers are async on purpose: kopf runs sync handlers in a thread pool, one hop per event.
@kopf.index("v1", "pods", labels=JOB_PODS)
async def tj_pods(namespace: str | None, name: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    """(namespace, job) -> ObservedReplica, only for pods named as the operator names them (a replica's own
    name, or a standby's that took the replica over), and StandbyView for warm standbys still waiting."""
    job = labels[resources.LABEL_JOB]
    if namespace is None:
        return {}
    observed = observe_pod(body)
    if observed is not None:
        rid = observed.id
        if name != resources.pod_name(job, rid) and not resources.is_standby_name(job, rid.role, name):
            return {}
        return {(namespace, job): observed}
    standby = observe_standby(body)
    if standby is None or not resources.is_standby_name(job, standby.role, name):
        return {}
    return {(namespace, job): standby}


@kopf.on.event("v1", "pods", labels=JOB_PODS)
async def pod_changed(namespace: str | None, labels: kopf.Labels, memo: Any, **_: Any) -> None:
    coordinator = context_of(memo).jobs.get(job_key(namespace, labels[resources.LABEL_JOB]))
    if coordinator is not None:
        coordinator.poke()


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
def validate_job(body: kopf.Body, status: kopf.Status, patch: kopf.Patch, memo: Any,
                 logger: kopf.Logger, **_: Any) -> None:
    try:
        resources.admit(body, *context_of(memo).config.job_defaults)
    except ManifestError as e:
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        if conditions.get("Failed", {}).get("message") == str(e):
            return  # reported already (operator restart)
        patch.status.update(invalid_spec_status(e, time.time()))
        kopf.event(body, type="Warning", reason="InvalidSpec", message=str(e))
        logger.error(f"invalid TrainingJob: {e}")


def _valid_spec(raw: Any) -> TrainingJobSpec | None:
    try:
        return TrainingJobSpec.model_validate(raw or {})
    except ValueError:
        return None


@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def spec_changed(body: kopf.Body, name: str, namespace: str | None, memo: Any, logger: kopf.Logger, old: Any,
                 **_: Any) -> None:
    ctx = context_of(memo)
    try:
        job, _url = resources.admit(body, *ctx.config.job_defaults)
        before = _valid_spec(old)  # None: the old spec was invalid (the job never ran), any valid one may follow
        if before is not None and (frozen := frozen_change(before, job.spec)) is not None:
            raise ManifestError(*frozen)
    except ManifestError as e:
        kopf.event(body, type="Warning", reason="SpecUpdateRejected", message=f"{e}; keeping the previous spec")
        logger.error(f"spec update rejected: {e}")
        return
    coordinator = ctx.jobs.get(job_key(namespace, name))
    if coordinator is not None:
        coordinator.poke()


@kopf.daemon(GROUP, VERSION, PLURAL, id="coordinator", cancellation_backoff=5.0, cancellation_timeout=10.0)
async def coordinate(body: kopf.Body, name: str, namespace: str | None, memo: Any, stopped: kopf.DaemonStopped,
                     **kwargs: Any) -> None:
    ctx, key = context_of(memo), job_key(namespace, name)
    coordinator = JobCoordinator(ctx, body, pods_index(kwargs))
    ctx.jobs[key] = coordinator
    try:
        await coordinator.run(stopped)
    finally:
        if ctx.jobs.get(key) is coordinator:
            del ctx.jobs[key]


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def delete_children(body: kopf.Body, name: str, namespace: str | None, memo: Any, logger: kopf.Logger,
                          **kwargs: Any) -> None:
    ctx, key = context_of(memo), job_key(namespace, name)
    ns = key[0]
    coordinator = ctx.jobs.get(key)
    if coordinator is not None:  # let it finish its step first, so it creates nothing afterwards
        coordinator.poke()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(coordinator.exited.wait(), timeout=10.0)
    # Only what this TrainingJob owns: a same-named Service or ConfigMap of someone else's stays.
    uid = resources.Owner.of(body).uid or None
    for observed in list(pods_index(kwargs).get(key, ())):
        pod = observed.name if isinstance(observed, StandbyView) else observed.handle or resources.pod_name(
            name, observed.id)
        await ctx.kube.delete_object(ns, "pods", pod, owner_uid=uid)
    await ctx.kube.delete_object(ns, "services", resources.service_name(name), owner_uid=uid)
    await ctx.kube.delete_object(ns, "configmaps", resources.config_map_name(name), owner_uid=uid)
    await ctx.kube.delete_object(ns, "secrets", resources.redis_secret_name(name), owner_uid=uid)
    with contextlib.suppress(ManifestError):
        job, url = resources.admit(body, *ctx.config.job_defaults)
        for claim in resources.render_checkpoint_claims(job, owner=resources.Owner.of(body)):
            if claim["metadata"].get("ownerReferences"):  # retainPolicy Retain: the claims stay
                await ctx.kube.delete_object(ns, "persistentvolumeclaims", claim["metadata"]["name"], owner_uid=uid)
        coord = ctx.coordination(url, ns, name)
        with contextlib.suppress(Exception):
            await ctx.in_thread(coord.clear)
        if ctx.config.job_redis_users:  # its Secret goes with the job (owned); its Redis user goes here
            with contextlib.suppress(Exception):
                await ctx.in_thread(revoke_job_user, coord.r, ns, name)
    ctx.metrics.set_phase(key, None)
    logger.info("children deleted")


@kopf.on.probe(id="jobs")
def coordinated_jobs(memo: Any, **_: Any) -> int:
    """For ``--liveness``: how many jobs this operator coordinates right now."""
    return len(context_of(memo).jobs) if "tj" in memo else 0
