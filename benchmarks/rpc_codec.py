"""The RPC codec against safetensors.torch on the messages a trainer step sends, side by side in one run.

Both write the same format (safetensors); ``dlrm_trainer.rpc`` joins the tensors' own buffers once and reads
with one copy, where ``safetensors.torch.save`` copies each tensor to bytes and again into the buffer. Each cell
is the median of ``--repeats`` rounds of ``--calls`` calls (ms per call), measured alternately so machine noise
hits both alike.

Prints a table and writes ``benchmarks/results/rpc_codec.json``.
Example: ``.venv/bin/python benchmarks/rpc_codec.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from dlrm_trainer.rpc import Message, decode, encode

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def messages(batch: int, features: int, dim: int) -> dict[str, Message]:
    """A step's messages (the demo model: 26 tables, dim 16), of one embedding shard out of two."""
    ids = torch.randint(0, 100_000, (batch * features // 2,))
    return {
        "lookup request (ids)": Message({"ids": ids, "counts": torch.full((features,), batch // 2)}),
        "lookup reply (rows)": Message({"rows": torch.randn(ids.numel(), dim)}),
        "update (ids + grads)": Message({"ids": ids, "counts": torch.full((features,), batch // 2),
                                         "grads": torch.randn(ids.numel(), dim)}),
    }


def per_call_ms(fn: Callable[[], object], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls * 1e3


def safetensors_encode(message: Message) -> bytes:
    meta = torch.frombuffer(bytearray(json.dumps(message.meta).encode()), dtype=torch.uint8)
    return st_save({**{k: v.contiguous() for k, v in message.tensors.items()}, "__meta__": meta})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--output", type=Path, default=RESULTS / "rpc_codec.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    for name, message in messages(args.batch, 26, 16).items():
        wire = encode(message)
        theirs = safetensors_encode(message)
        timings: dict[str, list[float]] = {"encode": [], "safetensors save": [], "decode": [], "safetensors load": []}
        for _ in range(args.repeats):
            timings["encode"].append(per_call_ms(lambda m=message: encode(m), args.calls))
            timings["safetensors save"].append(per_call_ms(lambda m=message: safetensors_encode(m), args.calls))
            timings["decode"].append(per_call_ms(lambda w=wire: decode(w), args.calls))
            timings["safetensors load"].append(per_call_ms(lambda w=theirs: st_load(w), args.calls))
        medians = {k: statistics.median(v) for k, v in timings.items()}
        rows.append({"message": name, "bytes": len(wire), **{k: round(v, 4) for k, v in medians.items()},
                     "encode speedup": round(medians["safetensors save"] / medians["encode"], 2),
                     "decode speedup": round(medians["safetensors load"] / medians["decode"], 2)})
    print(f"{'message':22s} {'bytes':>9s} {'encode':>8s} {'st save':>8s} {'x':>5s} {'decode':>8s} {'st load':>8s} "
          f"{'x':>5s}   (ms per call, medians of {args.repeats} rounds)")
    for r in rows:
        print(f"{r['message']:22s} {r['bytes']:9d} {r['encode']:8.3f} {r['safetensors save']:8.3f} "
              f"{r['encode speedup']:5.2f} {r['decode']:8.3f} {r['safetensors load']:8.3f} {r['decode speedup']:5.2f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "benchmark": "rpc_codec", "command": " ".join(sys.argv), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
