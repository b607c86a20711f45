"""The trainer's GPU path (issue #12), measured against a single-process baseline on the same GPU, same data, one run.

Variants, each in processes of its own, one after another on one machine:

1. **dense ceiling**: the demo model's dense part (``DenseDLRM``: forward, backward, Adagrad on the flat
   buffer, as the trainer's step does it) at the job's batch size, pooled embeddings already on the device.
   No trainer's dense step can beat it.
2. **single-process plain-PyTorch DLRM**: the same ``DenseDLRM`` and dense Adagrad, plus every table in one
   ``nn.EmbeddingBag`` on the device (sparse gradients, row-wise Adagrad as the embedding servers apply it),
   reading the same synthetic samples, produced by a pool of threads and copied from pinned memory.
   It stands in for single-process TorchRec: TorchRec's fused GPU tables need the CUDA build of fbgemm-gpu,
   which a GPU machine without a package registry may lack (the CPU build runs TorchRec's dense arches).
3. **the distributed job** as the product runs it (``trainingjob run``: embedded Redis, embedding servers
   and the sync server on the CPUs, gRPC between them), trainers on the device (``training.device``),
   with 1 and 2 trainers; and, for what the device buys, 2 trainers on the CPUs.

Every variant reports samples/s over its training phase and the held-out AUC on the same eval samples.

Usage: python benchmarks/gpu_trainer.py [--samples N] [--device auto|cuda|cpu] [--output-dir DIR]
Prints a table and writes gpu_trainer.json (benchmarks/results/ unless --output-dir).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
LOSS_EVERY = 20  # the trainer's device plan reads the loss back every 20 steps on an accelerator
PRODUCERS = 6  # threads making the baseline's batches (the trainer makes them in its prefetch threads)
LOOKAHEAD = 12  # batches the baseline's producers may run ahead


def manifest(samples: int, eval_samples: int, device: str, trainers: int) -> dict[str, Any]:
    """The demo job (examples/dlrm-local.yaml) with this run's sizes and the trainers' device."""
    job = yaml.safe_load((ROOT / "examples" / "dlrm-local.yaml").read_text())
    job["metadata"]["name"] = f"gpu-bench-{device}-{trainers}"
    job["spec"]["data"].update({"trainSamples": samples, "evalSamples": eval_samples})
    job["spec"]["training"]["device"] = device
    job["spec"]["replicas"]["trainer"]["replicas"] = trainers
    return job


# --- the children: each variant in a process of its own (its own CUDA context and peak memory) -----------------
def _spec(path: str) -> Any:
    from trainingjob_operator.api import load_manifest

    return load_manifest(path).spec


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mb(device: Any) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def child_dense_ceiling(spec: Any, device: Any, samples: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from dlrm_trainer.model import DenseDLRM, flatten_parameters
    from dlrm_trainer.trainer import ADAGRAD_EPS

    m, batch = spec.model, spec.data.batch_size
    torch.manual_seed(0)
    model = DenseDLRM(m, device).to(device)
    flat = flatten_parameters(model)
    params, adagrad = list(model.parameters()), torch.zeros_like(flat)
    lr = spec.training.dense_learning_rate
    inputs = [(torch.randn(batch, m.dense_features, device=device),
               torch.randn(batch, m.sparse_features, m.embedding_dim, device=device) * 0.05,
               torch.randint(0, 2, (batch,), device=device).float()) for _ in range(8)]

    def step(i: int) -> torch.Tensor:
        dense, pooled, labels = inputs[i % len(inputs)]
        loss = F.binary_cross_entropy_with_logits(model(dense, pooled), labels)
        grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
        with torch.no_grad():
            adagrad.addcmul_(grad, grad)
            flat.addcdiv_(grad, adagrad.sqrt().add_(ADAGRAD_EPS), value=-lr)
        return loss.detach()

    for i in range(30):
        step(i)
    _sync(device)
    steps = max(1, samples // batch)
    started = time.perf_counter()
    for i in range(steps):
        loss = step(i)
        if (i + 1) % LOSS_EVERY == 0:
            float(loss)
    _sync(device)
    wall = time.perf_counter() - started
    return {"samples_per_second": steps * batch / wall, "wall_seconds": wall, "batch_size": batch,
            "device_peak_mb": _peak_mb(device)}


def child_plain_dlrm(spec: Any, device: Any, samples: int, eval_samples: int) -> dict[str, Any]:
    """One process, every table on the device: what a GPU does with the whole model in its memory."""
    import math

    import torch
    import torch.nn.functional as F
    from torch import nn

    from dlrm_trainer.metrics import StreamingEval
    from dlrm_trainer.model import DenseDLRM, flatten_parameters
    from dlrm_trainer.sources import data_source, epoch_batch_makers
    from dlrm_trainer.trainer import ADAGRAD_EPS, warmed_up, warmup_steps

    m, data, training = spec.model, spec.data, spec.training
    rows = m.rows()
    torch.manual_seed(data.seed)
    model = DenseDLRM(m, device).to(device)
    flat = flatten_parameters(model)
    params, dense_adagrad = list(model.parameters()), torch.zeros_like(flat)
    offsets = torch.tensor([0, *rows], dtype=torch.int64).cumsum(0)
    tables = nn.EmbeddingBag(int(offsets[-1]), m.embedding_dim, mode="sum", sparse=True, device=device)
    with torch.no_grad():  # TorchRec's default init per table, as the embedding servers do
        for t, n in enumerate(rows):
            bound = math.sqrt(1.0 / n)
            tables.weight[int(offsets[t]):int(offsets[t + 1])].uniform_(-bound, bound)
    row_adagrad = torch.zeros(int(offsets[-1]), device=device)
    table_offsets = offsets[:-1].to(device)
    pin = device.type == "cuda"

    def pooled(sparse: torch.Tensor) -> torch.Tensor:
        b, f = sparse.shape
        ids = (sparse + table_offsets).reshape(-1)  # sample-major: [B*F]
        bags = torch.arange(b * f, device=device)
        return tables(ids, bags).view(b, f, m.embedding_dim)

    def made(make: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = make()
        parts = (batch.dense, batch.sparse.to(torch.int64), batch.labels)
        return tuple(p.pin_memory() for p in parts) if pin else parts  # type: ignore[return-value]

    source = data_source(spec)
    makers = (make for _, make in epoch_batch_makers(source, 0, 1, 0, data.batch_size, samples, data.epochs))
    warm = warmup_steps(spec)
    step = 0
    loss = torch.zeros((), device=device)
    with ThreadPoolExecutor(PRODUCERS) as pool:
        queue: collections.deque[Any] = collections.deque()
        for make in makers:  # fill the lookahead before the clock starts: the trainer's prefetch does too
            queue.append(pool.submit(made, make))
            if len(queue) >= LOOKAHEAD:
                break
        _sync(device)
        started = time.perf_counter()
        trained = 0
        while queue:
            dense_h, sparse_h, labels_h = queue.popleft().result()
            nxt = next(makers, None)
            if nxt is not None:
                queue.append(pool.submit(made, nxt))
            dense, sparse = dense_h.to(device, non_blocking=pin), sparse_h.to(device, non_blocking=pin)
            labels = labels_h.to(device, non_blocking=pin)
            loss = F.binary_cross_entropy_with_logits(model(dense, pooled(sparse)), labels)
            *dense_grads, table_grad = torch.autograd.grad(loss, [*params, tables.weight])
            table_grad = table_grad.coalesce()  # a row used twice in the batch: its gradients summed
            grad = torch.cat([g.reshape(-1) for g in dense_grads])
            lr = warmed_up(training.dense_learning_rate, step, warm)
            with torch.no_grad():
                dense_adagrad.addcmul_(grad, grad)
                flat.addcdiv_(grad, dense_adagrad.sqrt().add_(ADAGRAD_EPS), value=-lr)
                ids, values = table_grad.indices()[0], table_grad.values()
                row_adagrad.index_add_(0, ids, values.pow(2).mean(dim=1))
                scale = row_adagrad.index_select(0, ids).sqrt_().add_(ADAGRAD_EPS).reciprocal_()
                tables.weight.index_add_(0, ids, values * scale.mul_(-training.embedding_learning_rate).unsqueeze(1))
            step += 1
            trained += len(labels_h)
            if step % LOSS_EVERY == 0:
                float(loss)
        _sync(device)
        wall = time.perf_counter() - started
    acc = StreamingEval()
    with torch.no_grad():
        for b in source.eval_batches(eval_samples, 8192):
            logits = model(b.dense.to(device), pooled(b.sparse.to(torch.int64).to(device)))
            acc.add(b.labels.numpy(), torch.sigmoid(logits).float().cpu().numpy())
    r = acc.result()
    return {"samples_per_second": trained / wall, "wall_seconds": wall, "auc": r.auc, "logloss": r.log_loss,
            "loss": float(loss), "device_peak_mb": _peak_mb(device), "producers": PRODUCERS}


def child_main(args: argparse.Namespace) -> None:
    import torch

    device = torch.device(args.device)
    spec = _spec(args.manifest)
    if args.child == "dense":
        result = child_dense_ceiling(spec, device, args.samples)
    else:
        result = child_plain_dlrm(spec, device, args.samples, args.eval_samples)
    print(json.dumps(result))


# --- the parent ---------------------------------------------------------------------------------------------
def run_child(kind: str, job: dict[str, Any], device: str, samples: int, eval_samples: int,
              logs: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "job.yaml"
        path.write_text(yaml.safe_dump(job))
        log = logs / f"{kind}-{device}.log"
        with log.open("w") as err:
            out = subprocess.run([sys.executable, __file__, "--child", kind, "--manifest", str(path), "--device",
                                  device, "--samples", str(samples), "--eval-samples", str(eval_samples)],
                                 stdout=subprocess.PIPE, stderr=err, text=True, timeout=300)
        if out.returncode != 0:
            raise RuntimeError(f"{kind} on {device} exited {out.returncode}; its log: {log}\n"
                               + log.read_text()[-3000:])
        return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def run_job(job: dict[str, Any], logs: Path) -> dict[str, Any]:
    """``trainingjob run`` of the manifest; the job's own summary (samples/s over the training phase)."""
    with tempfile.TemporaryDirectory() as tmp:
        path, summary_path = Path(tmp) / "job.yaml", Path(tmp) / "summary.json"
        path.write_text(yaml.safe_dump(job))
        started = time.monotonic()
        log = logs / f"{job['metadata']['name']}.log"
        with log.open("w") as out:
            code = subprocess.run([sys.executable, "-m", "trainingjob_operator.cli", "run", str(path), "--summary",
                                   str(summary_path), "--workdir", str(Path(tmp) / "work")],
                                  stdout=out, stderr=subprocess.STDOUT, timeout=300).returncode
        replica_logs = sorted((Path(tmp) / "work" / "logs").glob("*.log"))
        for replica in replica_logs:  # keep the trainers' logs: they say which device they used
            if replica.name.startswith("trainer"):
                (logs / f"{job['metadata']['name']}-{replica.name}").write_text(replica.read_text()[-20000:])
        if code != 0 or not summary_path.exists():
            tails = "\n".join(f"--- {r.name}\n{r.read_text()[-1500:]}" for r in replica_logs)
            raise RuntimeError(f"trainingjob run exited {code}\n{log.read_text()[-2000:]}\n{tails}")
        summary = dict(json.loads(summary_path.read_text()))
        summary["bench_wall_s"] = time.monotonic() - started
        return summary


def environment(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
                            "torch": torch.__version__, "device": device}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    try:  # which fbgemm build is here says whether TorchRec could put its tables on the GPU
        from importlib.metadata import PackageNotFoundError, version

        import fbgemm_gpu  # noqa: F401

        for dist in ("fbgemm-gpu", "fbgemm-gpu-cpu", "torchrec"):
            with contextlib.suppress(PackageNotFoundError):
                info[dist] = version(dist)
    except ImportError as exc:
        info["fbgemm_gpu"] = f"not importable: {exc}"
    return info


def ratios_of(rows: list[dict[str, Any]]) -> dict[str, float]:
    by_name = {r["variant"]: r for r in rows if r.get("samples_per_second")}
    baseline = by_name.get("single-process plain-PyTorch DLRM")
    ceiling = by_name.get("dense ceiling (pooled rows resident)")
    ratios = {}
    for r in rows:
        if r.get("samples_per_second") and r["variant"].startswith("distributed"):
            if baseline:
                ratios[f"{r['variant']} / plain DLRM"] = r["samples_per_second"] / baseline["samples_per_second"]
            if ceiling:
                ratios[f"{r['variant']} / dense ceiling"] = r["samples_per_second"] / ceiling["samples_per_second"]
    return ratios


def write_results(out_dir: Path, env: dict[str, Any], args: argparse.Namespace, rows: list[dict[str, Any]]) -> Path:
    path = out_dir / "gpu_trainer.json"
    path.write_text(json.dumps({"environment": env, "samples": args.samples, "eval_samples": args.eval_samples,
                                "rows": rows, "ratios": ratios_of(rows)}, indent=2, default=str))
    return path


def print_table(env: dict[str, Any], args: argparse.Namespace, rows: list[dict[str, Any]],
                ratios: dict[str, float]) -> None:
    print(f"\n{env.get('gpu', env['device'])}, torch {env['torch']}, {env['cpus']} CPUs, {args.samples:,} samples")
    print(f"{'variant':<44} {'samples/s':>11} {'AUC':>7} {'device MB':>10} {'elapsed s':>10}")
    for r in rows:
        if "error" in r:
            print(f"{r['variant']:<44} FAILED: {r['error'].splitlines()[0][:80]}")
            continue
        auc = f"{r['auc']:.4f}" if r.get("auc") is not None else "-"
        peak = f"{r['device_peak_mb']:.0f}" if r.get("device_peak_mb") else "-"
        print(f"{r['variant']:<44} {r['samples_per_second']:>11,.0f} {auc:>7} {peak:>10} {r['elapsed_s']:>10}")
    for k, v in ratios.items():
        print(f"{k:<70} {v:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--eval-samples", type=int, default=50_000)
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--gpu-trainers", default="1,2", help="trainer counts of the jobs with trainers on the device")
    parser.add_argument("--cpu-job", action=argparse.BooleanOptionalAction, default=True,
                        help="also the job with its 2 trainers on the CPUs")
    parser.add_argument("--output-dir", default=str(RESULTS))
    parser.add_argument("--child", choices=["dense", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--manifest", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.device = "cuda" if args.device == "auto" else args.device
        child_main(args)
        return
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    out_dir = Path(args.output_dir)
    logs = out_dir / "gpu_trainer_logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = environment(device)
    print(json.dumps(env), flush=True)
    plans: list[tuple[str, Any]] = [
        ("dense ceiling (pooled rows resident)",
         lambda: run_child("dense", manifest(args.samples, args.eval_samples, device, 1), device, args.samples,
                           args.eval_samples, logs)),
        ("single-process plain-PyTorch DLRM",
         lambda: run_child("plain", manifest(args.samples, args.eval_samples, device, 1), device, args.samples,
                           args.eval_samples, logs)),
    ]
    for n in [int(x) for x in args.gpu_trainers.split(",") if x]:
        plans.append((f"distributed job, {n} trainer(s) on {device}",
                      lambda n=n: run_job(manifest(args.samples, args.eval_samples, device, n), logs)))
    if args.cpu_job and device != "cpu":
        plans.append(("distributed job, 2 trainers on cpu",
                      lambda: run_job(manifest(args.samples, args.eval_samples, "cpu", 2), logs)))
    rows: list[dict[str, Any]] = []
    for name, plan in plans:
        print(f"running: {name}", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            result = plan()
        except Exception as exc:  # one variant failing must not lose the others' numbers
            traceback.print_exc()
            rows.append({"variant": name, "error": str(exc)[-4000:]})
            write_results(out_dir, env, args, rows)
            continue
        trainers = result.get("trainers") or []
        rows.append({
            "variant": name, "samples_per_second": result.get("samples_per_second"), "auc": result.get("auc"),
            "logloss": result.get("logloss"), "elapsed_s": round(time.monotonic() - started, 1),
            "device_peak_mb": result.get("device_peak_mb") or max(
                (t.get("cuda_peak_mb") or 0 for t in trainers), default=None) or None,
            "trainer_devices": sorted({str(t.get("device")) for t in trainers}) or None,
            "raw": result,
        })
        write_results(out_dir, env, args, rows)  # after every variant: a run cut short keeps what it measured
    path = write_results(out_dir, env, args, rows)
    print_table(env, args, rows, ratios_of(rows))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
