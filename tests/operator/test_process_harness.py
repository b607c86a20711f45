"""The operator with real replicas: every pod it creates runs as a local ``python -m dlrm_trainer``.

``ProcessKubelet`` plays the kubelet for the emulated API server: it starts a process for each new
pod with the pod's env contract resolved (``TJ_SPEC`` from the ConfigMap, ``TJ_INSTANCE`` = pod
UID, ``POD_IP`` = 127.0.0.1), reports Running, mirrors the process's exit into the pod status
(Succeeded/Failed with the exit code, 128+N for signal N) and stops the process when its pod is
deleted. Everything else is real: kopf, the operator, Redis, gRPC between the replicas, torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.operator.conftest import NAMESPACE, Cluster, Operator, eventually, manifest
from tests.support.emulator import MAIN_CONTAINER, ApiServerEmulator

pytestmark = pytest.mark.processes

TERMINATION_GRACE_S = 5.0


@dataclass
class PodProcess:
    name: str
    uid: str
    popen: subprocess.Popen[bytes]
    reported: bool = False
    kill_at: float | None = None


class ProcessKubelet:
    def __init__(self, api: ApiServerEmulator, workdir: Path) -> None:
        self.api = api
        self.workdir = workdir
        self.processes: dict[str, PodProcess] = {}  # pod UID -> process
        self.started: list[str] = []  # pod names, in start order

    def env_of(self, pod: dict[str, Any]) -> dict[str, str]:
        env = {"PYTHONUNBUFFERED": "1", "PATH": os.environ.get("PATH", "")}
        for item in pod["spec"]["containers"][0]["env"]:
            if "value" in item:
                env[item["name"]] = item["value"]
                continue
            source = item["valueFrom"]
            if "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                config_map = next(c for c in self.api.live("configmaps", NAMESPACE)
                                  if c["metadata"]["name"] == ref["name"])
                env[item["name"]] = config_map["data"][ref["key"]]
            else:
                env[item["name"]] = {"metadata.uid": pod["metadata"]["uid"],
                                     "status.podIP": "127.0.0.1"}[source["fieldRef"]["fieldPath"]]
        env["TJ_CHECKPOINT_DIR"] = str(self.workdir / "checkpoints")  # shared, like a PVC
        return env

    async def start(self, pod: dict[str, Any]) -> None:
        name, uid = pod["metadata"]["name"], pod["metadata"]["uid"]
        log = (self.workdir / f"{name}-{uid[:8]}.log").open("wb")
        popen = subprocess.Popen([sys.executable, "-m", "dlrm_trainer"], env=self.env_of(pod), stdout=log,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.processes[uid] = PodProcess(name, uid, popen)
        self.started.append(name)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        await self.api.patch_pod_status(NAMESPACE, name, {
            "phase": "Running", "startTime": now, "podIP": "127.0.0.1",
            "containerStatuses": [{"name": MAIN_CONTAINER, "ready": True, "state": {"running": {"startedAt": now}}}],
        })

    async def sync(self) -> None:
        pods = {p["metadata"]["uid"]: p for p in self.api.live("pods", NAMESPACE)}
        for uid, pod in pods.items():
            if uid not in self.processes and not pod["metadata"].get("deletionTimestamp") \
                    and pod.get("status", {}).get("phase") == "Pending":
                await self.start(pod)
        for uid, proc in self.processes.items():
            code = proc.popen.poll()
            gone = uid not in pods or pods[uid]["metadata"].get("deletionTimestamp")
            if code is None and gone:
                if proc.kill_at is None:
                    proc.popen.terminate()
                    proc.kill_at = time.monotonic() + TERMINATION_GRACE_S
                elif time.monotonic() > proc.kill_at:
                    proc.popen.kill()
            elif code is not None and not proc.reported and not gone:
                proc.reported = True
                await self.api.finish_pod(NAMESPACE, proc.name, code if code >= 0 else 128 - code)

    async def run(self) -> None:
        while True:
            await self.sync()
            await asyncio.sleep(0.1)

    def process(self, name: str) -> PodProcess:
        return next(p for p in self.processes.values() if p.name == name and p.popen.poll() is None)

    def stop(self) -> None:
        for proc in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                proc.popen.kill()
            proc.popen.wait(10)


@pytest.fixture
async def kubelet(cluster: Cluster, tmp_path: Path) -> Any:
    cluster.api.pod_startup_s = None  # this kubelet starts pods, not the emulator's toy one
    harness = ProcessKubelet(cluster.api, tmp_path)
    task = asyncio.create_task(harness.run())
    yield harness
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    harness.stop()


SMALL: dict[str, Any] = {
    "model": {"sparseFeatures": 8, "rowsPerTable": 5000, "embeddingDim": 8, "bottomMlp": [32], "topMlp": [32]},
    "data": {"trainSamples": 60_000, "evalSamples": 8192, "batchSize": 512},
    "training": {"hogwildThreads": 1, "progressEverySeconds": 0.5},
    "recovery": {"heartbeatTimeoutSeconds": 10},
}


@pytest.mark.parametrize("victim", ["trainer-1", "embedding-server-0", "sync-server-0"])
async def test_a_sigkilled_replica_is_replaced_alone_and_the_job_completes(
    cluster: Cluster, operator: Operator, kubelet: ProcessKubelet, victim: str
) -> None:
    await cluster.create_job(manifest("real", **SMALL))
    await eventually(lambda: cluster.running("real", 5), timeout=30, what="5 running pods")
    coord = cluster.coordination("real")
    await eventually(lambda: all((p := coord.progress(r)) is not None and p.samples > 0 for r in (0, 1)),
                     timeout=90, what="both trainers training")

    kubelet.process(f"real-{victim}").popen.send_signal(signal.SIGKILL)

    await eventually(lambda: cluster.phase("real") == "Succeeded", timeout=150, what="job Succeeded")
    everyone = ["real-embedding-server-0", "real-embedding-server-1", "real-sync-server-0", "real-trainer-0",
                "real-trainer-1"]
    assert sorted(kubelet.started) == sorted([*everyone, f"real-{victim}"])  # only the victim started twice
    [failure] = coord.failures()
    assert (failure["pod"], failure["reason"], failure["exit_code"]) == (f"real-{victim}", "ExitCode137", 137)
    assert all(coord.result(rank) is not None for rank in (0, 1))
    trained = sum(p.samples for p in coord.all_progress(2).values())
    assert trained >= SMALL["data"]["trainSamples"]
    restarts = {role: r["restarts"] for role, r in cluster.status("real")["replicas"].items()}
    assert restarts == {role: int(victim.startswith(role)) for role in restarts}
