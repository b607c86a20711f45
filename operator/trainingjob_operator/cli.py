"""`trainingjob`: run a TrainingJob locally, plan its checkpoint interval, run the operator."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from trainingjob_operator.api import ManifestError, TrainingJob, load_manifest
from trainingjob_operator.local.injection import Injection

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="TrainingJob: DLRM training that replaces only what failed.")
err = Console(stderr=True)
EXIT_BAD_INPUT = 2


def _load(path: Path) -> TrainingJob:
    try:
        return load_manifest(path)
    except ManifestError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None


@app.command()
def run(
    manifest: Annotated[Path, typer.Argument(help="TrainingJob YAML")],
    summary: Annotated[Path | None, typer.Option(help="Where to write the summary JSON")] = None,
    workdir: Annotated[Path | None, typer.Option(help="Logs, Redis and checkpoints; default runs/<job>")] = None,
    redis_url: Annotated[str | None, typer.Option(help="Use this Redis instead of an embedded one")] = None,
    inject_failures: Annotated[str | None, typer.Option(
        help="Kill replicas: 'embedding-server/1@60s,trainer/0@2m:stop' or 'random:any:mtbf=120s:seed=7'")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Take over the run in the workdir whose supervisor died: adopt its running replicas, "
                         "replace the ones that died, and go on")] = False,
    orphan_grace: Annotated[float, typer.Option(
        min=0.0, help="Seconds the replicas keep training after their supervisor died, for --resume to adopt "
                      "them; then they are stopped")] = 60.0,
) -> None:
    """Run every replica of the job as a local process; exit 0 only if the job succeeded."""
    import logging

    from trainingjob_operator.local.progress import ProgressDisplay
    from trainingjob_operator.local.runstate import StateError
    from trainingjob_operator.local.summary import write_summary
    from trainingjob_operator.local.supervisor import LocalSupervisor, RunOptions

    job = _load(manifest)
    injections = _injections(job, inject_failures) if inject_failures else []
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    options = RunOptions(workdir=workdir, redis_url=redis_url, injections=injections, resume=resume,
                         orphan_grace_s=orphan_grace)
    try:
        with ProgressDisplay(job.name) as display:
            supervisor = LocalSupervisor(job, options, on_tick=display.update)
            result = supervisor.run()
    except StateError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    path = summary or supervisor.workdir / "summary.json"
    write_summary(result, path)
    auc = result.get("auc")
    teacher = result.get("teacher_auc")
    if job.spec.workload.value == "pytorch":
        err.print(f"{job.name}: [bold]{result['status']}[/] in {result['wall_seconds']:.1f}s, step {result['step']}, "
                  f"loss {result['loss']}, {len(result['failures'])} failures, {result['restarts_in_place']} in-place "
                  f"restarts; result {json.dumps(result['result'])}; summary: {path}", highlight=False, soft_wrap=True)
    else:
        err.print(
            f"{job.name}: [bold]{result['status']}[/] in {result['wall_seconds']:.1f}s, {result['samples']:,} samples, "
            f"AUC {auc if auc is None else f'{auc:.4f}'}"
            + (f" (teacher {teacher:.4f})" if teacher is not None else "")
            + f", {len(result['failures'])} failures; summary: {path}", highlight=False, soft_wrap=True)
    if result["status"] == "Interrupted":
        raise typer.Exit(130)
    raise typer.Exit(0 if result["status"] == "Succeeded" else 1)


def _injections(job: TrainingJob, text: str) -> list[Injection]:
    from trainingjob_operator.local.injection import InjectionSpecError, parse_injection_spec, plan_injections

    try:
        replicas = {role.value: job.spec.replicas.count(role) for role in job.spec.roles()}
        return plan_injections(parse_injection_spec(text), replicas, horizon_s=7 * 24 * 3600.0)
    except InjectionSpecError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None


@app.command()
def validate(manifest: Annotated[Path, typer.Argument(help="TrainingJob YAML")]) -> None:
    """Check a manifest and print it with every default filled in."""
    job = _load(manifest)
    print(json.dumps(job.to_wire(), indent=2))


@app.command()
def plan(
    manifest: Annotated[Path, typer.Argument(help="TrainingJob YAML")],
    o_save: Annotated[float | None, typer.Option(help="Measured checkpoint stall per save, seconds")] = None,
    o_load: Annotated[float | None, typer.Option(help="Measured shard load time, seconds")] = None,
    o_res: Annotated[float | None, typer.Option(help="Measured replacement (reschedule) time, seconds")] = None,
) -> None:
    """What-if table of checkpoint intervals: expected overhead and lost samples for full, partial, auto."""
    from trainingjob_operator.planning import plan_table, render_plan
    from trainingjob_operator.tuning import Measurements

    job = _load(manifest)
    measured = None
    if o_save is not None or o_load is not None or o_res is not None:
        measured = Measurements(o_save_s=o_save, o_load_s=o_load, o_res_s=o_res)
    Console(width=None if sys.stdout.isatty() else 160).print(render_plan(plan_table(job, measured)))


@app.command("uninstall-jobs")
def uninstall_jobs(
    namespace: Annotated[list[str] | None, typer.Option(help="Only these namespaces (repeat); default: all")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the operator to release them")] = 300.0,
) -> None:
    """Delete every TrainingJob and wait until the operator has released them (the chart's pre-delete hook):
    uninstalling the operator first would leave them, and their namespaces, waiting on its finalizer."""
    from trainingjob_operator.k8s.uninstall import delete_all_jobs

    left = delete_all_jobs(namespace or None, timeout, lambda line: err.print(line, highlight=False, soft_wrap=True))
    if left:
        raise typer.Exit(1)


@app.command()
def status(
    manifest: Annotated[Path, typer.Argument(help="TrainingJob YAML")],
    redis_url: Annotated[str | None, typer.Option(help="Read live progress from this Redis")] = None,
    summary: Annotated[Path | None, typer.Option(help="Summary JSON of a finished local run")] = None,
) -> None:
    """Show a job's progress: live from Redis, or from the summary of a finished local run."""
    job = _load(manifest)
    url = redis_url or job.spec.redis.url
    if url:
        from trainingjob_operator.coordination import Coordination
        from trainingjob_operator.tuner import lost_samples

        coord = Coordination(url, job.namespace, job.name)
        trainers = job.spec.replicas.trainer.replicas
        progress = coord.all_progress(trainers)
        print(json.dumps({
            "job": job.name, "generation": coord.generation(), "samples": sum(p.samples for p in progress.values()),
            "target_samples": job.spec.data.planned_samples, "lost_samples": round(lost_samples(coord, job.spec)),
            "interval_seconds": coord.interval(), "failures": coord.failures(),
            "trainers": {rank: vars(p) for rank, p in progress.items()},
        }, indent=2))
        return
    path = summary or Path("runs") / job.name / "summary.json"
    if not path.exists():
        err.print(f"[red]error:[/] no Redis URL and no summary at {path}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    data = json.loads(path.read_text())
    keys = ("job", "status", "samples", "auc", "teacher_auc", "wall_seconds", "samples_per_second", "restarts",
            "lost_samples", "pls")
    print(json.dumps({k: data.get(k) for k in keys}, indent=2))


@app.command()
def operator(
    namespace: Annotated[list[str] | None, typer.Option(help="Serve this namespace (repeatable)")] = None,
    all_namespaces: Annotated[bool, typer.Option("--all-namespaces", "-A", help="Serve every namespace")] = False,
    standalone: Annotated[bool, typer.Option(help="No peering: for a single operator replica")] = False,
    peering: Annotated[str | None, typer.Option(help="kopf peering name (HA with several replicas)")] = None,
    priority: Annotated[int | None, typer.Option(help="Peering priority; highest replica works")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Prometheus /metrics port")] = 8000,
    liveness: Annotated[str | None, typer.Option(help="kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz")]
    = None,
    redis_url: Annotated[str | None, typer.Option(help="Redis for jobs without spec.redis.url")] = None,
    log_level: Annotated[str, typer.Option(help="Log level")] = "INFO",
    console_logs: Annotated[bool, typer.Option(help="Human-readable logs instead of JSON")] = False,
) -> None:
    """Run the kopf operator that reconciles TrainingJobs on a Kubernetes cluster."""
    from trainingjob_operator.k8s.main import run_operator

    if all_namespaces and namespace:
        err.print("[red]error:[/] --all-namespaces and --namespace exclude each other", highlight=False)
        raise typer.Exit(EXIT_BAD_INPUT)
    namespaces = [] if all_namespaces else list(namespace or [])
    run_operator(namespaces[0] if namespaces else None, standalone, metrics_port, redis_url, priority=priority,
                 log_json=not console_logs, log_level=log_level, extra_namespaces=tuple(namespaces[1:]),
                 peering_name=peering, liveness_endpoint=liveness)


@app.command()
def crd(
    output: Annotated[list[Path] | None, typer.Option("--output", "-o", help="Write here (repeatable)")] = None,
) -> None:
    """Print (or write) the CustomResourceDefinition generated from the API model."""
    from trainingjob_operator.api.crd import crd_yaml

    text = crd_yaml()
    if not output:
        sys.stdout.write(text)
    for path in output or []:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@app.command()
def simulate(
    manifest: Annotated[Path, typer.Argument(help="TrainingJob YAML")],
    nodes: Annotated[int | None, typer.Option(help="Scale every role in proportion to this many nodes")] = None,
    mtbf: Annotated[float | None, typer.Option(help="Job-level MTBF in hours (CPR: 14-30 h)")] = None,
    mtbf_per_node: Annotated[float | None, typer.Option(help="One node's MTBF in hours (job MTBF = this / nodes)")]
    = None,
    days: Annotated[float, typer.Option(help="Failure-free training time to simulate, in days")] = 30.0,
    seeds: Annotated[int, typer.Option(help="Seeds per mode and per grid interval")] = 3,
    seed: Annotated[int, typer.Option(help="First seed")] = 0,
    failure_log: Annotated[Path | None, typer.Option(
        help="Replay these failures: a summary JSON's failures list (role, rank, time_s)")] = None,
    summary: Annotated[Path | None, typer.Option(help="Costs from a real run's summary JSON")] = None,
    o_save: Annotated[float | None, typer.Option(help="Training seconds one full save costs")] = None,
    o_save_partial: Annotated[float | None, typer.Option(help="... one MFU/SSU save costs")] = None,
    o_load: Annotated[float | None, typer.Option(help="Seconds to load one shard")] = None,
    o_res: Annotated[float | None, typer.Option(help="Seconds to detect and replace a replica")] = None,
    uncovered: Annotated[float | None, typer.Option(help="Share of updates MFU/SSU saves leave out (0-1)")] = None,
    weibull_shape: Annotated[float | None, typer.Option(help="Weibull node lifetimes of this shape")] = None,
    fail_roles: Annotated[str | None, typer.Option(help="Roles whose nodes fail (default all)")] = None,
    modes: Annotated[str | None, typer.Option(help="full,partial,partial+MFU,partial+SSU,auto")] = None,
    grid: Annotated[int, typer.Option(help="Fixed intervals swept per mode (0: none)")] = 7,
    grid_span: Annotated[float, typer.Option(help="The grid spans the tuner's interval / and x this")] = 4.0,
    prior_hours: Annotated[float | None, typer.Option(help="The tuner's per-node MTBF prior (default: the truth)")]
    = None,
    samples_per_second: Annotated[float | None, typer.Option(help="Job throughput (sets the unit of samples)")]
    = None,
    auc_slope: Annotated[float | None, typer.Option(help="AUC change per unit PLS (default: calibrated)")] = None,
    jobs: Annotated[int, typer.Option(help="Worker processes")] = 1,
    out: Annotated[Path | None, typer.Option(help="Folder for JSON and PNGs; default runs/<job>/simulate")] = None,
) -> None:
    """Simulate the job at scale: failures, the reconcile core and the tuner in simulated time, per mode."""
    from trainingjob_operator.simulate.command import Options, run_simulation
    from trainingjob_operator.simulate.config import SimulateInputError

    job = _load(manifest)
    options = Options(nodes=nodes, mtbf=mtbf, mtbf_per_node=mtbf_per_node, days=days, seeds=seeds, seed=seed,
                      failure_log=failure_log, summary=summary, o_save=o_save, o_save_partial=o_save_partial,
                      o_load=o_load, o_res=o_res, uncovered=uncovered, weibull_shape=weibull_shape,
                      fail_roles=fail_roles, modes=modes, grid=grid, grid_span=grid_span, jobs=jobs,
                      prior_hours=prior_hours, samples_per_second=samples_per_second, auc_slope=auc_slope, out=out)
    try:
        code = run_simulation(job, options, Console(width=None if sys.stdout.isatty() else 200), err)
    except SimulateInputError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    raise typer.Exit(code)


def main() -> None:
    app()
if __name__ == "__main__":
    main()
