"""10,000 fuzzed manifests (issue #10): every broken one is rejected with the broken field named, in one line,
by the parser the CLI uses, by ``trainingjob validate`` itself (exit code 2, nothing started), and by the
operator (a Failed/InvalidSpec condition, no pods), which never crashes and never hot-loops.

Each manifest is a valid TrainingJob with one place broken (``tests/support/fuzz.py``: a wrong-typed, out of
range, huge, non-finite or unicode value, an unknown key, a missing key), from seeds 0..N-1.

Usage: python benchmarks/fuzz_manifests.py [--manifests 10000] [--cli 100] [--operator-jobs 10000]
Writes benchmarks/results/fuzz_manifests.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:  # the fuzzer and the test cluster live in tests/support
    sys.path.insert(0, str(ROOT))

from tests.support.fuzz import broken_manifest, names_the_place  # noqa: E402
from trainingjob_operator.api import ManifestError, parse_manifest  # noqa: E402


def parse_all(count: int) -> dict[str, Any]:
    counts = {"valid": 0, "rejected": 0, "field_named": 0, "one_line": 0, "crashes": 0}
    misses: list[str] = []
    started = time.perf_counter()
    for seed in range(count):
        document, path, how = broken_manifest(seed)
        try:
            parse_manifest(document)
            counts["valid"] += 1
        except ManifestError as error:
            counts["rejected"] += 1
            counts["field_named"] += names_the_place(error.field, path)
            counts["one_line"] += "\n" not in str(error)
            if not names_the_place(error.field, path) and len(misses) < 10:
                misses.append(f"seed {seed}: {how} at {path}: {error}")
        except Exception as error:  # a crash
            counts["crashes"] += 1
            misses.append(f"seed {seed}: CRASH {type(error).__name__}: {error}")
    return {**counts, "seconds": round(time.perf_counter() - started, 2), "misses": misses}


def cli_sample(count: int, workdir: Path) -> dict[str, Any]:
    """``trainingjob validate`` on broken manifests: exit 2 and one line on stderr naming the field."""
    ok = total = 0
    for seed in range(count):
        document, path, _ = broken_manifest(seed)
        try:
            parse_manifest(document)
            continue
        except ManifestError:
            pass
        total += 1
        manifest = workdir / f"fuzz-{seed}.yaml"
        manifest.write_text(yaml.safe_dump(document, allow_unicode=True))
        done = subprocess.run([sys.executable, "-m", "trainingjob_operator.cli", "validate", str(manifest)],
                              capture_output=True, text=True)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        # "error: FILE: FIELD: expectation"
        field = lines[0].split(": ", 3)[2] if lines and lines[0].count(": ") >= 3 else ""
        ok += done.returncode == 2 and len(lines) == 1 and names_the_place(field, path)
    return {"broken": total, "exit_2_one_line_field_named": ok}


async def operator_run(count: int) -> dict[str, Any]:
    import kmock

    from tests.support.cluster import NAMESPACE, Cluster, Operator, operator_config
    from tests.support.emulator import ApiServerEmulator
    from trainingjob_operator.local.redis_server import EmbeddedRedis

    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp)) as redis_url:
        async with ApiServerEmulator() as api, kmock.Server(api):
            cluster = Cluster(api=api, redis_url=redis_url)
            operator = Operator(config=operator_config(api, redis_url))
            await operator.start()
            names: dict[str, Any] = {}
            started = time.perf_counter()
            for seed in range(count):
                document, path, _ = broken_manifest(seed)
                if path[0] in ("metadata", "apiVersion", "kind"):
                    continue
                try:
                    parse_manifest(document)
                    continue  # only broken ones: a valid job would start pods and train
                except ManifestError:
                    pass
                name = f"fuzz-{seed}"
                document["metadata"] = {"name": name, "namespace": NAMESPACE}
                names[name] = path
                await cluster.create_job(document)
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and any(cluster.phase(n) is None for n in names):
                await asyncio.sleep(0.5)
            settled_s = time.perf_counter() - started
            quiet_from = time.monotonic()
            await asyncio.sleep(5.0)
            rewrites = [e for e in cluster.requests("PATCH", "trainingjobs", quiet_from) if e.name in names]
            failed = named = 0
            for name, path in names.items():
                condition = cluster.condition(name, "Failed")
                if condition is not None and condition["reason"] == "InvalidSpec":
                    failed += 1
                    named += names_the_place(condition["message"].split(": ", 1)[0], path)
            pods = len(api.live("pods", NAMESPACE))
            alive = operator.thread is not None and operator.thread.is_alive() and operator.error is None
            await operator.stop()
    return {"jobs": len(names), "failed_invalid_spec": failed, "field_named": named, "pods_created": pods,
            "status_writes_after_settling": len(rewrites), "operator_alive": alive,
            "seconds_to_report_all": round(settled_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifests", type=int, default=10_000)
    parser.add_argument("--cli", type=int, default=100, help="manifests also run through `trainingjob validate`")
    parser.add_argument("--operator-jobs", type=int, default=10_000, help="seeds also created on the operator")
    args = parser.parse_args()
    parsed = parse_all(args.manifests)
    with tempfile.TemporaryDirectory() as tmp:
        cli = cli_sample(args.cli, Path(tmp))
    operated = asyncio.run(operator_run(args.operator_jobs)) if args.operator_jobs else None
    print(f"parser: {args.manifests} manifests, {parsed['rejected']} rejected, {parsed['valid']} still valid, "
          f"{parsed['field_named']}/{parsed['rejected']} name the broken field, {parsed['one_line']} one line, "
          f"{parsed['crashes']} crashes ({parsed['seconds']} s)")
    for miss in parsed["misses"]:
        print(f"  {miss}")
    print(f"trainingjob validate: {cli['exit_2_one_line_field_named']}/{cli['broken']} broken manifests: exit 2, "
          f"one line, the field named")
    if operated:
        print(f"operator: {operated['jobs']} broken jobs, {operated['failed_invalid_spec']} Failed/InvalidSpec, "
              f"{operated['field_named']} with the field named, {operated['pods_created']} pods created, "
              f"{operated['status_writes_after_settling']} status writes after settling, alive: "
              f"{operated['operator_alive']} ({operated['seconds_to_report_all']} s to report all)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "fuzz_manifests.json"
    out.write_text(json.dumps({"args": vars(args), "parser": parsed, "cli": cli, "operator": operated}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
