"""Checkpoints in an S3-compatible object store keep every promise a directory keeps.

Real: an S3 server speaking the REST API over HTTP in its own process (``tests/support/object_store.py``),
boto3 with signed requests, torch tensors, ``EmbeddingShard`` and its lock. The same writer, loader and
retention code runs as for a directory; only the store differs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import torch

from dlrm_trainer.checkpoint import (
    CheckpointWriter,
    ObjectStore,
    StorageError,
    load_dense,
    load_latest,
    open_store,
    save_dense,
)
from dlrm_trainer.embedding_server import EmbeddingShard
from tests.recovery.test_checkpoint import assert_tables_equal, fresh_tables, save, state, touch
from tests.support.object_store import S3Server, s3_server

BUCKET = "checkpoints"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("s3"), buckets=(BUCKET,)) as server:
        yield server


@pytest.fixture
def store(s3: S3Server, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> ObjectStore:
    for name, value in s3.env().items():  # what a pod gets from the spec and its Secret
        monkeypatch.setenv(name, value)
    opened = open_store(f"s3://{BUCKET}/jobs/ns/{request.node.name}")
    assert isinstance(opened, ObjectStore)
    return opened


def test_a_chain_of_full_and_partial_saves_restores_exactly(store: ObjectStore, shard: EmbeddingShard,
                                                            s3: S3Server) -> None:
    writer = CheckpointWriter(store, 0)
    save(writer, shard, "full", 100)
    touch(shard, {0: [1, 2, 3], 2: [4]}, times=3)
    info = save(writer, shard, "mfu", 200, hot=1.0)
    expected = state(shard.tables)

    restored = fresh_tables()
    report = load_latest(store, 0, restored)

    assert report.loaded == ("00000001-full", "00000002-mfu") and report.progress == 200
    assert_tables_equal(restored, expected)
    assert info.location == f"s3://{BUCKET}/jobs/ns/{store.prefix.rsplit('/', 1)[-1]}/shard-0/00000002-mfu"
    keys = s3.keys(BUCKET, store.prefix + "/shard-0/00000002-mfu/")
    assert [k.rsplit("/", 1)[-1] for k in keys] == ["MANIFEST.json", "table-0.safetensors", "table-1.safetensors",
                                                   "table-2.safetensors"]


def test_a_corrupt_object_falls_back_to_the_previous_full_and_names_it(store: ObjectStore, shard: EmbeddingShard,
                                                                       s3: S3Server) -> None:
    writer = CheckpointWriter(store, 0, keep=3)
    save(writer, shard, "full", 1)
    expected = state(shard.tables)
    touch(shard, {1: [0, 5]})
    newest = save(writer, shard, "full", 2)
    key = f"{store.prefix}/shard-0/{newest.id}/table-1.safetensors"
    body = bytearray(s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read())
    body[-5] ^= 0xFF
    s3.client().put_object(Bucket=BUCKET, Key=key, Body=bytes(body))

    restored = fresh_tables()
    report = load_latest(store, 0, restored)

    assert report.loaded == ("00000001-full",)
    assert report.describe().endswith(
        "checkpoint 00000002-full corrupt (sha256 mismatch in table-1.safetensors); fell back to 00000001-full")
    assert_tables_equal(restored, expected)


def test_objects_without_a_manifest_are_no_checkpoint_and_retention_removes_old_ones(
        store: ObjectStore, shard: EmbeddingShard, s3: S3Server) -> None:
    writer = CheckpointWriter(store, 0, keep=1)
    save(writer, shard, "full", 1)
    # A save that died after its data objects, before its manifest: what a crash leaves in a bucket.
    s3.client().put_object(Bucket=BUCKET, Key=f"{store.prefix}/shard-0/00000002-full/table-0.safetensors",
                           Body=b"partial")
    assert load_latest(store, 0, fresh_tables()).incomplete == ("00000002-full",)

    restarted = CheckpointWriter(store, 0, keep=1)  # a replacement never reuses the crashed seq
    assert save(restarted, shard, "full", 3).id == "00000003-full"

    entries = {k.split("/")[-2] for k in s3.keys(BUCKET, store.prefix + "/shard-0/")}
    assert entries == {"00000003-full"}  # keep=1: the old full and the crashed entry are gone
    manifest = json.loads(store.read("shard-0", "00000003-full", "MANIFEST.json"))
    assert manifest["progress"] == 3 and manifest["kind"] == "full"


def test_the_dense_copy_round_trips(store: ObjectStore) -> None:
    flat = torch.randn(1000)
    info = save_dense(store, flat, progress_marker=4096)
    loaded = load_dense(store)
    assert loaded.id == info.id and loaded.progress == 4096
    assert loaded.flat is not None and torch.equal(loaded.flat, flat)


def test_an_unreachable_store_fails_the_save_with_a_storage_error_not_a_hang(
        shard: EmbeddingShard, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    writer = CheckpointWriter("s3://nowhere/prefix", 0)
    with pytest.raises(StorageError, match=r"checkpoint storage s3://nowhere/prefix/shard-0 not writable"):
        save(writer, shard, "full", 1)
    # A restore that cannot list the store fails loudly (the server exits and is retried) rather than
    # starting its shard from initial weights as if no checkpoint existed.
    with pytest.raises(StorageError, match=r"s3://nowhere/prefix/shard-0"):
        load_latest("s3://nowhere/prefix", 0, fresh_tables())
