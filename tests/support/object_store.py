"""An S3-compatible server for tests: moto's S3 server in a process of its own, speaking the S3 REST API over
HTTP, so the checkpoint store talks to it exactly as it would to MinIO or AWS (boto3, signed requests,
list/put/get/delete). Bound to a given address: 127.0.0.1 for the trainer's own tests, the faithful
kubelet's bridge address for pods.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ACCESS_KEY = "tj-test-access-key"
SECRET_KEY = "tj-test-secret-key"
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    def env(self) -> dict[str, str]:
        """What boto3 needs to reach this server (what a pod gets from the spec and its Secret)."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_DEFAULT_REGION": REGION}

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name=REGION)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def s3_server(log_dir: Path, host: str = "127.0.0.1",
              buckets: tuple[str, ...] = ("checkpoints",)) -> Iterator[S3Server]:
    port = _free_port(host)
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "s3-server.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        server = S3Server(f"http://{host}:{port}")
        deadline = time.monotonic() + 30
        while True:
            try:
                server.client().list_buckets()
                break
            except Exception as e:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log_text = (log_dir / "s3-server.log").read_text()[-2000:]
                    raise RuntimeError(f"S3 server did not start: {log_text}") from e
                time.sleep(0.1)
        for bucket in buckets:
            server.client().create_bucket(Bucket=bucket)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
