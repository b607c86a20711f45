"""Does losing a shard's tail hurt? The synthetic teacher's ``tailSignal`` knob, measured (issue #9).

CPR's trade-off only shows on data where the rarely accessed rows matter: MFU/SSU saves keep the hot
rows and leave the tail to the last full save, so a failure under a partial strategy costs what the tail
learnt since then. On the original teacher (``tailSignal: 0``) ~99.9% of the per-id signal sits in the top
~100 ids of each table, so resetting the tail costs nothing by construction.

The experiment: train the demo model (26 tables x 100k rows, dim 16, 2M samples, batch 1024) with the
trainer's own step (``Trainer.step``: the dense DLRM, Adagrad, deduplicated row fetches and row-wise
Adagrad updates on two embedding shards), in one process so that nothing but the reset differs between
two runs of a pair. Halfway, one run of each pair resets shard 0's tail: every row outside the shard's
hottest 1% (by updates so far) goes back to its initial weights and optimizer state, as a restore from a
checkpoint that held only the hot rows would leave it. Both runs then finish on the same data; the
held-out AUC difference at the end is the cost. Each teacher is run with several seeds (data and model),
reported as a mean and a 95% confidence interval.

Usage: python benchmarks/teacher_tail.py [--samples N] [--seeds K] [--tail-signals 0,0.5]
Writes benchmarks/results/teacher_tail.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

from dlrm_trainer.data.synthetic import SyntheticCriteo  # noqa: E402
from dlrm_trainer.embedding_server import EmbeddingShard, ShardTables  # noqa: E402
from dlrm_trainer.rpc import Message  # noqa: E402
from dlrm_trainer.trainer import Trainer  # noqa: E402
from trainingjob_operator.api.spec import TrainingJobSpec  # noqa: E402

SHARDS = 2
HOT_SHARE = 0.01


class InProcessShard:
    """An embedding shard answering the trainer's calls in this process (no gRPC, same server code)."""

    def __init__(self, shard: EmbeddingShard) -> None:
        self.shard = shard

    def call(self, method: str, request: Message, deadline_s: float | None = None) -> Message:
        t = request.tensors
        if method == "Lookup":
            return Message({"rows": self.shard.lookup(t["ids"], t["counts"])})
        if method == "Update":
            self.shard.update(t["ids"], t["counts"], t["grads"])
            return Message()
        raise ValueError(method)

    def call_async(self, method: str, request: Message) -> futures.Future[Message]:
        done: futures.Future[Message] = futures.Future()
        done.set_result(self.call(method, request))
        return done


def spec_for(samples: int, seed: int, tail_signal: float) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate({
        "model": {"rowsPerTable": 100_000, "embeddingDim": 16, "bottomMlp": [512, 256], "topMlp": [512, 256]},
        "data": {"trainSamples": samples, "batchSize": 1024, "seed": seed, "synthetic": {"tailSignal": tail_signal}},
        "replicas": {"embeddingServer": {"replicas": SHARDS}},
    })


def reset_tail(shard: EmbeddingShard, initial: ShardTables) -> int:
    """Rows outside the shard's hottest HOT_SHARE go back to their initial state; returns how many changed."""
    reset = 0
    with shard.lock:
        for t, access in enumerate(shard.tables.access):
            keep = max(1, int(HOT_SHARE * access.numel()))
            hot = torch.topk(access.to(torch.int64), keep).indices
            tail = torch.ones(access.numel(), dtype=torch.bool)
            tail[hot] = False
            touched = tail & (access > 0)
            shard.tables.weights[t][tail] = initial.weights[t][tail]
            shard.tables.adagrad[t][tail] = initial.adagrad[t][tail]
            reset += int(touched.sum())
    return reset


def run(samples: int, seed: int, tail_signal: float, reset_at: float | None) -> dict[str, Any]:
    spec = spec_for(samples, seed, tail_signal)
    torch.manual_seed(seed)
    rows = spec.model.rows()
    source = SyntheticCriteo(rows, num_dense=spec.model.dense_features, seed=seed,
                             embedding_dim=spec.model.embedding_dim, tail_signal=tail_signal)
    shards = [EmbeddingShard(ShardTables.initialise(rows, spec.model.embedding_dim, SHARDS, s, seed), SHARDS, s,
                             spec.training.embedding_learning_rate) for s in range(SHARDS)]
    trainer = Trainer(spec, 0, None, source, [InProcessShard(s) for s in shards], None,  # type: ignore[arg-type]
                      torch.device("cpu"))
    batch_size = spec.data.batch_size
    batches = (samples + batch_size - 1) // batch_size
    reset_batch = None if reset_at is None else int(reset_at * batches)
    started, pending, reset_rows = time.monotonic(), [], 0
    for index in range(batches):
        if index == reset_batch:
            initial = ShardTables.initialise(rows, spec.model.embedding_dim, SHARDS, 0, seed)
            reset_rows = reset_tail(shards[0], initial)
        batch = source.batch("train", index, batch_size).head(min(batch_size, samples - index * batch_size))
        loss, pending = trainer.step(batch, pending)
        trainer.counters.add(len(batch), loss)
    trainer.embeddings.wait(pending)
    result = trainer.evaluate(spec.data.eval_samples)
    return {"seed": seed, "tail_signal": tail_signal, "reset": reset_at is not None, "auc": result["auc"],
            "teacher_auc": source.teacher_auc(spec.data.eval_samples, 4096), "reset_rows": reset_rows,
            "seconds": round(time.monotonic() - started, 1)}


def mean_ci(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    t95 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306, 10: 2.262}
    return mean, t95.get(len(values), 1.96) * statistics.stdev(values) / len(values) ** 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2_000_000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tail-signals", default="0,0.5")
    args = parser.parse_args()
    torch.set_num_threads(1)
    signals = [float(x) for x in args.tail_signals.split(",")]
    rows: list[dict[str, Any]] = []
    for tail_signal in signals:
        for seed in range(args.seeds):
            for reset_at in (None, 0.5):
                label = "reset" if reset_at is not None else "no reset"
                print(f"tailSignal {tail_signal}, seed {seed}, {label} ...", file=sys.stderr, flush=True)
                rows.append(run(args.samples, seed, tail_signal, reset_at))
    summary = []
    print(f"\n{'tailSignal':>10} {'seeds':>5} {'AUC':>7} {'teacher':>7} {'AUC cost of the reset (mean ± 95% CI)':>38}")
    for tail_signal in signals:
        pairs = [(a, b) for a in rows for b in rows if a["tail_signal"] == b["tail_signal"] == tail_signal
                 and a["seed"] == b["seed"] and not a["reset"] and b["reset"]]
        costs = [a["auc"] - b["auc"] for a, b in pairs]
        mean, ci = mean_ci(costs)
        auc = statistics.fmean(a["auc"] for a, _ in pairs)
        teacher = statistics.fmean(a["teacher_auc"] for a, _ in pairs)
        summary.append({"tail_signal": tail_signal, "seeds": len(pairs), "auc": auc, "teacher_auc": teacher,
                        "reset_cost_mean": mean, "reset_cost_ci95": ci, "costs": costs})
        print(f"{tail_signal:>10} {len(pairs):>5} {auc:>7.4f} {teacher:>7.4f} {mean:>26.4f} ± {ci:.4f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "teacher_tail.json"
    out.write_text(json.dumps({"samples": args.samples, "summary": summary, "runs": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
