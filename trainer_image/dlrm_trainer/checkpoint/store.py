"""Where checkpoints live: the one seam to checkpoint storage.

Two stores keep the same layout (see the package docstring) and the same promise — a checkpoint exists
iff its manifest exists, and the manifest is written last:

- :class:`DirectoryStore`: a directory (a mounted volume: a claim per server rank, a shared RWX claim, or
  a local run's ``runs/<job>/checkpoints``). Each file is written to a temporary name, fsynced and renamed;
  the manifest last; then the directories are fsynced.
- :class:`ObjectStore`: an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, GCS's XML API) through boto3. A PUT
  is atomic (an object is visible whole or not at all), so writing the data objects first and the manifest
  object last gives the same guarantee without renames. Credentials and the endpoint come from boto3's
  usual environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``,
  ``AWS_DEFAULT_REGION``), which the operator fills from the spec and a Secret.

:func:`open_store` picks one from a location: ``s3://bucket/prefix`` or a directory path.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Protocol

MANIFEST_NAME = "MANIFEST.json"
S3_SCHEME = "s3://"


class StorageError(Exception):
    """Checkpoint storage cannot be written or listed (permissions, a missing volume, ENOSPC, an unreachable
    or refusing object store...). The caller keeps training and reports it: the previous checkpoint stays
    the latest one."""

    def __init__(self, location: str | Path, cause: BaseException) -> None:
        detail = getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
        super().__init__(f"checkpoint storage {location} not writable: {detail}")
        self.location = str(location)
        self.errno: int | None = getattr(cause, "errno", None)


class CheckpointStore(Protocol):
    """Checkpoint folders (``shard-<k>``, ``dense``) holding checkpoint entries (``<seq>-<kind>``) of files."""

    def location(self, folder: str, entry: str = "", file: str = "") -> str:
        """A human-readable address (a path or an ``s3://`` URL) for logs and Redis pointers."""
        ...

    def entries(self, folder: str) -> list[tuple[str, bool]]:
        """(entry name, has a manifest) of every entry in the folder; [] when the folder does not exist."""
        ...

    def write_entry(self, folder: str, entry: str, files: Sequence[tuple[str, bytes]], manifest: bytes) -> None:
        """Write the files, then the manifest. Raises :class:`StorageError`; a failed write leaves no manifest."""
        ...

    def size(self, folder: str, entry: str, file: str) -> int | None:
        """The file's size in bytes, or None when it is missing."""
        ...

    def sha256(self, folder: str, entry: str, file: str) -> str:
        """The file's sha256, streamed (a large file is never held in memory)."""
        ...

    def read(self, folder: str, entry: str, file: str) -> bytes: ...

    def remove_entry(self, folder: str, entry: str) -> None:
        """Manifest first, so a half-removed checkpoint is already a non-checkpoint."""
        ...


def open_store(location: str | Path | CheckpointStore) -> CheckpointStore:
    if not isinstance(location, str | Path):
        return location
    text = str(location)
    if text.startswith(S3_SCHEME):
        return ObjectStore.from_url(text)
    return DirectoryStore(Path(location))


# -- a directory (a mounted volume) ----------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class DirectoryStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"DirectoryStore({str(self.root)!r})"

    def location(self, folder: str, entry: str = "", file: str = "") -> str:
        return str(Path(self.root, folder, entry, file)).rstrip("/")

    def entries(self, folder: str) -> list[tuple[str, bool]]:
        directory = self.root / folder
        if not directory.is_dir():
            return []
        return [(child.name, (child / MANIFEST_NAME).is_file()) for child in directory.iterdir() if child.is_dir()]

    def write_entry(self, folder: str, entry: str, files: Sequence[tuple[str, bytes]], manifest: bytes) -> None:
        directory = self.root / folder
        path = directory / entry
        try:
            path.mkdir(parents=True)
            for name, data in files:
                _write_atomically(path / name, data)
            _write_atomically(path / MANIFEST_NAME, manifest)
            _fsync_dir(path)
            _fsync_dir(directory)
        except OSError as e:
            shutil.rmtree(path, ignore_errors=True)
            raise StorageError(directory, e) from e

    def size(self, folder: str, entry: str, file: str) -> int | None:
        try:
            return (self.root / folder / entry / file).stat().st_size
        except FileNotFoundError:
            return None

    def sha256(self, folder: str, entry: str, file: str) -> str:
        with open(self.root / folder / entry / file, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()

    def read(self, folder: str, entry: str, file: str) -> bytes:
        return (self.root / folder / entry / file).read_bytes()

    def remove_entry(self, folder: str, entry: str) -> None:
        path = self.root / folder / entry
        (path / MANIFEST_NAME).unlink(missing_ok=True)
        shutil.rmtree(path)


# -- an S3-compatible object store -----------------------------------------------------------------------


def _client_errors() -> tuple[type[BaseException], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


class ObjectStore:
    """``s3://bucket/prefix``: entries are key prefixes ``<prefix>/<folder>/<entry>/``; no renames needed."""

    def __init__(self, bucket: str, prefix: str = "", client: Any = None) -> None:
        if not bucket:
            raise ValueError("an s3:// location needs a bucket: s3://<bucket>/<prefix>")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._client = client

    @classmethod
    def from_url(cls, url: str) -> ObjectStore:
        bucket, _, prefix = url.removeprefix(S3_SCHEME).partition("/")
        return cls(bucket, prefix)

    def __repr__(self) -> str:
        return f"ObjectStore({self.location('')!r})"

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            # Bounded retries and timeouts: a save that cannot reach the store fails (and is reported) instead
            # of hanging the checkpointer thread; a restore retries transient errors.
            config = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10, read_timeout=60)
            self._client = boto3.client("s3", config=config)
        return self._client

    def _key(self, *parts: str) -> str:
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p)

    def location(self, folder: str, entry: str = "", file: str = "") -> str:
        return f"{S3_SCHEME}{self.bucket}/{self._key(folder, entry, file)}".rstrip("/")

    def _keys(self, prefix: str) -> Iterator[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        for page in pages:
            for item in page.get("Contents", []):
                yield item["Key"]

    def entries(self, folder: str) -> list[tuple[str, bool]]:
        base = self._key(folder) + "/"
        found: dict[str, bool] = {}
        try:
            for key in self._keys(base):
                entry, _, rest = key[len(base):].partition("/")
                if entry and rest:
                    found[entry] = found.get(entry, False) or rest == MANIFEST_NAME
        except _client_errors() as e:
            raise StorageError(self.location(folder), e) from e
        return list(found.items())

    def write_entry(self, folder: str, entry: str, files: Sequence[tuple[str, bytes]], manifest: bytes) -> None:
        try:
            for name, data in files:
                self.client.put_object(Bucket=self.bucket, Key=self._key(folder, entry, name), Body=data)
            self.client.put_object(Bucket=self.bucket, Key=self._key(folder, entry, MANIFEST_NAME), Body=manifest)
        except _client_errors() as e:
            raise StorageError(self.location(folder), e) from e

    def size(self, folder: str, entry: str, file: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(folder, entry, file))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return int(head["ContentLength"])

    def _body(self, folder: str, entry: str, file: str) -> BinaryIO:
        from botocore.exceptions import ClientError

        try:
            response: Any = self.client.get_object(Bucket=self.bucket, Key=self._key(folder, entry, file))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(self.location(folder, entry, file)) from e
            raise
        body: BinaryIO = response["Body"]
        return body

    def sha256(self, folder: str, entry: str, file: str) -> str:
        digest = hashlib.sha256()
        body = self._body(folder, entry, file)
        for chunk in iter(lambda: body.read(1 << 20), b""):
            digest.update(chunk)
        return digest.hexdigest()

    def read(self, folder: str, entry: str, file: str) -> bytes:
        return self._body(folder, entry, file).read()

    def remove_entry(self, folder: str, entry: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(folder, entry, MANIFEST_NAME))
            keys = list(self._keys(self._key(folder, entry) + "/"))
            for start in range(0, len(keys), 1000):
                self.client.delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": k} for k in keys[start:start + 1000]], "Quiet": True})
        except _client_errors() as e:
            raise OSError(f"{self.location(folder, entry)}: {e}") from e
