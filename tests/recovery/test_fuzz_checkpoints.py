"""Fuzzed checkpoint files and RPC messages (issue #10): corruption is found and fallen back from, never
loaded; a malformed request is refused with INVALID_ARGUMENT and the server goes on serving."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import grpc
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlrm_trainer.checkpoint import CheckpointWriter, load_latest
from dlrm_trainer.embedding_server import EmbeddingShard, ShardTables, serve
from dlrm_trainer.rpc import Client, Message, encode
from tests.recovery.conftest import make_shard
from tests.recovery.test_checkpoint import fresh_tables, save, state, touch

FILES = ["MANIFEST.json", "table-0.safetensors", "table-1.safetensors", "table-2.safetensors"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple, tuple]:
    """Two full checkpoints of one shard: (root, state at the first, state at the second)."""
    root = tmp_path_factory.mktemp("ckpt")
    shard = make_shard()
    writer = CheckpointWriter(root, 0, keep=3)
    save(writer, shard, "full", 1)
    first = state(shard.tables)
    touch(shard, {0: [1, 2, 3], 1: [4]}, times=3)
    save(writer, shard, "full", 2)
    return root, first, state(shard.tables)


def same(tables: ShardTables, expected: tuple) -> bool:
    weights, adagrad = expected
    return all(torch.equal(w, e) for w, e in zip(tables.weights, weights, strict=True)) and all(
        torch.equal(a, e) for a, e in zip(tables.adagrad, adagrad, strict=True))


corruption = st.one_of(
    st.tuples(st.just("flip"), st.integers(min_value=0), st.integers(min_value=1, max_value=255)),
    st.tuples(st.just("truncate"), st.integers(min_value=0), st.just(0)),
    st.tuples(st.just("append"), st.integers(min_value=1, max_value=64), st.just(0)),
    st.tuples(st.just("random"), st.integers(min_value=0, max_value=4096), st.integers(0, 2**31)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(file=st.sampled_from(FILES), damage=corruption)
def test_a_corrupted_newest_checkpoint_is_never_loaded(saved: tuple[Path, tuple, tuple], file: str,
                                                       damage: tuple[str, int, int]) -> None:
    root, first, second = saved
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "root"
        shutil.copytree(root, copy)
        target = copy / "shard-0" / "00000002-full" / file
        data = bytearray(target.read_bytes())
        how, at, value = damage
        if how == "flip":
            data[at % len(data)] ^= value
        elif how == "truncate":
            del data[at % len(data):]
        elif how == "append":
            data += bytes(range(at))
        else:
            data = bytearray(torch.randint(0, 256, (at,), generator=torch.Generator().manual_seed(value),
                                           dtype=torch.uint8).tolist())
        target.write_bytes(bytes(data))

        tables = fresh_tables()
        report = load_latest(copy, 0, tables)

    if report.loaded == ("00000002-full",):
        # Only a manifest edit that leaves it valid and every checksum intact can get here: the data is the
        # newest checkpoint's own, byte for byte (a changed progress marker is the most it can change).
        assert file == "MANIFEST.json" and same(tables, second)
    else:
        assert report.loaded == ("00000001-full",), report.describe()
        assert same(tables, first), "fell back to the previous checkpoint, exactly"
        assert any(s.id == "00000002-full" for s in report.skipped), report.describe()
        assert "fell back to 00000001-full" in report.describe()


@pytest.fixture(scope="module")
def server() -> tuple[EmbeddingShard, str]:
    shard = EmbeddingShard(ShardTables.initialise([8, 4], 2, 1, 0, seed=0), 1, 0, 0.1)
    running = serve(shard, host="127.0.0.1")
    yield shard, f"127.0.0.1:{running.port}"
    running.stop(grace=0)


def raw_call(endpoint: str, method: str, payload: bytes) -> grpc.StatusCode:
    with grpc.insecure_channel(endpoint) as channel:
        call = channel.unary_unary(f"/tj.EmbeddingServer/{method}", request_serializer=lambda b: b,
                                   response_deserializer=lambda b: b)
        try:
            call(payload, timeout=5)
        except grpc.RpcError as error:
            return error.code()  # type: ignore[no-any-return]
        return grpc.StatusCode.OK


messages = st.one_of(
    st.binary(max_size=256),
    st.builds(lambda ids, counts: encode(Message({"ids": torch.tensor(ids, dtype=torch.int64),
                                                  "counts": torch.tensor(counts, dtype=torch.int64)})),
              st.lists(st.integers(-(2**40), 2**40), max_size=6), st.lists(st.integers(-3, 9), max_size=3)),
    st.builds(lambda rows: encode(Message({"ids": torch.arange(rows), "counts": torch.tensor([rows, 0]),
                                           "grads": torch.zeros(rows + 1, 2)})), st.integers(0, 4)),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["Lookup", "Update"]), payload=messages)
def test_a_malformed_request_is_refused_and_the_server_keeps_serving(server: tuple[EmbeddingShard, str],
                                                                     method: str, payload: bytes) -> None:
    shard, endpoint = server
    before = [w.clone() for w in shard.tables.weights]
    code = raw_call(endpoint, method, payload)
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), code
    if code is grpc.StatusCode.INVALID_ARGUMENT and method == "Update":
        assert all(torch.equal(w, b) for w, b in zip(shard.tables.weights, before, strict=True)), \
            "a refused update changed nothing"
    client = Client("tj.EmbeddingServer", lambda: endpoint, deadline_s=5)
    try:
        rows = client.call("Lookup", Message({"ids": torch.tensor([3]), "counts": torch.tensor([1, 0])}))
        assert torch.equal(rows.tensors["rows"], shard.tables.weights[0][[3]])  # still serving
    finally:
        client.close()
