"""The Llama SFT example (``examples/llama-sft-local.yaml``: 2 workers, DDP over gloo) with 3 worker kills
against the same job without failures, in one run, then the tuned checkpoint interval against fixed ones in the
simulator, calibrated from the killed run's measured costs.

- Both runs go through the local backend (real agents, processes, Redis, DCP checkpoints). Kills are SIGKILLs of
  a worker's agent (its pod: the script dies with it) once rank 0 reported ``--kill-at`` steps (one kill per
  threshold, alternating workers), each only after the previous one was recovered from.
- Reported per run: final loss (the mean global loss of the last 50 steps), held-out accuracy in both reasoning
  modes (and of the untrained model), wall time; per failure: the interval in force, the steps lost (trained
  before the failure and again after), the seconds lost (those steps at the run's step time) and the restart
  (failure to the next generation's first step). Goals: final loss within 2% of the failure-free run's; work lost
  per failure at most one interval plus the restart.
- ``trainingjob simulate`` on the pytorch manifest with the killed run's summary (its save, load and restart
  costs), ``--mtbf-per-node`` hours per worker, against a grid of fixed intervals. Goal: the tuner's overhead
  within 10% of the best fixed interval's.

    .venv/bin/python benchmarks/pytorch_sft.py
Writes ``benchmarks/results/pytorch_sft.json`` and the simulator's PNGs under ``benchmarks/results/pytorch_sft_sim/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from trainingjob_operator.api.loading import parse_manifest
from trainingjob_operator.coordination import Coordination
from trainingjob_operator.local.redis_server import EmbeddedRedis
from trainingjob_operator.local.summary import write_summary
from trainingjob_operator.local.supervisor import LocalSupervisor, RunOptions

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "llama-sft-local.yaml"
RESULTS = ROOT / "benchmarks" / "results"


def job(name: str, steps: int | None) -> Any:
    body = yaml.safe_load(EXAMPLE.read_text())
    body["metadata"]["name"] = name
    if steps is not None:
        body["spec"]["pytorch"]["command"] += ["--steps", str(steps)]
    return parse_manifest(body, str(EXAMPLE))


def run(name: str, redis_url: str, workdir: Path, kill_at: list[int], steps: int | None) -> dict[str, Any]:
    """One run of the example; SIGKILL a worker's agent as rank 0 passes each step of ``kill_at``."""
    spec = job(name, steps)
    supervisor = LocalSupervisor(spec, RunOptions(workdir=workdir / name, redis_url=redis_url))
    out: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: out.update(supervisor.run()), daemon=True)
    started = time.monotonic()
    thread.start()
    coord = Coordination(redis_url, spec.namespace, spec.name)
    kills = []
    for index, threshold in enumerate(kill_at):
        victim = f"worker-{(index + 1) % 2}"
        while thread.is_alive():
            progress = coord.step_progress()
            resumes = coord.resumes()
            # Past the threshold, in a generation that trains (the previous kill's recovery is over).
            if progress is not None and progress.step >= threshold and resumes and \
                    resumes[-1]["generation"] == progress.generation and len(resumes) == index + 1:
                break
            time.sleep(0.05)
        proc = supervisor.processes.get(victim)
        if proc is None or not thread.is_alive():
            break
        at = coord.step_progress()
        os.kill(proc.pid, signal.SIGKILL)
        kills.append({"victim": victim, "at_step": at.step if at else None, "time": time.time()})
        print(f"  {name}: killed {victim} at step {kills[-1]['at_step']}", flush=True)
    thread.join()
    out["bench_wall_s"] = round(time.monotonic() - started, 1)
    out["kills"] = kills
    write_summary(out, workdir / f"{name}.summary.json")
    return out


def failure_rows(summary: dict[str, Any], step_s: float | None) -> list[dict[str, Any]]:
    """Per failure: the interval in force, steps and seconds lost (at ``step_s``, the failure-free run's time per
    step), the restart."""
    history = summary["checkpoint"]["interval_history"] or []
    rows = []
    for failure, recovery in zip(summary["failures"], summary["recoveries"], strict=False):
        at = failure["time_s"]
        interval = next((h["interval_s"] for h in reversed(history) if h["time_s"] <= at), None)
        lost_steps = recovery.get("lost_steps")
        lost_s = lost_steps * step_s if lost_steps is not None and step_s else None
        restart = recovery.get("resume_seconds")
        rows.append({"replica": recovery["replica"], "interval_s": interval, "lost_steps": lost_steps,
                     "lost_s": lost_s, "restart_s": restart,
                     "within_bound": None if None in (lost_s, interval, restart) else lost_s <= interval + restart})
    return rows


def simulate(summary_path: Path, mtbf_per_node_h: float, days: float, seeds: int, out: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "trainingjob_operator.cli", "simulate", str(EXAMPLE), "--summary",
               str(summary_path), "--mtbf-per-node", str(mtbf_per_node_h), "--days", str(days), "--seeds",
               str(seeds), "--grid", "7", "--out", str(out)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    data: dict[str, Any] = json.loads((out / "simulate.json").read_text())
    return {"command": " ".join(command[1:]), "tuner_vs_grid": data["tuner_vs_grid"]["full"],
            "grid": [{"interval_s": g["interval_s"], "overhead": g["overhead"]["mean"]} for g in data["grid"]],
            "notes": data.get("notes")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kill-at", default="150,300,450", help="steps at which a worker is killed")
    parser.add_argument("--steps", type=int, default=None, help="train this many steps (default: the example's)")
    parser.add_argument("--mtbf-per-node", type=float, default=0.5, help="simulated hours per worker")
    parser.add_argument("--sim-days", type=float, default=2.0)
    parser.add_argument("--sim-seeds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "pytorch_sft.json")
    args = parser.parse_args()
    kill_at = [int(x) for x in args.kill_at.split(",") if x]
    with tempfile.TemporaryDirectory(prefix="pt-sft-") as tmp, EmbeddedRedis(Path(tmp) / "redis") as redis_url:
        work = Path(tmp)
        clean = run("sft-clean", redis_url, work, [], args.steps)
        killed = run("sft-killed", redis_url, work, kill_at, args.steps)
        sim = simulate(work / "sft-killed.summary.json", args.mtbf_per_node, args.sim_days, args.sim_seeds,
                       args.out.parent / "pytorch_sft_sim")
    clean_result = clean.get("result") or {}
    step_s = clean_result["train_seconds"] / clean_result["steps"] if clean_result.get("steps") else None
    rows = failure_rows(killed, step_s)
    loss_gap = abs(killed["result"]["final_loss"] - clean["result"]["final_loss"]) / clean["result"]["final_loss"]
    print(f"\n{'run':<12} {'status':<10} {'wall':>7} {'final loss':>11} {'thinking on':>12} {'off':>6} "
          f"{'untrained on/off':>17} {'failures':>9}")
    def num(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for label, s in (("no failures", clean), ("3 kills", killed)):
        r = s.get("result") or {}
        print(f"{label:<12} {s['status']:<10} {s['wall_seconds']:>6.1f}s {num(r.get('final_loss'), '>11.4f')} "
              f"{num(r.get('thinking_on'), '>12.3f')} {num(r.get('thinking_off'), '>6.3f')} "
              f"{num(r.get('untrained_thinking_on'), '>8.3f')}/{num(r.get('untrained_thinking_off'), '.3f')} "
              f"{len(s['failures']):>9}")
    print(f"final loss gap: {100 * loss_gap:.3f}% (goal <= 2%)")
    print(f"\n{'failure':<10} {'interval':>9} {'lost steps':>11} {'lost s':>8} {'restart s':>10} "
          f"{'<= interval+restart':>20}")
    for row in rows:
        print(f"{row['replica']:<10} {row['interval_s'] or 0:>8.1f}s {row['lost_steps']!s:>11} "
              f"{row['lost_s'] or 0:>7.1f}s {row['restart_s'] or 0:>9.1f}s {row['within_bound']!s:>20}")
    t = sim["tuner_vs_grid"]
    print(f"\nsimulated ({args.mtbf_per_node} h per worker, {args.sim_days} days, {args.sim_seeds} seeds): tuner "
          f"{100 * t['tuner_overhead']:.3f}% at {t['tuner_interval_s']:.1f} s, best fixed "
          f"{100 * t['optimum_overhead']:.3f}% at {t['optimum_interval_s']:.1f} s: tuner/best - 1 = "
          f"{100 * t['tuner_over_optimum']:+.2f}% (goal within 10%)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "pytorch_sft", "command": " ".join(sys.argv), "machine": platform.node(), "cpus": os.cpu_count(),
        "runs": {"clean": clean, "killed": killed}, "final_loss_gap": loss_gap, "failures": rows, "simulation": sim,
        "restart_seconds_median": statistics.median([r["restart_s"] for r in rows if r["restart_s"] is not None])
        if rows else None,
    }, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
