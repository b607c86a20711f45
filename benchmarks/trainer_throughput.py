"""Trainer throughput (issues #2 and #12), measured side by side in one run on this machine.

1. The dense-only ceiling: the demo model's dense part alone (forward, backward and Adagrad at batch
   1024, pooled embeddings already in memory), in two single-thread processes at once (as the two
   trainers run) and in one process with two threads. No trainer can beat it on this machine.
2. The local distributed job (2 trainers, 2 embedding servers, 1 sync server as processes, gRPC,
   Redis), pipelined (``training.prefetchBatches: 1``, the default) and unpipelined (0), against a
   single-process TorchRec DLRM (EmbeddingBagCollection with fused row-wise Adagrad) of the same model
   on the same data, and the held-out AUC of each at equal samples.
3. Background synchronisation (ShadowSync, S-EASGD) against foreground synchronisation every step:
   throughput ratio and held-out AUC.
4. Peak memory (RSS) per role.

Usage: python benchmarks/trainer_throughput.py [--samples N] [--repeats R]
Prints a table and writes benchmarks/results/trainer_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


HOGWILD_THREADS: int | None = None  # --hogwild-threads overrides the example's


def job_manifest(samples: int, eval_samples: int, mode: str, every_steps: int = 1, prefetch: int = 1) -> dict:
    base = yaml.safe_load((ROOT / "examples" / "dlrm-local.yaml").read_text())
    if HOGWILD_THREADS is not None:
        base["spec"]["training"]["hogwildThreads"] = HOGWILD_THREADS
    base["spec"]["training"]["prefetchBatches"] = prefetch
    base["metadata"]["name"] = f"bench-{mode}-{prefetch}"
    base["spec"]["data"]["trainSamples"] = samples
    base["spec"]["data"]["evalSamples"] = eval_samples
    base["spec"]["training"]["sync"] = {**base["spec"]["training"].get("sync", {}), "mode": mode,
                                        "everySteps": every_steps}
    return base


def run_distributed(samples: int, eval_samples: int, mode: str, prefetch: int = 1) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "job.yaml"
        path.write_text(yaml.safe_dump(job_manifest(samples, eval_samples, mode, prefetch=prefetch)))
        summary_path = Path(tmp) / "summary.json"
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "trainingjob_operator.cli", "run", str(path), "--summary",
                        str(summary_path), "--workdir", str(Path(tmp) / "work")], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        summary = json.loads(summary_path.read_text())
        summary["bench_wall_s"] = time.monotonic() - started
        return summary


SINGLE_PROCESS = r'''
import json, resource, sys, time, torch, torch.nn.functional as F
from torchrec.models.dlrm import DLRM
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection
from torchrec.optim import RowWiseAdagrad
from trainingjob_operator.api import load_manifest
from dlrm_trainer.data.batch import feature_keys
from dlrm_trainer.metrics import StreamingEval
from dlrm_trainer.sources import data_source
samples, eval_samples, threads = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
spec = load_manifest(sys.argv[4]).spec
m = spec.model
keys = feature_keys(m.sparse_features)
tables = [EmbeddingBagConfig(name=f"t_{k}", embedding_dim=m.embedding_dim, num_embeddings=rows, feature_names=[k])
          for k, rows in zip(keys, m.rows())]
ebc = FusedEmbeddingBagCollection(tables=tables, optimizer_type=RowWiseAdagrad,
                                  optimizer_kwargs={"lr": spec.training.embedding_learning_rate},
                                  device=torch.device("cpu"))
torch.manual_seed(spec.data.seed)
model = DLRM(embedding_bag_collection=ebc, dense_in_features=m.dense_features,
             dense_arch_layer_sizes=[*m.bottom_mlp, m.embedding_dim], over_arch_layer_sizes=[*m.top_mlp, 1])
dense_params = [p for n, p in model.named_parameters() if "embedding_bag_collection" not in n]
opt = torch.optim.Adagrad(dense_params, lr=spec.training.dense_learning_rate)
source = data_source(spec)
started = time.monotonic()
for _, b in source.train_batches(0, 1, 0, spec.data.batch_size, samples):
    logits = model(b.dense, b.to_kjt(keys)).squeeze(-1)
    loss = F.binary_cross_entropy_with_logits(logits, b.labels)
    opt.zero_grad()
    loss.backward()
    opt.step()
wall = time.monotonic() - started
acc = StreamingEval()
with torch.no_grad():
    for b in source.eval_batches(eval_samples, 8192):
        acc.add(b.labels.numpy(), torch.sigmoid(model(b.dense, b.to_kjt(keys)).squeeze(-1)).numpy())
r = acc.result()
print(json.dumps({"samples_per_second": samples / wall, "wall_seconds": wall, "auc": r.auc,
                  "logloss": r.log_loss, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


DENSE_ONLY = r'''
import json, sys, time, torch, torch.nn.functional as F
from trainingjob_operator.api import load_manifest
from dlrm_trainer.model import DenseDLRM, flatten_parameters
samples, threads = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(threads)
spec = load_manifest(sys.argv[3]).spec
m, batch = spec.model, spec.data.batch_size
torch.manual_seed(0)
model = DenseDLRM(m)
flat = flatten_parameters(model)
params, adagrad = list(model.parameters()), torch.zeros_like(flat)
inputs = [(torch.randn(batch, m.dense_features), torch.randn(batch, m.sparse_features, m.embedding_dim) * 0.05,
           torch.randint(0, 2, (batch,)).float()) for _ in range(8)]
def step(i):
    dense, pooled, labels = inputs[i % len(inputs)]
    loss = F.binary_cross_entropy_with_logits(model(dense, pooled), labels)
    grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
    with torch.no_grad():
        adagrad.addcmul_(grad, grad)
        flat.addcdiv_(grad, adagrad.sqrt().add_(1e-10), value=-0.01)
for i in range(20):
    step(i)
steps = max(1, samples // batch)
started = time.monotonic()
for i in range(steps):
    step(i)
wall = time.monotonic() - started
print(json.dumps({"samples_per_second": steps * batch / wall, "wall_seconds": wall}))
'''


def run_dense_only(samples: int, processes: int, threads: int) -> dict:
    """``processes`` copies of the dense step at once, each with ``threads`` intra-op threads; the sum of
    their rates (each process gets ``samples / processes``)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "job.yaml"
        path.write_text(yaml.safe_dump(job_manifest(samples, 1000, "background")))
        procs = [subprocess.Popen([sys.executable, "-c", DENSE_ONLY, str(samples // processes), str(threads),
                                   str(path)], stdout=subprocess.PIPE, text=True) for _ in range(processes)]
        rates = [json.loads(p.communicate()[0].strip().splitlines()[-1])["samples_per_second"] for p in procs]
        return {"samples_per_second": sum(rates), "per_process": rates}


def run_single_process(samples: int, eval_samples: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "job.yaml"
        path.write_text(yaml.safe_dump(job_manifest(samples, eval_samples, "background")))
        out = subprocess.run([sys.executable, "-c", SINGLE_PROCESS, str(samples), str(eval_samples), str(threads),
                              str(path)], check=True, capture_output=True, text=True)
        return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--eval-samples", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=1, help="rounds; each runs every variant once, interleaved")
    parser.add_argument("--hogwild-threads", type=int, default=None, help="worker threads per trainer")
    parser.add_argument("--output", default="trainer_throughput.json")
    args = parser.parse_args()
    global HOGWILD_THREADS
    HOGWILD_THREADS = args.hogwild_threads

    sp, bg, fg = "single-process torchrec", "distributed background", "distributed foreground (every step)"
    unpiped = "distributed background, unpipelined"
    ceiling2p, ceiling1p = "dense-only, 2 processes x 1 thread", "dense-only, 1 process x 2 threads"
    runs: dict[str, list[dict]] = {ceiling2p: [], ceiling1p: [], sp: [], bg: [], unpiped: [], fg: []}
    for round_ in range(args.repeats):
        print(f"round {round_ + 1}/{args.repeats}", file=sys.stderr, flush=True)
        runs[ceiling2p].append(run_dense_only(args.samples, processes=2, threads=1))
        runs[ceiling1p].append(run_dense_only(args.samples, processes=1, threads=2))
        runs[sp].append(run_single_process(args.samples, args.eval_samples, threads=2))
        runs[bg].append(run_distributed(args.samples, args.eval_samples, "background"))
        runs[unpiped].append(run_distributed(args.samples, args.eval_samples, "background", prefetch=0))
        runs[fg].append(run_distributed(args.samples, args.eval_samples, "foreground"))

    def med(name: str, key: str) -> float:
        return statistics.median(float(r[key]) for r in runs[name])

    def med_or_none(name: str, key: str) -> float | None:
        return med(name, key) if all(key in r for r in runs[name]) else None

    rows = []
    for name, results in runs.items():
        rows.append({
            "variant": name, "samples_per_second": med(name, "samples_per_second"),
            "auc": med_or_none(name, "auc"), "logloss": med_or_none(name, "logloss"),
            "peak_rss_mb": (results[-1].get("peak_rss_mb_by_role") or
                            ({"process": results[-1]["peak_rss_mb"]} if "peak_rss_mb" in results[-1] else None)),
            "runs": len(results),
        })
    rss = runs[bg][-1].get("peak_rss_mb_by_role") or {}
    ratios = {
        "pipelined_vs_dense_only_ceiling": med(bg, "samples_per_second") / med(ceiling2p, "samples_per_second"),
        "pipelined_vs_single_process_torchrec": med(bg, "samples_per_second") / med(sp, "samples_per_second"),
        "pipelined_vs_unpipelined_throughput": med(bg, "samples_per_second") / med(unpiped, "samples_per_second"),
        "pipelined_minus_unpipelined_auc": med(bg, "auc") - med(unpiped, "auc"),
        "background_vs_foreground_throughput": med(bg, "samples_per_second") / med(fg, "samples_per_second"),
        "background_minus_foreground_auc": med(bg, "auc") - med(fg, "auc"),
        "teacher_auc": runs[bg][-1].get("teacher_auc"),
        "exchanges_background": runs[bg][-1]["sync"]["exchanges"],
        "exchanges_foreground": runs[fg][-1]["sync"]["exchanges"],
    }
    # Issue #12's memory bound: no role's peak RSS above what it was before the pipeline.
    rss_before = {"trainer": 879.0, "embedding-server": 572.0, "sync-server": 378.0}
    memory = {role: {"peak_rss_mb": rss.get(role), "before_mb": before,
                     "ok": rss.get(role) is not None and rss[role] <= before} for role, before in rss_before.items()}
    print(f"\n{'variant':<38} {'samples/s':>10} {'AUC':>7} {'logloss':>8}  peak RSS MB")
    for r in rows:
        auc_text = f"{r['auc']:>7.4f}" if r["auc"] is not None else f"{'-':>7}"
        loss_text = f"{r['logloss']:>8.4f}" if r["logloss"] is not None else f"{'-':>8}"
        print(f"{r['variant']:<38} {r['samples_per_second']:>10,.0f} {auc_text} {loss_text}  {r['peak_rss_mb'] or ''}")
    for k, v in ratios.items():
        print(f"{k:<45} {v:.4f}" if isinstance(v, float) else f"{k:<45} {v}")
    for role, m in memory.items():
        print(f"peak RSS {role:<36} {m['peak_rss_mb']} MB (before the pipeline: {m['before_mb']:.0f} MB)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / args.output
    out.write_text(json.dumps({"machine": platform.machine(), "cpus": os.cpu_count(),
                               "hogwild_threads": args.hogwild_threads,
                               "samples": args.samples, "repeats": args.repeats, "rows": rows,
                               "ratios": ratios, "memory": memory, "raw": runs}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
