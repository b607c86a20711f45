"""Chaos on the local backend: ``trainingjob run`` as a user starts it, while every replica, the run's Redis and
the supervisor itself fail at random.

The supervisor is the CLI process (``python -m trainingjob_operator.cli run``), the replicas its processes, Redis
the embedded server it starts. While the job trains, the harness:

- kills every replica at random (SIGKILL; a share of them hang instead, SIGSTOP, and must be found by their
  silent heartbeat), each replica failing with the given mean time between failures, whether or not a
  supervisor is running at that moment;
- kills the run's Redis (SIGKILL): the supervisor starts it again from its AOF, on the same port;
- kills the supervisor (SIGKILL) just after killing a replica, so in the middle of a recovery, and a few seconds
  later runs ``trainingjob run --resume``: the new supervisor adopts the running replicas (none may be restarted
  for it), replaces the ones that died meanwhile, and goes on;
- corrupts the newest full checkpoint of a shard (flipped bytes) and kills that shard: its replacement must find
  the damage and fall back to an older checkpoint, never load it.

Unwritable checkpoint storage is left to ``chaos.py`` (the Kubernetes path): the local replicas run as the
user who started them (root here), whom file modes do not stop.

It first runs the same job without failures (the AUC to compare against), then the chaos run, and prints a
table like ``chaos.py``'s and writes ``benchmarks/results/chaos_local.json`` (or ``--out``).

Usage: python benchmarks/chaos_local.py [--minutes 14] [--mtbf-s 30] [--redis-kills 10] [--supervisor-kills 10]
       [--corruptions 3] [--trainers 3 --servers 3] [--samples N] [--short]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil
import redis
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chaos import (  # noqa: E402
    ChaosPlan,
    Event,
    chaos_manifest,
    corrupt_newest_full,
    job_processes,
    print_target_rows,
    row_key,
    schedule,
    target_table,
)

from trainingjob_operator.api import parse_manifest  # noqa: E402
from trainingjob_operator.coordination import Coordination  # noqa: E402
from trainingjob_operator.local.keeper import process_of, processes_of_run  # noqa: E402
from trainingjob_operator.local.runstate import STATE_FILE, RunState, StateError, read_state  # noqa: E402
from trainingjob_operator.reconcile import desired_replicas  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CLI = [sys.executable, "-m", "trainingjob_operator.cli", "run"]


@dataclass
class Done:
    at_s: float  # since the window opened
    at_unix: float
    kind: str  # kill, hang, redis, supervisor, corrupt
    target: str
    skipped: bool = False  # the target was not running (being replaced already)
    detected_s: float | None = None
    recovered_s: float | None = None
    note: str = ""


@dataclass
class LocalRun:
    status: str
    wall_s: float
    summary: dict[str, Any]
    done: list[Done] = field(default_factory=list)
    corrupted: list[dict[str, Any]] = field(default_factory=list)
    recoveries: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    supervisors: int = 1
    resume_errors: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)


class Supervisor:
    """The ``trainingjob run`` process; killed and resumed as a user's shell would be lost and reopened."""

    def __init__(self, manifest: Path, workdir: Path) -> None:
        self.manifest = manifest
        self.workdir = workdir
        self.log = workdir.parent / f"{workdir.name}-supervisor.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0

    def start(self, *extra: str) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([*CLI, str(self.manifest), "--workdir", str(self.workdir), *extra],
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        self.started += 1

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()


def state_of(workdir: Path) -> RunState | None:
    try:
        return read_state(workdir / STATE_FILE)
    except StateError:
        return None


def shard_folder(checkpoints: Path, shard: int) -> Path | None:
    """The shard's checkpoint folder under the run's checkpoint directory."""
    for folder in sorted(checkpoints.rglob("*")):
        if folder.is_dir() and re.fullmatch(rf"(shard|embedding-server)-0*{shard}", folder.name):
            return folder
    return None


def run_failure_free(manifest: Path, workdir: Path, timeout_s: float) -> LocalRun:
    started = time.time()
    sup = Supervisor(manifest, workdir)
    sup.start()
    assert sup.proc is not None
    sup.proc.wait(timeout_s)
    summary = json.loads((workdir / "summary.json").read_text())
    return LocalRun(summary["status"], time.time() - started, summary)


def run_chaos(manifest: Path, workdir: Path, events: list[Event], plan: ChaosPlan, job_name: str,
              trainers: int, shards: int, timeout_s: float, stop_at: float, down_s: float) -> LocalRun:
    started = time.time()
    sup = Supervisor(manifest, workdir)
    sup.start("--orphan-grace", "600")
    run = LocalRun("Unknown", 0.0, {})
    # The window opens once every trainer has trained: failures before that test start-up, not recovery.
    while (state := state_of(workdir)) is None:
        time.sleep(0.2)
    coord = Coordination(state.redis_url, "ml", job_name, patient=False)
    target_samples = parse_manifest(yaml.safe_load(manifest.read_text())).spec.data.planned_samples

    def progress() -> int | None:
        with contextlib.suppress(redis.RedisError):
            return sum(p.samples for p in coord.all_progress(trainers).values())
        return None

    def trainers_trained() -> bool:
        with contextlib.suppress(redis.RedisError):
            p = coord.all_progress(trainers)
            return len(p) == trainers and all(v.samples > 0 for v in p.values())
        return False

    while not trainers_trained():
        if sup.exited() is not None:
            raise SystemExit(f"the job ended before it trained: see {sup.log}")
        time.sleep(0.2)
    t0 = time.time()
    print(f"window opens after {t0 - started:.0f}s", file=sys.stderr, flush=True)
    pending = list(events)
    resume_at: float | None = None
    last_read = 0.0
    last_report = time.monotonic()
    stopped_injecting = False
    while True:
        now = time.time()
        if resume_at is not None and now >= resume_at:
            sup.start("--resume", "--orphan-grace", "600")
            resume_at = None
        code = sup.exited()
        if code is not None and resume_at is None:
            if code == 2:  # --resume refused: say why, then stop
                run.resume_errors.append(sup.log.read_text()[-500:])
            break
        if now - last_read > 2.0:  # what each replacement restored (Redis goes when the run ends)
            last_read = now
            with contextlib.suppress(redis.RedisError):
                for name in [f"embedding-server-{k}" for k in range(shards)]:
                    run.recoveries.setdefault(name, {}).update(coord.recoveries(name))
        done_samples = progress()
        if not stopped_injecting and done_samples is not None and done_samples >= stop_at * target_samples:
            stopped_injecting = True
            print(f"{done_samples} samples trained: no more failures", file=sys.stderr, flush=True)
        while pending and pending[0].at_s <= now - t0 and not stopped_injecting:
            event = pending.pop(0)
            done = Done(round(now - t0, 3), now, "supervisor" if event.kind == "operator" else event.kind,
                        event.target)
            state = state_of(workdir)
            if event.kind in ("kill", "hang", "corrupt", "operator") and event.target:
                ref = state.processes.get(event.target) if state else None
                victim = process_of(ref)
                if event.kind == "corrupt":
                    shard = int(event.target.rsplit("-", 1)[1])
                    folder = shard_folder(workdir / "checkpoints", shard)
                    entry = corrupt_newest_full(folder) if folder is not None else None
                    if entry is None:
                        done.note = "no full checkpoint yet"
                    else:
                        run.corrupted.append({"replica": event.target, "entry": entry, "at_unix": time.time()})
                if victim is None:
                    done.skipped = event.kind != "operator"
                else:
                    with contextlib.suppress(psutil.Error):
                        victim.send_signal(signal.SIGSTOP if event.kind == "hang" else signal.SIGKILL)
                if event.kind == "operator":
                    if victim is not None:
                        run.done.append(Done(done.at_s, now, "kill", event.target, note="before a supervisor kill"))
                    time.sleep(0.3)  # the supervisor dies in the middle of that recovery
                    if sup.exited() is None and resume_at is None:
                        sup.kill()
                        resume_at = time.time() + down_s
                    else:
                        done.skipped = True
            elif event.kind == "redis":
                redis_process = process_of(state.redis) if state else None
                if redis_process is None:
                    done.skipped = True
                else:
                    redis_process.kill()
            run.done.append(done)
        if time.monotonic() - last_report > 30:
            last_report = time.monotonic()
            print(f"  {now - t0:6.0f}s: {done_samples} samples, {len(run.done)} failures made, "
                  f"{sup.started} supervisors", file=sys.stderr, flush=True)
        if now - started > timeout_s:
            print("timed out: stopping the run", file=sys.stderr, flush=True)
            if sup.proc is not None and sup.exited() is None:
                sup.proc.send_signal(signal.SIGTERM)
                sup.proc.wait(120)
            break
        time.sleep(0.05)
    run.wall_s = time.time() - started
    run.supervisors = sup.started
    summary_path = workdir / "summary.json"
    run.summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    run.status = run.summary.get("status", "NoSummary")
    state = state_of(workdir)
    deadline = time.time() + 30  # the keeper exits once it reads the run's end
    while time.time() < deadline:
        run.orphans = [f"{p.pid} {' '.join(p.cmdline())[:80]}" for p in processes_of_run(state.run_id)] \
            if state else []
        run.orphans += job_processes(job_name)
        keeper = process_of(state.keeper) if state else None
        if not run.orphans and keeper is None:
            break
        time.sleep(0.5)
    if keeper is not None:
        run.orphans.append(f"{keeper.pid} keeper")
    _match_failures(run, state.started if state else None)
    return run


def _match_failures(run: LocalRun, started: float | None) -> None:
    """Detection and recovery times: each kill to the failure the supervisor recorded for that replica next
    (``started``: when the run started, which the failure records count from)."""
    records = sorted(run.summary.get("failures", []), key=lambda f: f["time_s"])
    used: set[int] = set()
    for done in run.done:
        if done.kind not in ("kill", "hang", "corrupt") or done.skipped or started is None:
            continue
        for i, f in enumerate(records):
            if i in used or f"{f['role']}-{f['rank']}" != done.target:
                continue
            detected_unix = started + f["time_s"]
            if detected_unix + 0.5 < done.at_unix:
                continue
            used.add(i)
            done.detected_s = round(detected_unix - done.at_unix, 3)
            if f.get("recovered_after_s") is not None:
                start = f["injected_at_s"] if f.get("injected_at_s") is not None else f["time_s"]
                done.recovered_s = round(started + start + f["recovered_after_s"] - done.at_unix, 3)
            break


def summarize(chaos: LocalRun, baseline: LocalRun | None, plan: ChaosPlan) -> dict[str, Any]:
    s = chaos.summary
    table = target_table((row_key(d.kind, d.target), d.skipped, d.detected_s, d.recovered_s) for d in chaos.done)

    def loads_after(c: dict[str, Any]) -> list[str]:
        return [str(r.get("description", "")) for r in chaos.recoveries.get(c["replica"], {}).values()
                if float(r.get("time", 0.0)) >= c["at_unix"]]

    corrupt_loaded = sum(1 for c in chaos.corrupted for d in loads_after(c)
                         if re.search(rf"restored {re.escape(c['entry'])}\b", d))
    fallen_back = sum(1 for c in chaos.corrupted
                      if any(f"checkpoint {c['entry']} corrupt" in d for d in loads_after(c)))
    replica_failures = sum(1 for d in chaos.done if d.kind in ("kill", "hang", "corrupt") and not d.skipped)
    pids = sum(len(r["pids"]) for r in s.get("replicas", []))
    auc, base_auc = s.get("auc"), (baseline.summary.get("auc") if baseline else None)
    return {
        "backend": "local", "status": chaos.status, "chaos_minutes": round(chaos.wall_s / 60.0, 2),
        "baseline_minutes": round(baseline.wall_s / 60.0, 2) if baseline else None,
        "failures_total": replica_failures + sum(1 for d in chaos.done if d.kind in ("redis", "supervisor")
                                                 and not d.skipped),
        "replica_failures": replica_failures,
        "redis_kills": sum(1 for d in chaos.done if d.kind == "redis" and not d.skipped),
        "supervisor_kills": sum(1 for d in chaos.done if d.kind == "supervisor" and not d.skipped),
        "supervisors_started": chaos.supervisors, "resumes": s.get("supervisor", {}).get("resumes"),
        "redis_restarts": s.get("supervisor", {}).get("redis_restarts"), "resume_errors": chaos.resume_errors,
        "by_target": table, "samples": s.get("samples"), "lost_samples": s.get("lost_samples"), "pls": s.get("pls"),
        "auc": auc, "auc_failure_free": base_auc,
        "auc_delta": round(auc - base_auc, 5) if auc is not None and base_auc is not None else None,
        "corruptions": chaos.corrupted, "corruptions_fallen_back_from": fallen_back,
        "corrupt_checkpoints_loaded": corrupt_loaded,
        "failures_recorded": len(s.get("failures", [])),
        # One process per replica at the start and one per failure the supervisor recorded: a supervisor's death
        # (or Redis's) restarted no replica.
        "processes_started": pids, "processes_expected": len(s.get("replicas", [])) + len(s.get("failures", [])),
        "orphans": chaos.orphans, "plan": asdict(plan), "events": [asdict(d) for d in chaos.done],
    }


def print_table(s: dict[str, Any]) -> None:
    print(f"\nlocal chaos run: {s['status']} after {s['chaos_minutes']} min (failure-free: {s['baseline_minutes']} "
          f"min); {s['failures_total']} failures: {s['replica_failures']} of replicas, {s['redis_kills']} of Redis, "
          f"{s['supervisor_kills']} of the supervisor ({s['resumes']} resumes, {s['redis_restarts']} Redis restarts)")
    print_target_rows(s["by_target"])
    print(f"samples {s['samples']}, lost {s['lost_samples']}, PLS {s['pls']}; AUC {s['auc']} vs failure-free "
          f"{s['auc_failure_free']} (delta {s['auc_delta']})")
    print(f"corrupt checkpoints: {len(s['corruptions'])} made, {s['corruptions_fallen_back_from']} fallen back from, "
          f"{s['corrupt_checkpoints_loaded']} loaded; processes of the run left: {len(s['orphans'])}")
    print(f"processes started {s['processes_started']} for {s['processes_expected']} expected (the first ones and "
          "one per recorded failure)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=0, help="training samples (0: 40k per window second)")
    parser.add_argument("--minutes", type=float, default=14.0, help="window in which failures are drawn")
    parser.add_argument("--mtbf-s", type=float, default=30.0, help="mean time between failures of each replica")
    parser.add_argument("--hang-fraction", type=float, default=0.1)
    parser.add_argument("--redis-kills", type=int, default=10)
    parser.add_argument("--supervisor-kills", type=int, default=10)
    parser.add_argument("--supervisor-down-s", type=float, default=3.0, help="from a supervisor kill to --resume")
    parser.add_argument("--corruptions", type=int, default=3)
    parser.add_argument("--trainers", type=int, default=3)
    parser.add_argument("--servers", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout-s", type=float, default=3600.0)
    parser.add_argument("--stop-at", type=float, default=0.99,
                        help="no failure once the job has trained this share of its samples")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the runs' files (logs) here")
    parser.add_argument("--short", action="store_true", help="the version make test runs (about 2 minutes)")
    parser.add_argument("--out", type=Path, default=RESULTS / "chaos_local.json")
    args = parser.parse_args()
    if args.short:
        args.samples, args.minutes, args.mtbf_s, args.trainers, args.servers = 2_000_000, 1.0, 20.0, 2, 2
        args.redis_kills, args.supervisor_kills, args.corruptions, args.hang_fraction = 2, 2, 1, 0.15
        args.timeout_s = min(args.timeout_s, 900.0)
    window = args.minutes * 60.0
    samples = args.samples or int(window * 40_000)
    name = f"chaos-local-{secrets.token_hex(2)}"
    with contextlib.ExitStack() as stack:
        tmp = Path(args.workdir) if args.workdir else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="tj-chaos-local-")))
        tmp.mkdir(parents=True, exist_ok=True)
        body = chaos_manifest(name, samples, args.trainers, args.servers, seed=args.seed)
        manifest = tmp / "job.yaml"
        manifest.write_text(yaml.safe_dump(body))
        job = parse_manifest(body)
        replicas = [rid.name for rid in desired_replicas(job.spec)]
        baseline = None
        if args.baseline:
            print(f"failure-free run of {samples} samples ...", file=sys.stderr, flush=True)
            baseline = run_failure_free(manifest, tmp / "baseline", args.timeout_s)
            print(f"  {baseline.status} in {baseline.wall_s:.0f}s", file=sys.stderr, flush=True)
        plan = ChaosPlan(window_s=window, mtbf_s=args.mtbf_s, hang_fraction=args.hang_fraction,
                         redis_kills=args.redis_kills, operator_kills=args.supervisor_kills,
                         corruptions=args.corruptions, unwritable=0, seed=args.seed)
        events = schedule(plan, replicas, args.servers)
        print(f"chaos run: {len(events)} failures planned over {window:.0f}s", file=sys.stderr, flush=True)
        chaos = run_chaos(manifest, tmp / "chaos", events, plan, name, args.trainers, args.servers,
                          args.timeout_s, args.stop_at, args.supervisor_down_s)
        summary = summarize(chaos, baseline, replace(plan))
    print_table(summary)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
