"""A faithful process kubelet: every Pod in the emulated API server runs as a real Linux process.

A test harness that overrides the pod spec (shared directories, 127.0.0.1, root, no probes) hides
exactly the bugs a cluster finds. This kubelet honours the pod spec instead, the way a node does
(TESTING-NOTES.md, "Pods as real processes, faithfully"). What a pod gets:

- its own network namespace, with its own IP on a bridge the kubelet creates (a free /24 in
  10.250.0.0/16), ``lo`` up and a default route via the bridge (``bridge_ip``: a Redis bound there
  serves every pod); every pod can bind the same port; a replacement pod gets a fresh IP;
- its own mount and UTS namespace: a private root (a tmpfs holding read-only-by-permission binds of
  the "image": /usr, /etc, /opt, /var, /srv, /home, /work and the interpreter), a private /tmp and
  /dev/shm, kubelet-managed /etc/hosts, /etc/hostname and /etc/resolv.conf, the hostname
  ``spec.hostname`` (or the pod name), and the pod's volumes at their mountPaths: ``emptyDir`` (new
  per pod UID, 0777), ``persistentVolumeClaim`` (one host directory per claim object, which outlives
  pods; a fresh one is root:root 0755), ``configMap``/``secret`` (kubelet's ``..data`` layout),
  ``hostPath``; ``readOnly`` and ``subPath``; ``fsGroup`` ownership like the kubelet's
  (``fsGroupChangePolicy`` included);
- the user the spec asks for (container over pod ``securityContext``, else the image's USER),
  supplementary groups ``fsGroup`` + ``supplementalGroups``, ``runAsNonRoot``, the container
  runtime's default capability bounding set adjusted by ``capabilities``, ``no_new_privs`` from
  ``allowPrivilegeEscalation: false``, ``readOnlyRootFilesystem``;
- ``command``/``args`` with ``$(VAR)`` expansion, ``env`` (values, ``fieldRef``, ``configMapKeyRef``,
  ``secretKeyRef``, ``resourceFieldRef``), ``envFrom``, ``workingDir``; only the env the spec and the
  image give (nothing of the test process leaks in);
- startup, liveness and readiness probes (``grpc``, ``tcpSocket``, ``httpGet``, ``exec``) run from the
  host against the pod IP (exec ones inside the container), with the kubelet's thresholds;
- graceful termination: SIGTERM, the grace period (at least the kubelet's 2 s), SIGKILL; the final
  status; then the kubelet's finalizer is released (``api.hold_deleted_pods = True``).

Times (probe periods, delays, timeouts, grace periods, restart back-off) are multiplied by
``time_scale``. The process chain is exec-only (``ip netns exec`` → ``unshare`` → ``sh`` →
``unshare --root`` → ``setpriv`` → ``env`` → the command), so ``process(name).pid`` is the workload.

Needs root, iproute2 and util-linux. Nothing is mounted on the host (every mount lives in a pod's
private mount namespace and dies with it); the only host changes are the bridge, one veth and one
netns per pod, all removed on exit (and by the next kubelet, should this process die first).
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import datetime
import fcntl
import hashlib
import http.client
import ipaddress
import json
import logging
import math
import os
import re
import secrets
import shlex
import shutil
import signal
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.emulator import KUBELET_FINALIZER, MAIN_CONTAINER, ApiServerEmulator

__all__ = ["MAIN_CONTAINER", "FaithfulKubelet"]

log = logging.getLogger(__name__)

TICK_S = 0.05  # the sync loop's period
WAIT_TICK_S = 0.02  # how often a container's exit and stop deadlines are checked
STATE_DIR = Path("/run/faithful-kubelet")  # one file per live kubelet: lets a later one clean up after a crash
NETNS_DIR = Path("/run/netns")
SUPERNET = ipaddress.ip_network("10.250.0.0/16")
IMAGE_DIRS = ("/usr", "/etc", "/opt", "/var", "/srv", "/home", "/work")
# containerd's default capability set for a container
DEFAULT_CAPS = ("chown", "dac_override", "fsetid", "fowner", "mknod", "net_raw", "setgid", "setuid", "setfcap",
                "setpcap", "net_bind_service", "sys_chroot", "kill", "audit_write")
MIN_GRACE_S = 2.0  # the kubelet never kills with less grace than this (minimumGracePeriodInSeconds)
MIN_PROBE_TIMEOUT_S = 0.2
MAX_BACKOFF_S = 300.0
PATH_TAIL = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
VAR_REF = re.compile(r"\$\$|\$\(([^)]*)\)")


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _tool(name: str) -> str:
    found = shutil.which(name, path=HOST_PATH)
    if found is None:
        raise RuntimeError(f"the faithful kubelet needs {name!r} (iproute2/util-linux)")
    return found


def _q(value: str | Path) -> str:
    return shlex.quote(str(value))


class _ConfigError(Exception):
    """The container cannot be created as specified (the kubelet's CreateContainerConfigError)."""

    def __init__(self, message: str, reason: str = "CreateContainerConfigError") -> None:
        super().__init__(message)
        self.reason = reason


class _VolumeWait(Exception):
    """A volume cannot be set up yet (a missing claim, ConfigMap...): the pod stays Pending."""

    def __init__(self, message: str, *, unschedulable: bool) -> None:
        super().__init__(message)
        self.unschedulable = unschedulable


@dataclass(frozen=True)
class _User:
    uid: int
    gid: int
    groups: tuple[int, ...]
    caps: tuple[str, ...] | None  # the bounding set; None: privileged (everything)
    no_new_privs: bool

    def setpriv(self) -> list[str]:
        args = [f"--reuid={self.uid}", f"--regid={self.gid}"]
        args.append(f"--groups={','.join(map(str, self.groups))}" if self.groups else "--clear-groups")
        if self.no_new_privs:
            args.append("--no-new-privs")
        if self.caps is not None:
            args.append("--inh-caps=-all")
            args.append("--bounding-set=" + ",".join(["-all", *(f"+{c}" for c in self.caps)]))
        return args


@dataclass
class _Mount:
    source: Path
    target: str  # absolute path inside the container
    read_only: bool


@dataclass
class _Container:
    spec: dict[str, Any]
    init: bool
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    state: dict[str, Any] = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: dict[str, Any] = field(default_factory=dict)
    ever_started: bool = False
    final: bool = False  # terminated (or never to start) and will not run again
    exit_code: int | None = None
    started: bool = False  # the startup probe passed (or there is none)
    ready: bool = False
    started_event: asyncio.Event = field(default_factory=asyncio.Event)
    run_started: float = 0.0  # time.monotonic() when the current process started
    started_at: str = ""
    container_id: str = ""
    stop_deadline: float | None = None  # SIGKILL at this time.monotonic() (a probe asked for a kill)
    term_sent: bool = False
    kill_sent: bool = False
    probe_tasks: list[asyncio.Task[None]] = field(default_factory=list)
    user: _User | None = None
    env: list[tuple[str, str]] = field(default_factory=list)
    last_error: str = ""
    created: bool = False  # the current process is inside the container (past the runtime's set-up)
    ready_fd: int | None = None  # the read end of the set-up pipe of the current process

    @property
    def name(self) -> str:
        return str(self.spec.get("name", MAIN_CONTAINER))


@dataclass
class _Pod:
    uid: str
    name: str
    obj: dict[str, Any]
    seq: int
    dir: Path
    start_after: float
    containers: list[_Container]
    inits: list[_Container]
    netns: str | None = None
    veth: str | None = None
    ip: str | None = None
    ns_ino: int | None = None
    start_time: str | None = None
    scheduled: bool = False
    unschedulable: str | None = None
    pending_reason: str | None = None
    initialized: bool = False
    init_failed: bool = False
    deleting: bool = False
    vanished: bool = False
    stop_deadline: float | None = None
    deleted_event: asyncio.Event = field(default_factory=asyncio.Event)
    conditions: dict[str, tuple[str, str]] = field(default_factory=dict)
    last_status: dict[str, Any] | None = None
    status_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    task: asyncio.Task[None] | None = None
    mounts: dict[str, list[_Mount]] = field(default_factory=dict)  # by container name
    projected: dict[str, str] = field(default_factory=dict)  # configMap/secret volume -> hash of what is written
    host_dirs_created: list[Path] = field(default_factory=list)
    released: bool = False

    @property
    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.obj.get("spec") or {}
        return spec

    @property
    def meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = self.obj.get("metadata") or {}
        return meta

    @property
    def all_containers(self) -> list[_Container]:
        return [*self.inits, *self.containers]


# --- small helpers ------------------------------------------------------------------------------


def _quantity(value: Any) -> float:
    """A Kubernetes quantity ("500m", "2Gi", "1e3", 4) as a number."""
    text = str(value).strip()
    suffixes = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
                "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
    for suffix in sorted(suffixes, key=len, reverse=True):
        if text.endswith(suffix) and text[:-len(suffix)]:
            return float(text[:-len(suffix)]) * suffixes[suffix]
    return float(text)


def expand_vars(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: ``$$`` is a ``$``; an undefined reference stays as written."""
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))
    return VAR_REF.sub(replace, text)


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def _proc_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _pids_in_netns(ino: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino == ino:
                pids.append(int(entry))
        except OSError:
            continue  # gone, or a zombie
    return [p for p in pids if p != os.getpid()]


def _kill_netns(ino: int | None, rounds: int = 50) -> None:
    """SIGKILL every process in a network namespace until none is left (they may fork meanwhile)."""
    if ino is None:
        return
    for _ in range(rounds):
        pids = _pids_in_netns(ino)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def _exited(proc: subprocess.Popen[bytes]) -> bool:
    """Whether the process has exited, without reaping it (its pid, and process group, stay ours)."""
    if proc.returncode is not None:
        return True
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # reaped by someone else (proc.wait() in a test)
        proc.poll()
        return True
    return info is not None


def _signal(proc: subprocess.Popen[bytes], sig: int, group: bool = False) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)


def _set_ownership(root: Path, gid: int, read_only: bool, policy: str | None) -> None:
    """The kubelet's SetVolumeOwnership: group ``gid``, group rw (r when read-only), setgid dirs."""
    mask = 0o440 if read_only else 0o660
    if policy == "OnRootMismatch":
        st = root.lstat()
        want = mask | 0o110
        if st.st_gid == gid and st.st_mode & 0o2000 and (st.st_mode & want) == want:
            return

    def fix(path: str) -> None:
        st = os.lstat(path)
        os.lchown(path, -1, gid)
        if os.path.islink(path):
            return
        extra = mask | (0o2110 if os.path.isdir(path) else 0)
        os.chmod(path, (st.st_mode & 0o7777) | extra)

    for dirpath, dirnames, filenames in os.walk(root):
        fix(dirpath)
        for name in filenames:
            fix(os.path.join(dirpath, name))
        for name in dirnames:
            if os.path.islink(os.path.join(dirpath, name)):
                fix(os.path.join(dirpath, name))


def _project(target: Path, files: list[tuple[str, bytes, int]]) -> None:
    """Write files the way the kubelet's atomic writer does: ``..<time>/`` + ``..data`` + key links."""
    target.mkdir(parents=True, exist_ok=True)
    os.chmod(target, 0o777)
    stamp = datetime.datetime.now(datetime.UTC).strftime("..%Y_%m_%d_%H_%M_%S.%f")
    data_dir = target / stamp
    data_dir.mkdir(mode=0o755)
    os.chmod(data_dir, 0o755)
    for rel, content, mode in files:
        path = data_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        os.chmod(path, mode)
    tmp_link = target / "..data_tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp_link.unlink()
    os.symlink(stamp, tmp_link)
    os.replace(tmp_link, target / "..data")
    tops = {rel.split("/", 1)[0] for rel, _, _ in files}
    for top in tops:
        link = target / top
        if not link.is_symlink():
            os.symlink(f"..data/{top}", link)
    for entry in list(target.iterdir()):
        if entry.name.startswith(".."):
            if entry.name not in ("..data", stamp) and entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
        elif entry.is_symlink() and entry.name not in tops:
            entry.unlink()


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 of 10.250.0.0/16 that no address or route of this host overlaps."""
    used: list[ipaddress.IPv4Network] = []
    outputs = [subprocess.run([_tool("ip"), "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout,
               subprocess.run([_tool("ip"), "-4", "route", "show", "table", "all"], capture_output=True,
                              text=True).stdout]
    for text in outputs:
        for token in re.findall(r"\b\d+\.\d+\.\d+\.\d+(?:/\d+)?\b", text):
            with contextlib.suppress(ValueError):
                used.append(ipaddress.ip_network(token, strict=False))  # type: ignore[arg-type]
    candidates = [n for n in SUPERNET.subnets(new_prefix=24) if n.network_address.packed[2] not in (0, 255)]
    secrets.SystemRandom().shuffle(candidates)
    for net in candidates:
        if not any(net.overlaps(u) for u in used):
            return net  # type: ignore[return-value]
    raise RuntimeError("no free /24 in 10.250.0.0/16 on this host")


def _links() -> list[str]:
    out = subprocess.run([_tool("ip"), "-o", "link", "show"], capture_output=True, text=True).stdout
    names = []
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@", 1)[0])
    return names


def _remove_network(kid: str) -> None:
    """Delete every netns, veth and bridge of kubelet ``kid`` (killing what still runs in its netns)."""
    ip = _tool("ip")
    if NETNS_DIR.is_dir():
        for entry in NETNS_DIR.iterdir():
            if entry.name.startswith(f"fk-{kid}-"):
                with contextlib.suppress(OSError):
                    _kill_netns(os.stat(entry).st_ino)
                subprocess.run([ip, "netns", "del", entry.name], capture_output=True)
    for name in _links():
        if name == f"fkb-{kid}" or name.startswith(f"fkv{kid}"):
            subprocess.run([ip, "link", "del", name], capture_output=True)


def _reap_stale_kubelets() -> None:
    """Remove what kubelets of dead processes left behind (their state files name them)."""
    if not STATE_DIR.is_dir():
        return
    for state in STATE_DIR.glob("*.json"):
        try:
            info = json.loads(state.read_text())
            alive = _proc_start_time(int(info["pid"])) == info["start"]
        except (OSError, ValueError, KeyError):
            alive = False
        if not alive:
            _remove_network(state.stem)
            with contextlib.suppress(OSError):
                state.unlink()


# --- the kubelet --------------------------------------------------------------------------------


def _require_readable_by_pods(folders: Sequence[str], image_dirs: Sequence[str]) -> None:
    """The folders bound into every pod (the project, the interpreter) are the pods' image: the image's
    user (not root) must be able to reach them, as it can in a real image. A pod sees each bound folder
    and what lies below it with the host's modes, and the folders above it as the image dirs' real
    folders where they lie inside one, else as directories of its own root (0755; the machine's Python
    under root's 0700 home is reachable that way, with nothing changed on the host). A checkout in a
    private folder (``mktemp -d`` makes it 0700) cannot be read from a pod: say so instead of letting
    every pod fail to import."""
    for folder in folders:
        path = Path(folder)
        for directory in [path, *path.parents]:
            seen_as_host = directory == path or any(
                str(directory) == d or str(directory).startswith(d + "/") for d in image_dirs)
            if seen_as_host and not os.stat(directory).st_mode & stat.S_IXOTH:
                raise RuntimeError(
                    f"{directory} (mode {stat.S_IMODE(os.stat(directory).st_mode):o}) is not reachable by the pods' "
                    f"user, and the pods read {folder} as their image: chmod o+rx {directory}")


class FaithfulKubelet:
    """Runs the pods of one namespace of an :class:`ApiServerEmulator` as real processes.

    ``async with FaithfulKubelet(api, tmp_path, namespace="ml", time_scale=0.2) as kubelet: ...``
    with ``api.pod_startup_s = None`` and ``api.hold_deleted_pods = True``.
    """

    def __init__(self, api: ApiServerEmulator, workdir: Path, *, namespace: str, time_scale: float = 1.0,
                 image_uid: int = 10001, image_gid: int = 10001, python: str = sys.executable,
                 extra_env: dict[str, str] | None = None, image_workdir: str = "/", image_home: str = "/tmp",
                 image_entrypoint: Sequence[str] = (), image_dirs: Sequence[str] = IMAGE_DIRS,
                 extra_binds: Sequence[str | Path] = ()) -> None:
        self.api = api
        self.workdir = Path(workdir).resolve()
        self.namespace = namespace
        self.time_scale = time_scale
        self.image_uid = image_uid
        self.image_gid = image_gid
        self.python = python
        self.extra_env = dict(extra_env or {})
        self.image_workdir = image_workdir
        self.image_home = image_home
        self.image_entrypoint = list(image_entrypoint)
        self.image_dirs = [d for d in image_dirs if os.path.isdir(d)]
        self.node_name = "faithful-node"
        self.bridge_ip = ""
        self.bridge = ""
        self.subnet: ipaddress.IPv4Network | None = None
        self.started: list[str] = []
        self.probe_kills: list[tuple[str, str]] = []
        self.events: list[dict[str, Any]] = []
        self._kid = secrets.token_hex(2)
        self._pods: dict[str, _Pod] = {}  # by UID, until released/vanished
        self._history: dict[str, list[_Pod]] = {}  # by name, every pod ever seen, in order
        self._done: set[str] = set()
        self._delays: dict[str, float] = {}
        self._claims: dict[str, Path] = {}  # claim name -> host dir of the claim object last seen
        # Volumes are set up in executor threads: two pods of one claim starting together must not both provision
        # it (the second mkdir failed), nor may one reset its mode after the other's fsGroup chown.
        self._provisioning = threading.Lock()
        self._seq = 0
        self._next_host = 2
        self._sync_task: asyncio.Task[None] | None = None
        self._pool: ThreadPoolExecutor | None = None
        # Interpreter folders and ``extra_binds`` (the project's sources) outside the image dirs, bound read-only.
        self._binds: list[str] = [os.path.realpath(b) for b in extra_binds
                                  if not any(os.path.realpath(b).startswith(d + "/") for d in self.image_dirs)]
        self._hosts: dict[str, str] = {}
        self._entered = False
        self._closed = False
        self._releasing: set[str] = set()
        self._started_uids: set[str] = set()
        self._known_caps: list[str] = []

    # --- public helpers -------------------------------------------------------------------------
    def delay_start(self, pod_name: str, seconds: float) -> None:
        """The next pod created with that name stays Pending (unscheduled) this long (unscaled)."""
        self._delays[pod_name] = seconds

    def _current(self, pod_name: str) -> _Pod:
        pods = self._history.get(pod_name)
        if not pods:
            raise LookupError(f"no pod {pod_name!r} seen by the kubelet")
        return pods[-1]

    def process(self, pod_name: str, container: str | None = None) -> subprocess.Popen[bytes]:
        """The live process of the current pod of that name (its first container unless named)."""
        pod = self._current(pod_name)
        if container is None:
            candidates = [*pod.containers[:1], *pod.inits]  # the main container, or an init one before it
        else:
            candidates = [c for c in pod.all_containers if c.name == container]
        for c in candidates:
            if c.proc is not None and c.created and not _exited(c.proc):
                return c.proc
        raise LookupError(f"pod {pod_name!r} has no live process")

    def pod_ip(self, pod_name: str) -> str:
        ip = self._current(pod_name).ip
        if ip is None:
            raise LookupError(f"pod {pod_name!r} has no IP (yet)")
        return ip

    def claim_dir(self, claim_name: str) -> Path:
        """The host directory of a PersistentVolumeClaim (of the claim object now of that name)."""
        claim = next((c for c in self.api.live("persistentvolumeclaims", self.namespace)
                      if c["metadata"]["name"] == claim_name and not c["metadata"].get("deletionTimestamp")), None)
        if claim is not None:
            return self._claim_volume(claim)
        if claim_name in self._claims:
            return self._claims[claim_name]
        raise LookupError(f"no PersistentVolumeClaim {claim_name!r}")

    def log_path(self, pod_name: str, uid: str | None = None, container: str | None = None) -> Path:
        """stdout+stderr of a pod's container (the current pod of that name unless ``uid``)."""
        if uid is None:
            uid = self._current(pod_name).uid
        suffix = "" if container in (None, MAIN_CONTAINER) else f"-{container}"
        return self.workdir / "logs" / f"{pod_name}-{uid}{suffix}.log"

    def pods(self, pod_name: str) -> list[str]:
        """UIDs of every pod of that name the kubelet has seen, oldest first."""
        return [p.uid for p in self._history.get(pod_name, [])]

    # --- lifecycle ------------------------------------------------------------------------------
    async def __aenter__(self) -> FaithfulKubelet:
        if self._entered:
            raise RuntimeError("a FaithfulKubelet is entered once")
        self._entered = True
        if os.geteuid() != 0:
            raise RuntimeError("the faithful kubelet needs root (network namespaces, mounts, setpriv)")
        try:
            await self._enter()
        except BaseException:
            self._cleanup_sync()
            raise
        return self

    async def _enter(self) -> None:
        for sub in ("pods", "logs", "claims"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        probe = await asyncio.create_subprocess_exec(
            # The interpreter, its virtualenv and every import root (an editable install's sources): a CI
            # clone lives outside /work, and the "image" must still hold the project.
            self.python, "-c", "import os, sys; print(sys.base_prefix); print(os.path.realpath(sys.executable)); "
            "print(sys.prefix); [print(os.path.realpath(p)) for p in sys.path if p and os.path.isdir(p)]",
            stdout=asyncio.subprocess.PIPE)
        out, _ = await probe.communicate()
        for line in out.decode().split():
            folder = os.path.realpath(line if os.path.isdir(line) else os.path.dirname(line))
            in_image = any(folder == d or folder.startswith(d + "/") for d in self.image_dirs)
            if not in_image and folder not in self._binds:
                self._binds.append(folder)
        self._binds = [b for b in self._binds if not any(b != o and b.startswith(o + "/") for o in self._binds)]
        _require_readable_by_pods(self._binds, self.image_dirs)
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        atexit.register(self._cleanup_sync)
        with open(STATE_DIR / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            _reap_stale_kubelets()
            while f"fkb-{self._kid}" in _links() or (STATE_DIR / f"{self._kid}.json").exists():
                self._kid = secrets.token_hex(2)
            (STATE_DIR / f"{self._kid}.json").write_text(
                json.dumps({"pid": os.getpid(), "start": _proc_start_time(os.getpid())}))
            self.subnet = _free_subnet()
            self.bridge = f"fkb-{self._kid}"
            self.bridge_ip = str(self.subnet.network_address + 1)
            # A fixed MAC: by default a Linux bridge takes the lowest MAC among its ports, so a new pod's
            # veth can change it, and every pod's ARP entry for the bridge address (Redis lives there)
            # goes stale — their traffic is dropped for seconds until ARP re-resolves (a real CNI bridge
            # pins its address for the same reason). Locally administered, unicast.
            mac = "02:" + ":".join(secrets.token_hex(1) for _ in range(5))
            await self._ip("link", "add", self.bridge, "address", mac, "type", "bridge")
            await self._ip("addr", "add", f"{self.bridge_ip}/{self.subnet.prefixlen}", "dev", self.bridge)
            await self._ip("link", "set", self.bridge, "up")
        self.node_name = f"faithful-{self._kid}"
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="kubelet-probe")
        self._sync_task = asyncio.get_running_loop().create_task(self._sync_loop(), name="kubelet-sync")
        self._event(None, "Starting", f"kubelet on bridge {self.bridge} {self.bridge_ip}/24, time_scale "
                                      f"{self.time_scale}")

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        tasks = [t for t in [self._sync_task, *(p.task for p in self._pods.values())] if t is not None]
        tasks += [t for p in self._pods.values() for c in p.all_containers for t in c.probe_tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(None, self._cleanup_sync)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(Exception):
            atexit.unregister(self._cleanup_sync)

    def _cleanup_sync(self) -> None:
        """Kill every pod process, delete every netns and veth and the bridge. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for pods in self._history.values():
            for pod in pods:
                for c in pod.all_containers:
                    if c.proc is not None:
                        _signal(c.proc, signal.SIGKILL, group=True)
                        _signal(c.proc, signal.SIGKILL)
                _kill_netns(pod.ns_ino)
                for c in pod.all_containers:
                    if c.proc is not None:
                        with contextlib.suppress(Exception):
                            c.proc.wait(timeout=5)
        _remove_network(self._kid)
        with contextlib.suppress(OSError):
            (STATE_DIR / f"{self._kid}.json").unlink()
        for pods in self._history.values():
            for pod in pods:
                self._remove_created_dirs(pod)

    # --- events and commands --------------------------------------------------------------------
    def _event(self, pod: _Pod | None, reason: str, message: str, type_: str = "Normal") -> None:
        entry = {"time": time.monotonic(), "wallTime": _now_iso(), "name": pod.name if pod else None,
                 "uid": pod.uid if pod else None, "reason": reason, "message": message, "type": type_}
        self.events.append(entry)
        log.debug("kubelet event %s", entry)

    async def _run(self, *argv: str, check: bool = True) -> str:
        proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE, env={"PATH": HOST_PATH})
        out, err = await proc.communicate()
        if check and proc.returncode != 0:
            raise RuntimeError(f"{shlex.join(argv)} -> {proc.returncode}: {err.decode().strip()}")
        return out.decode()

    async def _ip(self, *args: str, netns: str | None = None, check: bool = True) -> str:
        prefix = ["-n", netns] if netns else []
        return await self._run(_tool("ip"), *prefix, *args, check=check)

    def _scaled(self, seconds: float) -> float:
        return seconds * self.time_scale

    # --- the sync loop --------------------------------------------------------------------------
    async def _sync_loop(self) -> None:
        last_projection = 0.0
        while True:
            try:
                self._sync_once()
                if time.monotonic() - last_projection > 0.5:
                    last_projection = time.monotonic()
                    self._refresh_projections()
            except Exception as e:  # the loop must survive anything; the event says what happened
                log.exception("kubelet sync failed")
                self._event(None, "SyncError", repr(e), "Warning")
            await asyncio.sleep(TICK_S)

    def _sync_once(self) -> None:
        seen: set[str] = set()
        now = time.monotonic()
        for obj in self.api.live("pods", self.namespace):
            meta = obj.get("metadata") or {}
            uid = str(meta.get("uid", ""))
            name = str(meta.get("name", ""))
            seen.add(uid)
            pod = self._pods.get(uid)
            if pod is None:
                phase = (obj.get("status") or {}).get("phase")
                if uid in self._done or phase not in (None, "Pending") or meta.get("deletionTimestamp"):
                    if meta.get("deletionTimestamp") and KUBELET_FINALIZER in (meta.get("finalizers") or []):
                        self._spawn_release(name, uid)
                    continue
                pod = self._new_pod(obj, now)
                continue
            pod.obj = obj
            if meta.get("deletionTimestamp") and not pod.deleting:
                grace = meta.get("deletionGracePeriodSeconds")
                if grace is None:
                    grace = pod.spec.get("terminationGracePeriodSeconds", 30)
                pod.stop_deadline = now + self._scaled(max(float(grace), MIN_GRACE_S))
                pod.deleting = True
                pod.deleted_event.set()
                self._event(pod, "Killing", f"deleted; stopping with a grace of {float(grace):g}s (scaled)")
        for uid, pod in list(self._pods.items()):
            if uid not in seen and not pod.vanished:
                pod.vanished = True
                pod.deleting = True
                pod.stop_deadline = now
                pod.deleted_event.set()
                self._event(pod, "Vanished", "pod object gone without a graceful deletion: killing at once")

    def _new_pod(self, obj: dict[str, Any], now: float) -> _Pod:
        meta = obj["metadata"]
        name, uid = str(meta["name"]), str(meta["uid"])
        self._seq += 1
        delay = self._delays.pop(name, 0.0)
        logs = self.workdir / "logs"
        spec = obj.get("spec") or {}

        def container(c: dict[str, Any], init: bool, first: bool) -> _Container:
            suffix = "" if first else f"-{c.get('name')}"
            return _Container(spec=c, init=init, log=logs / f"{name}-{uid}{suffix}.log")

        containers = [container(c, False, i == 0) for i, c in enumerate(spec.get("containers") or [])]
        inits = [container(c, True, False) for c in spec.get("initContainers") or []]
        pod = _Pod(uid=uid, name=name, obj=obj, seq=self._seq, dir=self.workdir / "pods" / f"{name}-{uid}",
                   start_after=now + delay, containers=containers, inits=inits)
        self._pods[uid] = pod
        self._history.setdefault(name, []).append(pod)
        if delay:
            self._event(pod, "Delayed", f"stays Pending for {delay:g}s")
        pod.task = asyncio.get_running_loop().create_task(self._lifecycle(pod), name=f"kubelet-pod-{name}")
        return pod

    def _spawn_release(self, name: str, uid: str) -> None:
        async def release() -> None:
            cur = self.api.pod(self.namespace, name)
            if cur is not None and cur["metadata"].get("uid") == uid:
                await self.api.release_pod(self.namespace, name)
        if uid in self._releasing:
            return
        self._releasing.add(uid)
        task = asyncio.get_running_loop().create_task(release())
        task.add_done_callback(lambda _: self._releasing.discard(uid))

    # --- one pod, start to end ------------------------------------------------------------------
    async def _lifecycle(self, pod: _Pod) -> None:
        try:
            if await self._wait_startable(pod):
                await self._create_sandbox(pod)
                await self._run_containers(pod)
            await self._finish(pod)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("kubelet: pod %s failed", pod.name)
            self._event(pod, "KubeletError", repr(e), "Warning")
            for c in pod.all_containers:
                if c.proc is not None:
                    _signal(c.proc, signal.SIGKILL, group=True)
            with contextlib.suppress(Exception):
                await self._finish(pod)

    async def _finish(self, pod: _Pod) -> None:
        """Every container is done: kill leftovers, report, tear down, release once deleted."""
        for c in pod.all_containers:
            if c.proc is not None:
                _signal(c.proc, signal.SIGKILL, group=True)
                _signal(c.proc, signal.SIGKILL)
            if not c.final:
                c.final = True
        _kill_netns(pod.ns_ino)
        for c in pod.all_containers:
            if c.proc is not None and c.proc.returncode is None:
                await asyncio.get_running_loop().run_in_executor(None, c.proc.wait)
        if not pod.vanished:
            await self._sync_status(pod)
        await self._teardown_sandbox(pod)
        await pod.deleted_event.wait()
        if not pod.vanished:
            cur = self.api.pod(self.namespace, pod.name)
            if cur is not None and cur["metadata"].get("uid") == pod.uid:
                await self.api.release_pod(self.namespace, pod.name)
                self._event(pod, "Released", "terminated; finalizer removed")
        pod.released = True
        self._done.add(pod.uid)
        self._pods.pop(pod.uid, None)
        shutil.rmtree(pod.dir, ignore_errors=True)  # emptyDirs go with the pod; logs and claims stay
        self._remove_created_dirs(pod)

    async def _wait_startable(self, pod: _Pod) -> bool:
        """Wait out delay_start and missing claims/ConfigMaps; False when deleted first."""
        announced = ""
        while not pod.deleting:
            if time.monotonic() < pod.start_after:
                await asyncio.sleep(min(TICK_S, pod.start_after - time.monotonic()))
                continue
            try:
                self._check_volumes(pod)
            except _VolumeWait as e:
                if str(e) != announced:
                    announced = str(e)
                    if e.unschedulable:
                        pod.unschedulable = str(e)
                        self._event(pod, "FailedScheduling", str(e), "Warning")
                    else:
                        pod.unschedulable = None
                        pod.scheduled = True
                        self._event(pod, "FailedMount", str(e), "Warning")
                    await self._sync_status(pod)
                await asyncio.sleep(2 * TICK_S)
                continue
            pod.unschedulable = None
            pod.scheduled = True
            return True
        return False

    # --- the sandbox: network and volumes -------------------------------------------------------
    def _alloc_ip(self) -> str:
        assert self.subnet is not None
        in_use = {p.ip for p in self._pods.values() if p.ip}
        hosts = self.subnet.num_addresses - 2
        for _ in range(hosts):
            n = self._next_host
            self._next_host = 2 if n + 1 > hosts else n + 1
            ip = str(self.subnet.network_address + n)
            if ip not in in_use and ip != self.bridge_ip:
                return ip
        raise RuntimeError("the kubelet's /24 is exhausted")

    async def _create_sandbox(self, pod: _Pod) -> None:
        assert self.subnet is not None
        pod.dir.mkdir(parents=True, exist_ok=True)
        pod.ip = self._alloc_ip()
        pod.netns = f"fk-{self._kid}-{pod.seq}"
        pod.veth = f"fkv{self._kid}{pod.seq:x}"[:15]
        await self._ip("netns", "add", pod.netns)
        pod.ns_ino = os.stat(NETNS_DIR / pod.netns).st_ino
        await self._ip("link", "add", pod.veth, "type", "veth", "peer", "name", "eth0", "netns", pod.netns)
        await self._ip("link", "set", pod.veth, "master", self.bridge, "up")
        await self._ip("link", "set", "lo", "up", netns=pod.netns)
        await self._ip("addr", "add", f"{pod.ip}/{self.subnet.prefixlen}", "dev", "eth0", netns=pod.netns)
        await self._ip("link", "set", "eth0", "up", netns=pod.netns)
        await self._ip("route", "add", "default", "via", self.bridge_ip, netns=pod.netns)
        pod.start_time = _now_iso()
        self._write_etc(pod)
        await asyncio.get_running_loop().run_in_executor(None, self._setup_volumes, pod)
        self._event(pod, "SandboxReady", f"netns {pod.netns}, IP {pod.ip}")

    async def _teardown_sandbox(self, pod: _Pod) -> None:
        if pod.netns is not None:
            await self._ip("netns", "del", pod.netns, check=False)
        if pod.veth is not None:
            await self._ip("link", "del", pod.veth, check=False)  # gone with the netns already, normally
        pod.netns = None
        pod.veth = None

    def _hostname(self, pod: _Pod) -> str:
        return str(pod.spec.get("hostname") or pod.name)[:63]

    def _write_etc(self, pod: _Pod) -> None:
        hostname = self._hostname(pod)
        subdomain = pod.spec.get("subdomain")
        names = f"{hostname}.{subdomain}.{self.namespace}.svc.cluster.local\t{hostname}" if subdomain else hostname
        lines = ["# Kubernetes-managed hosts file.", "127.0.0.1\tlocalhost",
                 "::1\tlocalhost ip6-localhost ip6-loopback", "fe00::0\tip6-localnet", "fe00::0\tip6-mcastprefix",
                 "fe00::1\tip6-allnodes", "fe00::2\tip6-allrouters", f"{pod.ip}\t{names}"]
        aliases = pod.spec.get("hostAliases") or []
        if aliases:
            lines.append("")
            lines.append("# Entries added by HostAliases.")
            lines += [f"{a['ip']}\t" + "\t".join(a.get("hostnames") or []) for a in aliases]
        etc = pod.dir / "etc"
        etc.mkdir(exist_ok=True)
        (etc / "hosts").write_text("\n".join(lines) + "\n")
        (etc / "hostname").write_text(hostname + "\n")
        ns = self.namespace
        (etc / "resolv.conf").write_text(f"search {ns}.svc.cluster.local svc.cluster.local cluster.local\n"
                                         f"nameserver {self.bridge_ip}\noptions ndots:5\n")
        for f in ("hosts", "hostname", "resolv.conf"):
            os.chmod(etc / f, 0o644)

    def _object(self, plural: str, name: str) -> dict[str, Any] | None:
        for obj in self.api.live(plural, self.namespace):
            if obj["metadata"]["name"] == name:
                return obj
        return None

    def _claim_volume(self, claim: dict[str, Any]) -> Path:
        name = str(claim["metadata"]["name"])
        uid = str(claim["metadata"].get("uid", "nouid"))
        path = self.workdir / "claims" / f"{name}-{uid}"
        with self._provisioning:
            if not path.exists():
                path.mkdir(parents=True)
                os.chown(path, 0, 0)
                os.chmod(path, 0o755)  # a fresh volume: root-owned, not writable by the image's user
            self._claims[name] = path
        return path

    def _check_volumes(self, pod: _Pod) -> None:
        for vol in pod.spec.get("volumes") or []:
            if "persistentVolumeClaim" in vol:
                claim = str(vol["persistentVolumeClaim"].get("claimName"))
                obj = self._object("persistentvolumeclaims", claim)
                if obj is None:
                    raise _VolumeWait(f'0/1 nodes are available: persistentvolumeclaim "{claim}" not found.',
                                      unschedulable=True)
                if obj["metadata"].get("deletionTimestamp"):
                    raise _VolumeWait(f'0/1 nodes are available: persistentvolumeclaim "{claim}" is being '
                                      "deleted.", unschedulable=True)
            for kind, plural in (("configMap", "configmaps"), ("secret", "secrets")):
                if kind in vol:
                    src = vol[kind]
                    ref = str(src.get("name") if kind == "configMap" else src.get("secretName"))
                    obj = self._object(plural, ref)
                    if obj is None and not src.get("optional"):
                        raise _VolumeWait(f'MountVolume.SetUp failed for volume "{vol["name"]}" : '
                                          f'{kind.lower()} "{ref}" not found', unschedulable=False)
                    if obj is not None:
                        self._projected_files(vol, kind, obj)  # raises on a missing key

    def _projected_files(self, vol: dict[str, Any], kind: str, obj: dict[str, Any] | None
                         ) -> list[tuple[str, bytes, int]]:
        src = vol[kind]
        data: dict[str, bytes] = {}
        if obj is not None:
            if kind == "configMap":
                data.update({k: str(v).encode() for k, v in (obj.get("data") or {}).items()})
                data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
            else:
                data.update({k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()})
                data.update({k: str(v).encode() for k, v in (obj.get("stringData") or {}).items()})
        default_mode = int(src.get("defaultMode", 0o644))
        items = src.get("items")
        if not items:
            return [(k, v, default_mode) for k, v in sorted(data.items())]
        files = []
        for item in items:
            key = item["key"]
            if key not in data:
                if src.get("optional"):
                    continue
                raise _VolumeWait(f'MountVolume.SetUp failed for volume "{vol["name"]}" : {kind.lower()} '
                                  f"references non-existent config key: {key}", unschedulable=False)
            files.append((str(item.get("path", key)), data[key], int(item.get("mode", default_mode))))
        return files

    def _setup_volumes(self, pod: _Pod) -> None:
        """Volumes on the host (runs in a thread: a recursive fsGroup chown can take a while)."""
        psc = pod.spec.get("securityContext") or {}
        fs_group = psc.get("fsGroup")
        policy = psc.get("fsGroupChangePolicy")
        vol_dirs: dict[str, tuple[Path, bool]] = {}
        for vol in pod.spec.get("volumes") or []:
            vname = str(vol["name"])
            read_only = False
            if "emptyDir" in vol:
                path = pod.dir / "volumes" / vname
                path.mkdir(parents=True, exist_ok=True)
                os.chmod(path, 0o777)
            elif "persistentVolumeClaim" in vol:
                obj = self._object("persistentvolumeclaims", str(vol["persistentVolumeClaim"]["claimName"]))
                if obj is None:
                    raise RuntimeError(f"claim of volume {vname} vanished")
                path = self._claim_volume(obj)
                read_only = bool(vol["persistentVolumeClaim"].get("readOnly"))
            elif "configMap" in vol or "secret" in vol:
                kind = "configMap" if "configMap" in vol else "secret"
                ref = vol[kind].get("name") if kind == "configMap" else vol[kind].get("secretName")
                path = pod.dir / "volumes" / vname
                files = self._projected_files(vol, kind, self._object(f"{kind.lower()}s", str(ref)))
                _project(path, files)
                pod.projected[vname] = hashlib.sha256(repr(files).encode()).hexdigest()
                read_only = True
            elif "hostPath" in vol:
                path = Path(vol["hostPath"]["path"])
                if vol["hostPath"].get("type") == "DirectoryOrCreate":
                    path.mkdir(parents=True, exist_ok=True)
            else:
                raise RuntimeError(f"volume {vname}: unsupported volume type {sorted(set(vol) - {'name'})}")
            if fs_group is not None and ("emptyDir" in vol or "persistentVolumeClaim" in vol or
                                         "configMap" in vol or "secret" in vol):
                _set_ownership(path, int(fs_group), read_only, policy)
            vol_dirs[vname] = (path, read_only)
        pod_vols = vol_dirs
        for c in pod.all_containers:
            c_mounts = []
            for m in c.spec.get("volumeMounts") or []:
                if m["name"] not in pod_vols:
                    raise RuntimeError(f"container {c.name}: volumeMount of unknown volume {m['name']}")
                src, vol_ro = pod_vols[m["name"]]
                sub = m.get("subPath")
                if sub:
                    src = src / sub
                    if not src.exists() and not src.is_symlink():
                        src.mkdir(parents=True)
                    src = Path(os.path.realpath(src))
                c_mounts.append(_Mount(src, str(m["mountPath"]), vol_ro or bool(m.get("readOnly"))))
            c_mounts.sort(key=lambda mm: mm.target.rstrip("/").count("/"))
            pod.mounts[c.name] = c_mounts

    def _refresh_projections(self) -> None:
        """ConfigMap/Secret volumes follow their object (the kubelet syncs them periodically)."""
        for pod in list(self._pods.values()):
            if not pod.projected or pod.netns is None:
                continue
            for vol in pod.spec.get("volumes") or []:
                vname = vol["name"]
                if vname not in pod.projected:
                    continue
                kind = "configMap" if "configMap" in vol else "secret"
                ref = vol[kind].get("name") if kind == "configMap" else vol[kind].get("secretName")
                obj = self._object(f"{kind.lower()}s", str(ref))
                if obj is None:
                    continue
                try:
                    files = self._projected_files(vol, kind, obj)
                except _VolumeWait:
                    continue
                digest = hashlib.sha256(repr(files).encode()).hexdigest()
                if digest != pod.projected[vname]:
                    path = pod.dir / "volumes" / vname
                    _project(path, files)
                    fs_group = (pod.spec.get("securityContext") or {}).get("fsGroup")
                    if fs_group is not None:
                        _set_ownership(path, int(fs_group), True, None)
                    pod.projected[vname] = digest

    def _remove_created_dirs(self, pod: _Pod) -> None:
        for path in reversed(pod.host_dirs_created):
            with contextlib.suppress(OSError):
                path.rmdir()
        pod.host_dirs_created.clear()

    # --- containers -----------------------------------------------------------------------------
    async def _run_containers(self, pod: _Pod) -> None:
        for c in pod.inits:
            code = await self._run_container(pod, c)
            if code != 0:
                if not pod.deleting:
                    pod.init_failed = True
                for other in pod.all_containers:
                    other.final = True
                    if not other.ever_started and other is not c:
                        other.state = {"waiting": {"reason": "PodInitializing"}}
                return
        pod.initialized = True
        await self._sync_status(pod)
        await asyncio.gather(*(self._run_container(pod, c) for c in pod.containers))

    def _restart_policy(self, pod: _Pod, c: _Container) -> str:
        if c.init and c.spec.get("restartPolicy") == "Always":
            return "Always"  # a sidecar; not treated specially beyond this
        policy = str(pod.spec.get("restartPolicy", "Always"))
        if c.init and policy == "Always":
            return "OnFailure"
        return policy

    async def _sleep_unless_deleting(self, pod: _Pod, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(pod.deleted_event.wait(), seconds)

    async def _run_container(self, pod: _Pod, c: _Container) -> int | None:
        """Run one container to its end, restarting it as the restart policy says."""
        backoff = 0.0
        while True:
            if pod.deleting:
                c.final = True
                return c.exit_code
            try:
                argv, env, user = self._resolve(pod, c)
            except _ConfigError as e:
                c.state = {"waiting": {"reason": e.reason, "message": str(e)}}
                if c.last_error != str(e):
                    c.last_error = str(e)
                    self._event(pod, "Failed", f"Error: {e}", "Warning")
                await self._sync_status(pod)
                await self._sleep_unless_deleting(pod, max(self._scaled(1.0), 0.1))
                continue
            c.last_error = ""
            self._spawn(pod, c, argv, env, user)
            created = await self._created(c)
            if created:
                c.state = {"running": {"startedAt": c.started_at}}
                await self._sync_status(pod)
                if not c.init:
                    self._start_probes(pod, c)
            code = await self._wait_exit(pod, c)
            if not created:  # the runtime failed to create it (a mount, the root...): the log says why
                tail = c.log.read_bytes()[-400:].decode(errors="replace").strip() if c.log.exists() else ""
                self._event(pod, "Failed", f"container {c.name} could not be created (exit {code}): {tail}",
                            "Warning")
                code = 128
            for task in c.probe_tasks:
                task.cancel()
            await asyncio.gather(*c.probe_tasks, return_exceptions=True)
            c.probe_tasks = []
            c.ready = False
            c.started = False
            c.exit_code = code
            reason = "Completed" if code == 0 else "Error" if created else "StartError"
            terminated = {"exitCode": code, "reason": reason, "startedAt": c.started_at, "finishedAt": _now_iso(),
                          "containerID": c.container_id}
            c.state = {"terminated": terminated}
            self._event(pod, "Terminated", f"container {c.name} exited with {code}",
                        "Normal" if code == 0 else "Warning")
            policy = self._restart_policy(pod, c)
            restart = not pod.deleting and (policy == "Always" or (policy == "OnFailure" and code != 0))
            if not restart:
                c.final = True
                await self._sync_status(pod)
                return code
            c.last_state = {"terminated": terminated}
            c.restarts += 1
            if backoff:
                c.state = {"waiting": {"reason": "CrashLoopBackOff",
                                       "message": f"back-off {backoff:g}s restarting failed container={c.name} "
                                                  f"pod={pod.name}_{self.namespace}({pod.uid})"}}
                await self._sync_status(pod)
                await self._sleep_unless_deleting(pod, self._scaled(backoff))
            backoff = min(max(backoff * 2, 10.0), MAX_BACKOFF_S)

    def _field(self, pod: _Pod, path: str) -> str:
        meta = pod.meta
        simple = {"metadata.name": pod.name, "metadata.namespace": self.namespace, "metadata.uid": pod.uid,
                  "spec.nodeName": self.node_name, "spec.serviceAccountName":
                  str(pod.spec.get("serviceAccountName") or "default"), "status.hostIP": self.bridge_ip,
                  "status.hostIPs": self.bridge_ip, "status.podIP": pod.ip or "", "status.podIPs": pod.ip or ""}
        if path in simple:
            return simple[path]
        match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']*)'\]", path)
        if match:
            return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
        raise _ConfigError(f"unsupported fieldRef fieldPath {path!r}")

    def _resource_field(self, c: _Container, ref: dict[str, Any]) -> str:
        resource = str(ref.get("resource", ""))
        kind, _, what = resource.partition(".")
        resources = c.spec.get("resources") or {}
        value = (resources.get(kind) or {}).get(what)
        if value is None:
            if kind == "requests":
                value = 0
            elif what == "cpu":
                value = os.cpu_count() or 1
            else:
                value = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        divisor = _quantity(ref.get("divisor", "1"))
        return str(math.ceil(_quantity(value) / divisor))

    def _env(self, pod: _Pod, c: _Container) -> list[tuple[str, str]]:
        """The container's env as the kubelet computes it (envFrom, then env with $(VAR) expansion)."""
        env: dict[str, str] = {}
        for src in c.spec.get("envFrom") or []:
            prefix = str(src.get("prefix", ""))
            for kind, plural in (("configMapRef", "configmaps"), ("secretRef", "secrets")):
                if kind not in src:
                    continue
                ref = src[kind]
                obj = self._object(plural, str(ref.get("name")))
                if obj is None:
                    if ref.get("optional"):
                        continue
                    raise _ConfigError(f'{plural[:-1]} "{ref.get("name")}" not found')
                values = dict(obj.get("data") or {})
                if kind == "secretRef":
                    values = {k: base64.b64decode(v).decode() for k, v in values.items()}
                    values.update(obj.get("stringData") or {})
                for key, value in values.items():
                    env[prefix + key] = str(value)
        for var in c.spec.get("env") or []:
            name = str(var["name"])
            if "valueFrom" not in var:
                env[name] = expand_vars(str(var.get("value", "")), env)
                continue
            source = var["valueFrom"]
            if "fieldRef" in source:
                env[name] = self._field(pod, str(source["fieldRef"]["fieldPath"]))
            elif "configMapKeyRef" in source or "secretKeyRef" in source:
                secret = "secretKeyRef" in source
                ref = source["secretKeyRef" if secret else "configMapKeyRef"]
                obj = self._object("secrets" if secret else "configmaps", str(ref.get("name")))
                kind = "Secret" if secret else "ConfigMap"
                if obj is None:
                    if ref.get("optional"):
                        continue
                    raise _ConfigError(f'{kind.lower()} "{ref.get("name")}" not found')
                data = dict(obj.get("data") or {})
                if secret:
                    data = {k: base64.b64decode(v).decode() for k, v in data.items()}
                    data.update(obj.get("stringData") or {})
                if ref.get("key") not in data:
                    if ref.get("optional"):
                        continue
                    raise _ConfigError(f"couldn't find key {ref.get('key')} in {kind} "
                                       f"{self.namespace}/{ref.get('name')}")
                env[name] = str(data[ref["key"]])
            elif "resourceFieldRef" in source:
                env[name] = self._resource_field(c, source["resourceFieldRef"])
            else:
                raise _ConfigError(f"env {name}: unsupported valueFrom {sorted(source)}")
        return list(env.items())

    def _user(self, pod: _Pod, c: _Container) -> _User:
        psc = pod.spec.get("securityContext") or {}
        csc = c.spec.get("securityContext") or {}

        def pick(key: str) -> Any:
            return csc[key] if csc.get(key) is not None else psc.get(key)

        run_as_user = pick("runAsUser")
        run_as_group = pick("runAsGroup")
        uid = self.image_uid if run_as_user is None else int(run_as_user)
        if run_as_group is not None:
            gid = int(run_as_group)
        elif run_as_user is None or uid == self.image_uid:
            gid = self.image_gid  # the image's USER, or its /etc/passwd entry for that uid
        else:
            gid = 0  # containerd: a uid the image's /etc/passwd does not know gets group 0
        if pick("runAsNonRoot") and uid == 0:
            raise _ConfigError(f'container has runAsNonRoot and image will run as root (pod: '
                               f'"{pod.name}_{self.namespace}({pod.uid})", container: {c.name})')
        groups: list[int] = []
        for g in [psc.get("fsGroup"), *(psc.get("supplementalGroups") or [])]:
            if g is not None and int(g) not in groups and int(g) != gid:
                groups.append(int(g))
        privileged = bool(csc.get("privileged"))
        caps: tuple[str, ...] | None = None
        if not privileged:
            spec_caps = csc.get("capabilities") or {}

            def norm(names: Any) -> list[str]:
                return [str(n).lower().removeprefix("cap_") for n in names or []]

            drop, add = norm(spec_caps.get("drop")), norm(spec_caps.get("add"))
            current = [] if "all" in drop else [x for x in DEFAULT_CAPS if x not in drop]
            if not self._known_caps:
                self._known_caps = subprocess.run([_tool("setpriv"), "--list-caps"], capture_output=True,
                                                  text=True).stdout.split()
            known = self._known_caps
            for cap in known if "all" in add else add:
                if cap not in current:
                    if cap not in known:
                        raise _ConfigError(f"unknown capability {cap!r}")
                    current.append(cap)
            caps = tuple(current)
        no_new_privs = csc.get("allowPrivilegeEscalation") is False
        return _User(uid=uid, gid=gid, groups=tuple(groups), caps=caps, no_new_privs=no_new_privs)

    def _resolve(self, pod: _Pod, c: _Container) -> tuple[list[str], list[tuple[str, str]], _User]:
        env = self._env(pod, c)
        user = self._user(pod, c)
        mapping = dict(env)
        command = [expand_vars(str(a), mapping) for a in c.spec.get("command") or []]
        args = [expand_vars(str(a), mapping) for a in c.spec.get("args") or []]
        if not command:
            command = list(self.image_entrypoint)
        argv = command + args
        if not argv:
            raise _ConfigError("no command specified", reason="RunContainerError")
        image_env = {"PATH": f"{os.path.dirname(self.python)}:{PATH_TAIL}", **self.extra_env}
        full = dict(image_env)
        full["HOSTNAME"] = self._hostname(pod)
        full.update(dict(env))
        full.setdefault("HOME", self.image_home)
        return argv, list(full.items()), user

    def _rootfs_script(self, pod: _Pod, c: _Container) -> list[str]:
        """Shell lines that build the container's root under $R (in its private mount namespace)."""
        csc = c.spec.get("securityContext") or {}
        read_only_root = bool(csc.get("readOnlyRootFilesystem"))
        # umask 022: the folders made here above each bind are the image's own, readable by its user
        lines = ['umask 022', 'mount -t tmpfs -o mode=0755 fk-rootfs "$R"']
        for d in self.image_dirs:
            lines += [f'mkdir -p "$R"{_q(d)}', f'mount --rbind {_q(d)} "$R"{_q(d)}']
        for entry in sorted(os.listdir("/")):
            path = f"/{entry}"
            if os.path.islink(path) and not any(path == d for d in self.image_dirs):
                lines.append(f'ln -s {_q(os.readlink(path))} "$R"{_q(path)}')
        lines += ['mkdir -p "$R/proc" "$R/sys" "$R/dev" "$R/run" "$R/root" "$R/tmp"', 'chmod 1777 "$R/tmp"',
                  'mount -t proc proc "$R/proc"',
                  'mount -t sysfs -o ro sysfs "$R/sys"',
                  'mount --rbind /dev "$R/dev"',
                  'mount -t tmpfs -o mode=1777,nosuid,nodev fk-shm "$R/dev/shm"']
        if not read_only_root:
            lines.append('mount -t tmpfs -o mode=1777 fk-tmp "$R/tmp"')
        for b in self._binds:
            lines += [f'mkdir -p "$R"{_q(b)}', f'mount --rbind {_q(b)} "$R"{_q(b)}',
                      f'mount -o remount,bind,ro "$R"{_q(b)}']
        for d in self.image_dirs:
            if self.workdir == Path(d) or str(self.workdir).startswith(d.rstrip("/") + "/"):
                lines.append(f'mount -t tmpfs -o size=1m,mode=0755 fk-mask "$R"{_q(self.workdir)}')
        etc = pod.dir / "etc"
        for f in ("hosts", "hostname", "resolv.conf"):
            host = Path("/etc") / f
            if "/etc" in self.image_dirs and host.is_file() and not host.is_symlink():
                lines.append(f'mount --bind {_q(etc / f)} "$R/etc/{f}"')
        if self.image_workdir not in ("", "/") and not os.path.exists(self.image_workdir):
            lines += [f'mkdir -p "$R"{_q(self.image_workdir)}',
                      f'chown {self.image_uid}:{self.image_gid} "$R"{_q(self.image_workdir)}']
        for m in pod.mounts.get(c.name, []):
            target = "/" + m.target.strip("/")
            if not (m.source.is_dir() or m.source.is_file()):
                continue
            self._note_host_dirs(pod, target, read_only_root)
            if m.source.is_dir():
                lines.append(f'mkdir -p "$R"{_q(target)}')
            else:
                lines += [f'mkdir -p "$R"{_q(os.path.dirname(target))}', f'touch "$R"{_q(target)}']
            lines.append(f'mount --bind {_q(m.source)} "$R"{_q(target)}')
            if m.read_only:
                lines.append(f'mount -o remount,bind,ro "$R"{_q(target)}')
        # The project's sources stand in for what a real image has at a path of its own; where this checkout lives
        # under a mountPath (a clone in /tmp, and the pod mounts an emptyDir at /tmp) bind it again on top, as an
        # image's own files would not be under that volume.
        targets = ["/" + m.target.strip("/") for m in pod.mounts.get(c.name, [])]
        for b in self._binds:
            if any(b == t or b.startswith(t.rstrip("/") + "/") for t in targets):
                lines += [f'mkdir -p "$R"{_q(b)}', f'mount --rbind {_q(b)} "$R"{_q(b)}',
                          f'mount -o remount,bind,ro "$R"{_q(b)}']
        workdir = str(c.spec.get("workingDir") or self.image_workdir or "/")
        lines.append(f'mkdir -p "$R"{_q(workdir)}')
        if read_only_root:
            for d in self.image_dirs:
                lines.append(f'mount -o remount,bind,ro "$R"{_q(d)}')
            lines.append('mount -o remount,ro "$R"')
        lines.append(f"printf %s {_q(self._hostname(pod))} > /proc/sys/kernel/hostname")
        return lines

    def _note_host_dirs(self, pod: _Pod, target: str, read_only_root: bool) -> None:
        """A mountPath under an image dir that the host lacks gets created on the host: note it."""
        if not any(target == d or target.startswith(d + "/") for d in self.image_dirs):
            return
        missing: list[Path] = []
        path = Path(target)
        while not path.exists():
            missing.append(path)
            path = path.parent
        pod.host_dirs_created += reversed(missing)

    def _spawn(self, pod: _Pod, c: _Container, argv: list[str], env: list[tuple[str, str]], user: _User) -> None:
        assert pod.netns is not None
        rootfs = pod.dir / "rootfs" / c.name
        rootfs.mkdir(parents=True, exist_ok=True)
        workdir = str(c.spec.get("workingDir") or self.image_workdir or "/")
        env_args = ["/usr/bin/env", "-i", "--", *(f"{k}={v}" for k, v in env)]
        final = ["/usr/bin/unshare", f"--root={rootfs}", f"--wd={workdir}", "/usr/bin/setpriv", *user.setpriv(),
                 "--", *env_args]
        # fd 0 is a pipe to the kubelet until the last exec: one byte there says "set up, entering the
        # container"; the command itself gets /dev/null as stdin, as a container without stdin: true
        lines = ["set -e", f"R={_q(rootfs)}", *self._rootfs_script(pod, c), "printf x >&0",
                 f'exec {shlex.join(final)} "$@" </dev/null']
        chain = [_tool("ip"), "netns", "exec", pod.netns, _tool("unshare"), "-m", "-u", "--propagation", "private",
                 "/bin/sh", "-c", "\n".join(lines), "sh", *argv]
        c.log.parent.mkdir(parents=True, exist_ok=True)
        ready_r, ready_w = os.pipe()
        os.set_blocking(ready_r, False)
        try:
            with open(c.log, "ab") as out:
                if c.restarts:
                    out.write(f"\n--- kubelet: restart {c.restarts} ---\n".encode())
                    out.flush()
                c.proc = subprocess.Popen(chain, stdin=ready_w, stdout=out, stderr=subprocess.STDOUT,
                                          env={"PATH": HOST_PATH}, cwd="/", start_new_session=True, close_fds=True)
        except BaseException:
            os.close(ready_r)
            raise
        finally:
            os.close(ready_w)
        c.ready_fd = ready_r
        c.user, c.env = user, env
        c.ever_started = True
        c.run_started = time.monotonic()
        c.started_at = _now_iso()
        c.container_id = f"faithful://{pod.uid[:8]}-{c.name}-{c.restarts}"
        c.term_sent = c.kill_sent = c.created = False
        c.stop_deadline = None
        c.started_event = asyncio.Event()
        no_startup = not c.spec.get("startupProbe") or c.init
        c.started = no_startup
        if no_startup:
            c.started_event.set()
        c.ready = no_startup and not c.spec.get("readinessProbe") and not c.init
        if pod.uid not in self._started_uids:
            self._started_uids.add(pod.uid)
            self.started.append(pod.name)
        self._event(pod, "Started", f"container {c.name} pid {c.proc.pid} as {user.uid}:{user.gid} "
                                    f"groups {list(user.groups)}: {shlex.join(argv)}")

    async def _created(self, c: _Container, timeout: float = 30.0) -> bool:
        """Wait until the exec chain has set the container up (its byte on the pipe) and entered its root
        (a changed root device; it execs the command right after): only then is the container created,
        its mounts in place for exec probes. False: the set-up failed (the log says why)."""
        assert c.proc is not None and c.ready_fd is not None
        fd, c.ready_fd = c.ready_fd, None
        deadline = time.monotonic() + timeout
        try:
            while True:  # the set-up signal; EOF without it: the chain died during set-up
                try:
                    if not os.read(fd, 1):
                        return False
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        return False
                    await asyncio.sleep(0.002)
        finally:
            os.close(fd)
        c.created = True
        host_dev = os.stat("/").st_dev
        while not _exited(c.proc) and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{c.proc.pid}/root").st_dev != host_dev:
                    break
            await asyncio.sleep(0.002)
        return True

    async def _wait_exit(self, pod: _Pod, c: _Container) -> int:
        proc = c.proc
        assert proc is not None
        while not _exited(proc):
            now = time.monotonic()
            if pod.vanished and not c.kill_sent:
                self._event(pod, "Killing", f"SIGKILL to container {c.name} (pod object gone)")
                self._sigkill(pod, c)
            if pod.deleting and not c.term_sent and not c.kill_sent:
                self._event(pod, "Killing", f"SIGTERM to container {c.name} (pod deleted)")
                _signal(proc, signal.SIGTERM)
                c.term_sent = True
            deadlines = [d for d in (c.stop_deadline, pod.stop_deadline if pod.deleting else None) if d is not None]
            if deadlines and now >= min(deadlines) and not c.kill_sent:
                self._event(pod, "Killing", f"SIGKILL to container {c.name} (grace period over)")
                self._sigkill(pod, c)
            await asyncio.sleep(WAIT_TICK_S)
        # PID 1 of the container is gone: so is everything else in it (a PID namespace would do that)
        _signal(proc, signal.SIGKILL, group=True)
        if len(pod.containers) + len(pod.inits) == 1:
            _kill_netns(pod.ns_ino)
        returncode = await asyncio.get_running_loop().run_in_executor(None, proc.wait)
        return _exit_code(returncode)

    def _sigkill(self, pod: _Pod, c: _Container) -> None:
        assert c.proc is not None
        c.kill_sent = True
        _signal(c.proc, signal.SIGKILL)
        _signal(c.proc, signal.SIGKILL, group=True)
        if len(pod.all_containers) == 1:
            _kill_netns(pod.ns_ino)

    def _stop_container(self, pod: _Pod, c: _Container, grace_s: float, why: str) -> None:
        """Kill like a real kubelet: SIGTERM now, SIGKILL after the grace period."""
        assert c.proc is not None
        deadline = time.monotonic() + self._scaled(max(grace_s, MIN_GRACE_S))
        c.stop_deadline = deadline if c.stop_deadline is None else min(deadline, c.stop_deadline)
        if not c.term_sent:
            self._event(pod, "Killing", f"SIGTERM to container {c.name} ({why})")
            _signal(c.proc, signal.SIGTERM)
            c.term_sent = True

    # --- probes ---------------------------------------------------------------------------------
    def _start_probes(self, pod: _Pod, c: _Container) -> None:
        loop = asyncio.get_running_loop()
        for kind, key in (("startup", "startupProbe"), ("liveness", "livenessProbe"),
                          ("readiness", "readinessProbe")):
            probe = c.spec.get(key)
            if probe:
                c.probe_tasks.append(loop.create_task(self._probe_loop(pod, c, kind, probe),
                                                      name=f"kubelet-probe-{pod.name}-{kind}"))

    async def _probe_loop(self, pod: _Pod, c: _Container, kind: str, probe: dict[str, Any]) -> None:
        period = max(self._scaled(float(probe.get("periodSeconds", 10))), 0.02)
        timeout = max(self._scaled(float(probe.get("timeoutSeconds", 1))), MIN_PROBE_TIMEOUT_S)
        failure_threshold = int(probe.get("failureThreshold", 3))
        success_threshold = int(probe.get("successThreshold", 1))
        first = c.run_started + self._scaled(float(probe.get("initialDelaySeconds", 0)))
        await asyncio.sleep(max(0.0, first - time.monotonic()))
        if kind != "startup":
            await c.started_event.wait()
        failures = successes = 0
        next_at = time.monotonic()
        while True:
            if c.term_sent or pod.deleting:
                return  # a container being stopped is not probed to death again
            ok, message = await self._probe_once(pod, c, probe, timeout)
            if c.term_sent or pod.deleting:
                return
            if ok:
                successes, failures = successes + 1, 0
            else:
                successes, failures = 0, failures + 1
                self._event(pod, "Unhealthy", f"{kind.capitalize()} probe failed: {message}", "Warning")
            if kind == "startup":
                if ok:
                    c.started = True
                    c.started_event.set()
                    if not c.spec.get("readinessProbe"):
                        c.ready = True
                    await self._sync_status(pod)
                    return
                if failures >= failure_threshold:
                    self._probe_kill(pod, c, kind, probe)
                    return
            elif kind == "liveness":
                if failures >= failure_threshold:
                    self._probe_kill(pod, c, kind, probe)
                    return
            else:
                if ok and successes >= success_threshold and not c.ready:
                    c.ready = True
                    await self._sync_status(pod)
                elif not ok and failures >= failure_threshold and c.ready:
                    c.ready = False
                    await self._sync_status(pod)
            next_at += period
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at = max(next_at, time.monotonic() - period)

    def _probe_kill(self, pod: _Pod, c: _Container, kind: str, probe: dict[str, Any]) -> None:
        self.probe_kills.append((pod.name, kind))
        self._event(pod, "Killing", f"Container {c.name} failed {kind} probe, will be restarted", "Warning")
        grace = probe.get("terminationGracePeriodSeconds")
        if grace is None:
            grace = pod.spec.get("terminationGracePeriodSeconds", 30)
        self._stop_container(pod, c, float(grace), f"failed {kind} probe")

    def _port(self, c: _Container, port: Any) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in c.spec.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
        raise ValueError(f"unknown named port {port!r}")

    async def _probe_once(self, pod: _Pod, c: _Container, probe: dict[str, Any], timeout: float
                          ) -> tuple[bool, str]:
        assert pod.ip is not None
        loop = asyncio.get_running_loop()
        try:
            if "grpc" in probe:
                spec = probe["grpc"]
                target = f"{pod.ip}:{int(spec['port'])}"
                service = str(spec.get("service") or "")
                return await loop.run_in_executor(self._pool, _grpc_check, target, service, timeout)
            if "tcpSocket" in probe:
                spec = probe["tcpSocket"]
                host = str(spec.get("host") or pod.ip)
                port = self._port(c, spec["port"])
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
                return True, ""
            if "httpGet" in probe:
                spec = probe["httpGet"]
                return await loop.run_in_executor(
                    self._pool, _http_check, str(spec.get("host") or pod.ip), self._port(c, spec["port"]),
                    str(spec.get("path") or "/"), str(spec.get("scheme") or "HTTP"),
                    [(h["name"], h["value"]) for h in spec.get("httpHeaders") or []], timeout)
            if "exec" in probe:
                return await self._exec_check(c, [str(a) for a in probe["exec"].get("command") or []], timeout)
        except (TimeoutError, OSError, ValueError) as e:
            return False, f"{type(e).__name__}: {e}"
        return False, f"unsupported probe {sorted(probe)}"

    async def _exec_check(self, c: _Container, command: list[str], timeout: float) -> tuple[bool, str]:
        """Run the command inside the container (its namespaces, root, cwd, user and env)."""
        if c.proc is None or c.user is None or not command:
            return False, "no container"
        argv = [_tool("nsenter"), "-t", str(c.proc.pid), "-m", "-n", "-u", "-r", "-w", "--", "/usr/bin/setpriv",
                *c.user.setpriv(), "--", "/usr/bin/env", "-i", "--", *(f"{k}={v}" for k, v in c.env), *command]
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                                                    env={"PATH": HOST_PATH}, start_new_session=True)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            return False, f"command timed out after {timeout:g}s"
        if proc.returncode == 0:
            return True, ""
        return False, f"exit {proc.returncode}: {out.decode(errors='replace').strip()[-200:]}"

    # --- status ---------------------------------------------------------------------------------
    def _condition(self, pod: _Pod, type_: str, status: bool, reason: str | None = None,
                   message: str | None = None) -> dict[str, Any]:
        value = "True" if status else "False"
        old = pod.conditions.get(type_)
        if old is None or old[0] != value:
            pod.conditions[type_] = (value, _now_iso())
        cond: dict[str, Any] = {"type": type_, "status": value, "lastProbeTime": None,
                                "lastTransitionTime": pod.conditions[type_][1]}
        if reason:
            cond["reason"] = reason
        if message:
            cond["message"] = message
        return cond

    def _phase(self, pod: _Pod) -> str:
        if pod.init_failed:
            return "Failed"
        if not pod.initialized:
            if pod.inits and all(c.final for c in pod.all_containers):
                return "Failed"  # deleted while initializing
            return "Pending"
        cs = pod.containers
        if any(not c.ever_started and not c.final for c in cs):
            return "Pending"
        if any(not c.final for c in cs):
            return "Running"
        return "Succeeded" if all(c.exit_code == 0 for c in cs) else "Failed"

    def _container_status(self, c: _Container) -> dict[str, Any]:
        status: dict[str, Any] = {
            "name": c.name, "image": str(c.spec.get("image") or ""), "imageID": "",
            "ready": (c.exit_code == 0 and c.final) if c.init else c.ready,
            "started": bool(c.started and "running" in c.state), "restartCount": c.restarts,
            "state": c.state, "lastState": c.last_state,
        }
        if c.container_id:
            status["containerID"] = c.container_id
        return status

    def _compute_status(self, pod: _Pod) -> dict[str, Any] | None:
        if not pod.scheduled:
            if pod.unschedulable is None:
                return None
            return {"phase": "Pending", "conditions": [
                self._condition(pod, "PodScheduled", False, "Unschedulable", pod.unschedulable)]}
        phase = self._phase(pod)
        status: dict[str, Any] = {"phase": phase, "hostIP": self.bridge_ip, "hostIPs": [{"ip": self.bridge_ip}]}
        if pod.start_time:
            status["startTime"] = pod.start_time
        if pod.ip:
            status["podIP"] = pod.ip
            status["podIPs"] = [{"ip": pod.ip}]
        unready = [c.name for c in pod.containers if not c.ready]
        terminal = phase in ("Succeeded", "Failed")
        ready = pod.initialized and not unready and not terminal
        reason = "PodCompleted" if terminal else "ContainersNotReady"
        message = None if terminal or ready else f"containers with unready status: [{' '.join(unready)}]"
        initialized = pod.initialized or not pod.inits
        status["conditions"] = [
            self._condition(pod, "PodReadyToStartContainers", pod.netns is not None or pod.ip is not None),
            self._condition(pod, "Initialized", initialized, None if initialized else "ContainersNotInitialized"),
            self._condition(pod, "Ready", ready, None if ready else reason, message),
            self._condition(pod, "ContainersReady", ready, None if ready else reason, message),
            self._condition(pod, "PodScheduled", True),
        ]
        if pod.inits:
            status["initContainerStatuses"] = [self._container_status(c) for c in pod.inits]
        status["containerStatuses"] = [self._container_status(c) for c in pod.containers]
        return status

    async def _sync_status(self, pod: _Pod) -> None:
        """Patch the pod's status when it differs from what was last written (and the pod is still this one)."""
        async with pod.status_lock:
            status = self._compute_status(pod)
            if status is None or status == pod.last_status or pod.vanished:
                return
            cur = self.api.pod(self.namespace, pod.name)
            if cur is None or cur["metadata"].get("uid") != pod.uid:
                return
            try:
                await self.api.patch_pod_status(self.namespace, pod.name, json.loads(json.dumps(status)))
            except Exception as e:
                self._event(pod, "StatusPatchFailed", repr(e), "Warning")
                return
            pod.last_status = status


def _grpc_check(target: str, service: str, timeout: float) -> tuple[bool, str]:
    """grpc.health.v1 Check; SERVING is healthy (what the kubelet's gRPC probe does)."""
    channel = grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)])
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        if response.status == health_pb2.HealthCheckResponse.SERVING:
            return True, ""
        name = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        return False, f"service unhealthy (responded with {name})"
    except grpc.RpcError as e:
        code = e.code() if hasattr(e, "code") else None
        return False, f"rpc error: {code}"
    finally:
        channel.close()


def _http_check(host: str, port: int, path: str, scheme: str, headers: list[tuple[str, str]],
                timeout: float) -> tuple[bool, str]:
    """An HTTP GET; 200-399 is healthy. http.client, not urllib: no proxy from the environment."""
    conn: http.client.HTTPConnection
    if scheme.upper() == "HTTPS":
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ssl._create_unverified_context())
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        sent = {"User-Agent": "kube-probe/1.30", "Accept": "*/*", **dict(headers)}
        conn.request("GET", path, headers=sent)
        response = conn.getresponse()
        response.read(10 * 1024)
        if 200 <= response.status < 400:
            return True, ""
        return False, f"HTTP probe failed with statuscode: {response.status}"
    finally:
        conn.close()
