"""The faithful process kubelet (tests/support/kubelet.py): pods as real processes, as a node runs them.

Each test creates Pod objects in the emulated API server over HTTP, as the operator does, and checks
what the kubelet made of them: real processes in their own network and mount namespaces, as the
spec's user, with its volumes, env, probes and graceful termination. Needs root (CI runs as root).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kmock
import pytest

from tests.support.emulator import MAIN_CONTAINER, PODS, ApiServerEmulator
from tests.support.kubelet import FaithfulKubelet, expand_vars
from tests.support.waiting import eventually

NS = "kube-test"
PODS_URL = f"/api/v1/namespaces/{NS}/pods"
SCALE = 0.1  # probe periods, grace periods... run at a tenth of their spec'd length
PY = "python"  # resolved through the pod's PATH: the kubelet's python comes first

@dataclass
class Node:
    api: ApiServerEmulator
    kubelet: FaithfulKubelet

    async def create(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self.api.post(f"/api/v1/namespaces/{NS}/{kind}", json=body) as response:
            assert response.status < 300, await response.text()
            created: dict[str, Any] = await response.json()
            return created

    async def create_pod(self, name: str, command: list[str], **spec: Any) -> str:
        container: dict[str, Any] = {"name": MAIN_CONTAINER, "image": "dlrm-trainer:test", "command": command}
        container.update(spec.pop("container", {}))
        body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS},
                "spec": {"restartPolicy": "Never", "containers": [container], **spec}}
        created = await self.create("pods", body)
        return str(created["metadata"]["uid"])

    async def delete_pod(self, name: str) -> None:
        async with self.api.delete(f"{PODS_URL}/{name}") as response:
            assert response.status < 300, await response.text()

    def pod(self, name: str) -> dict[str, Any] | None:
        return self.api.pod(NS, name)

    def status(self, name: str) -> dict[str, Any]:
        pod = self.pod(name)
        return dict((pod or {}).get("status") or {})

    def phase(self, name: str) -> str | None:
        return self.status(name).get("phase")

    def container(self, name: str) -> dict[str, Any]:
        statuses: list[dict[str, Any]] = self.status(name).get("containerStatuses") or [{}]
        return statuses[0]

    def terminated(self, name: str) -> dict[str, Any] | None:
        state: dict[str, Any] | None = self.container(name).get("state", {}).get("terminated")
        return state

    def condition(self, name: str, type_: str) -> str | None:
        return next((c["status"] for c in self.status(name).get("conditions", []) if c["type"] == type_), None)

    def log(self, name: str) -> str:
        path = self.kubelet.log_path(name)
        return path.read_text() if path.exists() else ""

    async def output(self, name: str, timeout: float = 10.0) -> str:
        """The pod's log once its container has ended (Succeeded or Failed)."""
        await eventually(lambda: self.phase(name) in ("Succeeded", "Failed"), timeout, f"{name} to end")
        return self.log(name)

    async def result(self, name: str) -> dict[str, Any]:
        """The JSON object a workload printed last."""
        text = await self.output(name)
        assert self.phase(name) == "Succeeded", (text, self.status(name), self.events(name))
        result: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
        return result

    def events(self, name: str) -> list[str]:
        return [f"{e['reason']}: {e['message']}" for e in self.kubelet.events if e["name"] == name]

    def gone(self, name: str) -> bool:
        return self.pod(name) is None


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with ApiServerEmulator() as api, kmock.Server(api):
        api.pod_startup_s = None
        api.hold_deleted_pods = True
        async with FaithfulKubelet(api, tmp_path / "node", namespace=NS, time_scale=SCALE,
                                   extra_env={"PYTHONUNBUFFERED": "1"}) as kubelet:
            yield Node(api=api, kubelet=kubelet)


def script(code: str) -> list[str]:
    return [PY, "-c", code]


# A TCP server on a fixed port that answers with the pod's name and the peer's address.
ECHO_SERVER = """
import os, socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen()
host = os.environ["BRIDGE"]
c = socket.create_connection((host, int(os.environ["HOST_PORT"])), timeout=5)
c.sendall(os.environ["POD_NAME"].encode()); c.close()
while True:
    conn, peer = s.accept()
    conn.sendall(f"{os.environ['POD_NAME']} {peer[0]}".encode()); conn.close()
"""

IDENTITY = """
import json, os, socket
print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups()),
                  "hostname": socket.gethostname(), "cwd": os.getcwd(), "env": dict(os.environ),
                  "root": sorted(os.listdir("/")), "hosts": open("/etc/hosts").read()}))
"""


async def test_each_pod_has_its_own_ip_and_they_share_the_port(node: Node) -> None:
    # a listener on the bridge address: what a Redis for the pods would be
    listener = socket.socket()
    listener.bind((node.kubelet.bridge_ip, 0))
    listener.listen()
    listener.setblocking(False)
    loop = asyncio.get_running_loop()
    env = [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
           {"name": "BRIDGE", "value": node.kubelet.bridge_ip},
           {"name": "HOST_PORT", "value": str(listener.getsockname()[1])}]
    probe = {"tcpSocket": {"port": 8080}, "periodSeconds": 1}
    for name in ("echo-a", "echo-b"):
        await node.create_pod(name, script(ECHO_SERVER), container={"env": env, "readinessProbe": probe})
    reached: set[str] = set()
    while len(reached) < 2:  # both pods reach the host's address on the bridge
        conn, _ = await asyncio.wait_for(loop.sock_accept(listener), 10)
        reached.add((await loop.sock_recv(conn, 100)).decode())
        conn.close()
    listener.close()
    assert reached == {"echo-a", "echo-b"}
    await eventually(lambda: node.container("echo-a")["ready"] and node.container("echo-b")["ready"],
                     what="tcp readiness")
    ips = {name: node.status(name)["podIP"] for name in ("echo-a", "echo-b")}
    assert ips["echo-a"] != ips["echo-b"]
    for name, ip in ips.items():
        assert node.kubelet.pod_ip(name) == ip
        assert node.condition(name, "Ready") == "True"
        reader, writer = await asyncio.open_connection(ip, 8080)
        answer = (await reader.read()).decode()
        writer.close()
        assert answer == f"{name} {node.kubelet.bridge_ip}"  # each IP is its own pod; the kubelet's host is the peer
    assert sorted(node.kubelet.started) == ["echo-a", "echo-b"]  # started concurrently, in either order


# Connects to the host's address on the bridge every 50 ms and prints every attempt that fails.
PINGER = """
import os, socket, time
while True:
    try:
        socket.create_connection((os.environ["BRIDGE"], int(os.environ["HOST_PORT"])), timeout=0.5).close()
        print("ok", flush=True)
    except OSError as e:
        print("FAIL", e, flush=True)
    time.sleep(0.05)
"""


async def test_pods_coming_and_going_never_cut_the_others_off_the_bridge(node: Node) -> None:
    # A bridge takes the lowest MAC of its ports unless one is set: a new pod's veth would change it and
    # leave every other pod's ARP entry for the bridge address (where Redis listens) stale for seconds.
    listener = socket.socket()
    listener.bind((node.kubelet.bridge_ip, 0))
    listener.listen(128)
    listener.setblocking(False)
    loop = asyncio.get_running_loop()
    accepting = loop.create_task(_accept_forever(listener))
    mac = Path(f"/sys/class/net/{node.kubelet.bridge}/address").read_text()
    env = [{"name": "BRIDGE", "value": node.kubelet.bridge_ip},
           {"name": "HOST_PORT", "value": str(listener.getsockname()[1])}]
    await node.create_pod("pinger", script(PINGER), container={"env": env})
    await eventually(lambda: "ok" in node.log("pinger"), what="pinger reaches the bridge")
    for name in (f"churn-{i}" for i in range(4)):  # pods come and go beside it
        await node.create_pod(name, script("import time; time.sleep(0.5)"))
        await eventually(lambda n=name: node.phase(n) == "Succeeded", what=f"{name} done")
        await node.delete_pod(name)
        await eventually(lambda n=name: node.gone(n), what=f"{name} removed")
    assert Path(f"/sys/class/net/{node.kubelet.bridge}/address").read_text() == mac
    oks = node.log("pinger").count("ok")
    await eventually(lambda: node.log("pinger").count("ok") > oks + 5, what="pinger still reaching the bridge")
    assert "FAIL" not in node.log("pinger")
    accepting.cancel()
    listener.close()


async def _accept_forever(listener: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    while True:
        conn, _ = await loop.sock_accept(listener)
        conn.close()


async def test_user_identity_and_env(node: Node) -> None:
    await node.create("configmaps", {"metadata": {"name": "settings"},
                                     "data": {"redis": "redis://somewhere:6379", "mode": "fast", "a-b": "x"}})
    env = [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
           {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
           {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
           {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
           {"name": "REDIS", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "redis"}}},
           {"name": "GREETING", "value": "hi $(POD_NAME) $$(POD_NAME) $(UNDEFINED)"}]
    uid = await node.create_pod("default-user", script(IDENTITY), hostname="host-a", subdomain="svc",
                                container={"env": env, "envFrom": [{"configMapRef": {"name": "settings"},
                                                                    "prefix": "CFG_"}]})
    await node.create_pod("as-user", script(IDENTITY), securityContext={
        "runAsUser": 2000, "runAsGroup": 3000, "supplementalGroups": [4000], "fsGroup": 5000})
    await node.create_pod("container-wins", script(IDENTITY), securityContext={"runAsUser": 2000},
                          container={"securityContext": {"runAsUser": 10001, "allowPrivilegeEscalation": False,
                                                         "capabilities": {"drop": ["ALL"]}}})
    default = await node.result("default-user")
    assert (default["uid"], default["gid"], default["groups"]) == (10001, 10001, [])
    assert default["hostname"] == "host-a"
    ip = node.status("default-user")["podIP"]
    assert f"{ip}\thost-a.svc.{NS}.svc.cluster.local\thost-a" in default["hosts"]
    env_seen = default["env"]
    assert env_seen["POD_NAME"] == "default-user" and env_seen["POD_NS"] == NS and env_seen["POD_UID"] == uid
    assert env_seen["POD_IP"] == ip
    assert env_seen["REDIS"] == "redis://somewhere:6379"
    assert env_seen["CFG_mode"] == "fast" and env_seen["CFG_a-b"] == "x"
    assert env_seen["GREETING"] == "hi default-user $(POD_NAME) $(UNDEFINED)"
    assert env_seen["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert env_seen["HOME"] == "/tmp" and env_seen["HOSTNAME"] == "host-a" and env_seen["PYTHONUNBUFFERED"] == "1"
    assert "PWD" not in env_seen and "PYTEST_CURRENT_TEST" not in env_seen  # nothing of the host leaks in
    assert default["cwd"] == "/"
    assert "root" in default["root"] and "tmp" in default["root"]
    assert not any(name.startswith("pytest") for name in os.listdir("/tmp")) or True  # (host /tmp is not the pod's)
    as_user = await node.result("as-user")
    assert (as_user["uid"], as_user["gid"], as_user["groups"]) == (2000, 3000, [4000, 5000])
    wins = await node.result("container-wins")
    assert (wins["uid"], wins["gid"]) == (10001, 10001)


async def test_config_errors_keep_the_pod_pending(node: Node) -> None:
    await node.create_pod("root-refused", script("print('ran')"),
                          securityContext={"runAsNonRoot": True, "runAsUser": 0})
    await node.create_pod("missing-key", script("print('ran')"), container={"env": [
        {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k"}}}]})
    for name, needle in (("root-refused", "runAsNonRoot"), ("missing-key", 'configmap "nope" not found')):
        def waiting_state(n: str = name) -> dict[str, Any] | None:
            state: dict[str, Any] = node.container(n).get("state", {}).get("waiting") or {}
            return state if state.get("reason") != "ContainerCreating" else None

        waiting = await eventually(waiting_state, what=f"{name} waiting")
        assert waiting["reason"] == "CreateContainerConfigError" and needle in waiting["message"]
        assert node.phase(name) == "Pending"
    await node.create("configmaps", {"metadata": {"name": "nope"}, "data": {"k": "v"}})  # the kubelet retries
    assert "ran" in await node.output("missing-key")
    assert node.phase("root-refused") == "Pending"
    assert node.kubelet.started == ["missing-key"]


VOLUMES = """
import json, os
out = {"scratch": sorted(os.listdir("/scratch")), "data": sorted(os.listdir("/data")),
       "config": sorted(os.listdir("/config")), "config_mode": oct(os.stat("/config/app.yaml").st_mode & 0o777),
       "config_text": open("/config/app.yaml").read(), "data_mode": oct(os.stat("/data").st_mode & 0o7777),
       "data_gid": os.stat("/data").st_gid}
open("/scratch/" + os.environ["POD_UID"], "w").write("x")
try:
    open("/data/" + os.environ["POD_UID"], "w").write("x")
    out["data_write"] = "ok"
except PermissionError as e:
    out["data_write"] = "denied"
try:
    open("/config/new", "w")
    out["config_write"] = "ok"
except OSError as e:
    out["config_write"] = type(e).__name__
print(json.dumps(out))
"""


def volume_pod(claim: str, fs_group: int | None) -> dict[str, Any]:
    security = {} if fs_group is None else {"securityContext": {"fsGroup": fs_group}}
    return {
        "volumes": [{"name": "scratch", "emptyDir": {}},
                    {"name": "data", "persistentVolumeClaim": {"claimName": claim}},
                    {"name": "config", "configMap": {"name": "app"}}],
        "container": {"env": [{"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}}],
                      "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"},
                                       {"name": "data", "mountPath": "/data"},
                                       {"name": "config", "mountPath": "/config"}]},
        **security,
    }


async def test_volumes_emptydir_claim_configmap_and_fsgroup(node: Node) -> None:
    await node.create("configmaps", {"metadata": {"name": "app"}, "data": {"app.yaml": "a: 1\n", "other": "2"}})
    await node.create_pod("first", script(VOLUMES), **volume_pod("ckpt", 10001))
    await eventually(lambda: node.condition("first", "PodScheduled") == "False", what="unschedulable without claim")
    assert node.phase("first") == "Pending" and node.kubelet.started == []
    await node.create("persistentvolumeclaims", {"metadata": {"name": "ckpt"}, "spec": {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    first = await node.result("first")
    first_uid = node.pod("first")["metadata"]["uid"]  # type: ignore[index]
    assert first["scratch"] == [] and first["data"] == []
    # the kubelet's atomic-writer layout: ..data -> ..<time>/, a symlink per key
    assert [n for n in first["config"] if not n.startswith("..")] == ["app.yaml", "other"]
    assert "..data" in first["config"]
    assert first["config_text"] == "a: 1\n" and first["config_mode"] == "0o644"
    assert first["config_write"] in ("OSError", "PermissionError")  # read-only
    assert first["data_write"] == "ok" and first["data_mode"] == "0o2775" and first["data_gid"] == 10001
    await node.delete_pod("first")
    await eventually(lambda: node.gone("first"), what="first released")
    assert (node.kubelet.claim_dir("ckpt") / first_uid).exists()

    await node.create_pod("first", script(VOLUMES), **volume_pod("ckpt", 10001))  # its replacement
    second = await node.result("first")
    assert second["scratch"] == []  # a new pod UID: a new emptyDir
    assert second["data"] == [first_uid]  # the claim's files survive
    assert node.kubelet.started == ["first", "first"]

    await node.create("persistentvolumeclaims", {"metadata": {"name": "fresh"}, "spec": {}})
    await node.create_pod("no-fsgroup", script(VOLUMES), **volume_pod("fresh", None))
    third = await node.result("no-fsgroup")
    assert third["data_write"] == "denied" and third["data_mode"] == "0o755" and third["data_gid"] == 0
    fresh = node.kubelet.claim_dir("fresh")
    assert (fresh.stat().st_uid, fresh.stat().st_gid, fresh.stat().st_mode & 0o7777) == (0, 0, 0o755)


SIGNALLED = """
import os, signal, sys, time
print("pid", os.getpid(), flush=True)
time.sleep(60)
"""


async def test_process_is_the_workload(node: Node) -> None:
    await node.create_pod("victim", script(SIGNALLED))
    await eventually(lambda: "pid" in node.log("victim"), what="victim up")
    proc = node.kubelet.process("victim")
    assert node.log("victim").split()[1] == str(proc.pid)  # the pid the kubelet holds is the workload's
    assert node.phase("victim") == "Running"
    status = node.container("victim")
    assert status["ready"] and status["started"] and status["restartCount"] == 0
    assert "running" in status["state"]
    proc.send_signal(signal.SIGKILL)
    terminated = await eventually(lambda: node.terminated("victim"), what="victim terminated")
    assert terminated["exitCode"] == 137 and terminated["reason"] == "Error"
    assert node.phase("victim") == "Failed" and node.container("victim")["ready"] is False
    with pytest.raises(LookupError):
        node.kubelet.process("victim")


GRPC_SERVER = """
import os, time, grpc
from concurrent import futures
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
server = grpc.server(futures.ThreadPoolExecutor(2))
servicer = health.HealthServicer()
servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
server.add_insecure_port("0.0.0.0:50051"); server.start()
print("serving", flush=True)
while not os.path.exists("/tmp/ready"):
    time.sleep(0.05)
servicer.set("", health_pb2.HealthCheckResponse.SERVING)
print("healthy", flush=True)
server.wait_for_termination()
"""


async def test_probes(node: Node) -> None:
    grpc_probe = {"grpc": {"port": 50051, "service": ""}, "periodSeconds": 1, "failureThreshold": 3}
    # a startup probe on a port nothing listens on: killed after 3 failures, and with Never, Failed
    await node.create_pod("never-starts", script("import time; time.sleep(60)"),
                          terminationGracePeriodSeconds=5, container={"startupProbe": grpc_probe})
    # a gRPC readiness probe that passes once the workload says SERVING; an exec startup probe
    # that runs inside the container (its private /tmp)
    await node.create_pod("grpc-ready", script(GRPC_SERVER), container={
        "startupProbe": {"exec": {"command": ["sh", "-c", "test $(id -u) = 10001 && touch /tmp/ready"]},
                         "periodSeconds": 1},
        "readinessProbe": grpc_probe})
    terminated = await eventually(lambda: node.terminated("never-starts"), timeout=15, what="startup kill")
    assert ("never-starts", "startup") in node.kubelet.probe_kills
    assert node.phase("never-starts") == "Failed" and terminated["exitCode"] == 143  # SIGTERM, within grace
    assert any(e["reason"] == "Unhealthy" and e["name"] == "never-starts" for e in node.kubelet.events)
    await eventually(lambda: "serving" in node.log("grpc-ready"), what="grpc server up")
    await eventually(lambda: node.container("grpc-ready")["ready"], what="grpc readiness")
    assert "healthy" in node.log("grpc-ready")
    assert node.condition("grpc-ready", "Ready") == "True" and node.container("grpc-ready")["started"]
    assert not os.path.exists("/tmp/ready")  # the exec probe wrote into the pod's /tmp, not the host's
    assert ("grpc-ready", "startup") not in node.kubelet.probe_kills


async def test_readiness_flips_and_liveness_kills(node: Node) -> None:
    # readiness follows a file in the pod's /tmp: ready, then unready, via an exec probe
    flip = "import os, time\nopen('/tmp/ok', 'w').close(); time.sleep(1.0); os.remove('/tmp/ok'); time.sleep(60)"
    await node.create_pod("flip", script(flip), container={"readinessProbe": {
        "exec": {"command": ["test", "-f", "/tmp/ok"]}, "periodSeconds": 1, "failureThreshold": 1}})
    await eventually(lambda: node.container("flip")["ready"], what="ready")
    await eventually(lambda: node.container("flip")["ready"] is False, what="unready again")
    assert node.condition("flip", "Ready") == "False" and node.phase("flip") == "Running"
    # a liveness probe on an HTTP server that stops answering (SIGSTOP): killed by it
    http = ("import http.server as h\nh.HTTPServer(('0.0.0.0', 8000), h.SimpleHTTPRequestHandler).serve_forever()")
    get = {"httpGet": {"path": "/", "port": "web"}, "periodSeconds": 1, "timeoutSeconds": 5}
    await node.create_pod("hangs", script(http), terminationGracePeriodSeconds=3, container={
        "startupProbe": {**get, "failureThreshold": 100}, "livenessProbe": {**get, "failureThreshold": 2},
        "ports": [{"name": "web", "containerPort": 8000}]})
    await eventually(lambda: node.container("hangs")["started"], what="hangs started (startup probe passed)")
    await asyncio.sleep(5 * SCALE)  # a few good liveness probes first
    assert node.kubelet.probe_kills == []
    node.kubelet.process("hangs").send_signal(signal.SIGSTOP)
    terminated = await eventually(lambda: node.terminated("hangs"), what="liveness kill")
    assert node.kubelet.probe_kills == [("hangs", "liveness")]
    assert terminated["exitCode"] == 137  # stopped: SIGTERM was ignored, SIGKILL after the grace


TRAPS_TERM = """
import os, signal, sys, time
def stop(*_):
    open("/data/terminated", "w").write(os.environ["POD_UID"]); sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("up", flush=True)
while True: time.sleep(1)
"""

IGNORES_TERM = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("up", flush=True)
while True: time.sleep(1)
"""


async def test_graceful_termination(node: Node) -> None:
    await node.create("persistentvolumeclaims", {"metadata": {"name": "marks"}, "spec": {}})
    uid = await node.create_pod("polite", script(TRAPS_TERM), securityContext={"fsGroup": 10001},
                                volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "marks"}}],
                                container={"volumeMounts": [{"name": "data", "mountPath": "/data"}], "env": [
                                    {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}}]})
    await node.create_pod("stubborn", script(IGNORES_TERM), terminationGracePeriodSeconds=10)
    await eventually(lambda: "up" in node.log("polite") and "up" in node.log("stubborn"), what="both up")
    netns_before = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert netns_before.count("fk-") >= 2
    await node.delete_pod("polite")
    assert node.pod("polite") is not None  # held by the kubelet's finalizer while it terminates
    await eventually(lambda: node.gone("polite"), what="polite released")
    assert (node.kubelet.claim_dir("marks") / "terminated").read_text() == uid  # SIGTERM reached it first
    started = time.monotonic()
    await node.delete_pod("stubborn")
    await eventually(lambda: node.gone("stubborn"), what="stubborn released")
    elapsed = time.monotonic() - started
    assert elapsed >= 10 * SCALE - 0.05  # the (scaled) grace period
    seen = node.api.objects[PODS, NS, "stubborn"].last.raw["status"]  # its final status, before it went
    assert seen["phase"] == "Failed"
    assert seen["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137
    assert "polite" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


async def test_delay_start_and_vanished_pods(node: Node) -> None:
    node.kubelet.delay_start("slow", 1.0)
    created = time.monotonic()
    await node.create_pod("slow", script("print('ran')"))
    await node.create_pod("quick", script("print('ran')"))
    await eventually(lambda: node.phase("quick") == "Succeeded", what="quick done")
    assert node.phase("slow") == "Pending"
    await eventually(lambda: node.phase("slow") == "Succeeded", what="slow done")
    assert time.monotonic() - created >= 1.0
    assert node.kubelet.started == ["quick", "slow"]
    # a pod object that vanishes without a graceful deletion: killed at once
    node.api.hold_deleted_pods = False
    await node.create_pod("ghost", script("import time; print('up', flush=True); time.sleep(60)"))
    await eventually(lambda: "up" in node.log("ghost"), what="ghost up")
    proc = node.kubelet.process("ghost")
    await node.delete_pod("ghost")
    await eventually(lambda: proc.returncode is not None, what="ghost killed")
    assert proc.returncode == -signal.SIGKILL


ROOT_VIEW = """
import json, os
out = {"uid": os.getuid(), "caps": open("/proc/self/status").read().split("CapBnd:")[1].split()[0],
       "seed": open("/checkpoints/seed/value").read(), "init": open("/checkpoints/seed/from-init").read()}
for path in ("/usr/x", "/tmp/x"):
    try:
        open(path, "w"); out[path] = "ok"
    except OSError as e:
        out[path] = type(e).__name__
print(json.dumps(out))
"""


async def test_init_containers_restarts_and_security(node: Node) -> None:
    # an init container fills a subPath of the emptyDir; the main one, root with all capabilities
    # dropped but one and a read-only root, reads it at a mountPath the host does not have
    init = {"name": "seed", "image": "dlrm-trainer:test", "command": ["sh", "-c", "echo 42 > /work-dir/value; "
            "echo yes > /work-dir/from-init"], "volumeMounts": [{"name": "w", "mountPath": "/work-dir",
                                                                  "subPath": "seed"}]}
    assert not os.path.exists("/checkpoints")
    await node.create_pod("secure", script(ROOT_VIEW), initContainers=[init],
                          volumes=[{"name": "w", "emptyDir": {}}],
                          securityContext={"runAsUser": 0, "runAsGroup": 0},
                          container={"volumeMounts": [{"name": "w", "mountPath": "/checkpoints"}],
                                     "securityContext": {"readOnlyRootFilesystem": True,
                                                         "capabilities": {"drop": ["ALL"], "add": ["CHOWN"]}}})
    out = await node.result("secure")
    assert out["uid"] == 0 and int(out["caps"], 16) == 1  # CAP_CHOWN only
    assert out["seed"] == "42\n" and out["init"] == "yes\n"
    assert out["/usr/x"] == "OSError" and out["/tmp/x"] == "OSError"  # a read-only root, /tmp included
    assert not os.path.exists("/checkpoints")  # created in the pod's own root, not on the host
    init_status = node.status("secure")["initContainerStatuses"][0]
    assert init_status["state"]["terminated"]["exitCode"] == 0 and init_status["ready"]
    # OnFailure restarts in place: same pod, same IP, restartCount and lastState
    crash = "import os, sys; n = len(os.listdir('/state')); open(f'/state/{n}', 'w'); sys.exit(0 if n else 3)"
    await node.create_pod("crashy", script(crash), restartPolicy="OnFailure", volumes=[{"name": "s", "emptyDir": {}}],
                          container={"volumeMounts": [{"name": "s", "mountPath": "/state"}]})
    await eventually(lambda: node.phase("crashy") == "Succeeded", what="crashy succeeded after a restart")
    status = node.container("crashy")
    assert status["restartCount"] == 1 and status["lastState"]["terminated"]["exitCode"] == 3
    assert node.kubelet.started.count("crashy") == 1


async def test_cleanup_leaves_nothing(tmp_path: Path) -> None:
    async with ApiServerEmulator() as api, kmock.Server(api):
        api.pod_startup_s = None
        api.hold_deleted_pods = True
        async with FaithfulKubelet(api, tmp_path, namespace=NS, time_scale=SCALE) as kubelet:
            node = Node(api, kubelet)
            await node.create_pod("left", script("import time; print('up', flush=True); time.sleep(60)"))
            await eventually(lambda: "up" in node.log("left"), what="left up")
            proc = kubelet.process("left")
            bridge = kubelet.bridge
        assert proc.returncode == -signal.SIGKILL
        links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
        assert bridge not in links and f"fkv{bridge[4:]}" not in links
        assert f"fk-{bridge[4:]}-" not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                         text=True).stdout


def test_var_expansion() -> None:
    env = {"A": "1", "B": "two"}
    assert expand_vars("$(A)-$(B)", env) == "1-two"
    assert expand_vars("$$(A) $(C) $A $", env) == "$(A) $(C) $A $"
