"""Real gRPC servers on loopback: tensors round-trip, and clients find a replaced server."""

import time

import pytest
import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from dlrm_trainer.embedding_server import EmbeddingShard, ShardTables, serve
from dlrm_trainer.rpc import Client, Message, decode, encode


def test_codec_round_trips_tensors_and_metadata() -> None:
    msg = Message({"a": torch.arange(6, dtype=torch.int64).view(2, 3), "b": torch.rand(4)}, {"k": [1, "x"]})
    back = decode(encode(msg))
    assert back.meta == {"k": [1, "x"]}
    assert torch.equal(back.tensors["a"], msg.tensors["a"]) and torch.equal(back.tensors["b"], msg.tensors["b"])


EVERY_DTYPE = {
    "rows": torch.randn(300, 16), "ids": torch.randint(0, 10**6, (512,)), "flags": torch.tensor([True, False]),
    "half": torch.randn(3, 2).to(torch.bfloat16), "empty": torch.empty(0, 4), "scalar": torch.tensor(3.5),
    "small": torch.arange(5, dtype=torch.int8), "counts": torch.arange(4, dtype=torch.int32),
    "strided": torch.arange(12.0).view(3, 4).t(),  # not contiguous: sent as its values
}


def test_the_wire_format_is_safetensors_both_ways() -> None:
    """The codec writes the tensors' buffers itself (one join, not safetensors' copies), in safetensors' format:
    safetensors reads what it writes, and it reads what safetensors writes."""
    wire = encode(Message(EVERY_DTYPE, {"step": 7}))
    theirs = safetensors_load(wire)
    assert set(theirs) == {*EVERY_DTYPE, "__meta__"}
    for name, tensor in EVERY_DTYPE.items():
        assert theirs[name].dtype == tensor.dtype and torch.equal(theirs[name], tensor), name
    meta = torch.frombuffer(bytearray(b'{"x": 1}'), dtype=torch.uint8)
    ours = decode(safetensors_save({**{k: v.contiguous() for k, v in EVERY_DTYPE.items()}, "__meta__": meta}))
    assert ours.meta == {"x": 1}
    for name, tensor in EVERY_DTYPE.items():
        assert ours.tensors[name].dtype == tensor.dtype and torch.equal(ours.tensors[name], tensor), name


def test_received_tensors_are_writable_and_independent_of_the_message_bytes() -> None:
    wire = encode(Message({"grads": torch.ones(4, 2)}))
    received = decode(wire).tensors["grads"]
    received.mul_(3.0)  # a server may update what it received in place
    assert torch.equal(received, torch.full((4, 2), 3.0))
    assert torch.equal(decode(wire).tensors["grads"], torch.ones(4, 2))


@pytest.mark.parametrize("cut", [0, 7, 8, 20, -1])
def test_a_truncated_or_garbled_message_is_a_value_error(cut: int) -> None:
    wire = encode(Message({"rows": torch.randn(8, 4)}, {"k": 1}))
    with pytest.raises(ValueError, match="malformed message"):
        decode(wire[:cut])
    garbled = bytearray(wire)
    garbled[8:12] = b"[1, "  # the header is no longer a JSON mapping
    with pytest.raises(ValueError, match="malformed message"):
        decode(bytes(garbled))


def test_a_header_whose_offsets_leave_the_payload_is_refused() -> None:
    header = b'{"a":{"dtype":"F32","shape":[1000],"data_offsets":[0,4000]},"__meta__":' \
             b'{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}'
    with pytest.raises(ValueError, match="malformed message"):
        decode(len(header).to_bytes(8, "little") + header + b"{}")


def test_client_talks_to_a_real_server_and_follows_its_replacement() -> None:
    def shard() -> EmbeddingShard:
        return EmbeddingShard(ShardTables.initialise([8], 2, 1, 0, seed=0), 1, 0, 0.1)

    first_shard = shard()
    first = serve(first_shard, host="127.0.0.1")
    endpoint = {"value": f"127.0.0.1:{first.port}"}
    client = Client("tj.EmbeddingServer", lambda: endpoint["value"], deadline_s=10)
    request = Message({"ids": torch.tensor([3]), "counts": torch.tensor([1])})
    assert torch.equal(client.call("Lookup", request).tensors["rows"], first_shard.tables.weights[0][[3]])

    first.stop(grace=0)
    second_shard = shard()
    second_shard.tables.weights[0].fill_(7.0)
    second = serve(second_shard, host="127.0.0.1")
    endpoint["value"] = f"127.0.0.1:{second.port}"  # what Redis says once the replacement registered
    try:
        rows = client.call("Lookup", request).tensors["rows"]
        assert torch.equal(rows, torch.full((1, 2), 7.0))
        assert client.reconnects == 1
    finally:
        second.stop(grace=0)
        client.close()


def test_a_peer_with_no_endpoint_yet_fails_the_async_call_and_the_retry_waits_for_it() -> None:
    # A replacement registers its endpoint only once its shard is loaded: until then the fire-and-forget
    # path must hand back a failed future (the caller then waits in call()), never raise in the caller.
    import threading

    import pytest

    shard = EmbeddingShard(ShardTables.initialise([8], 2, 1, 0, seed=0), 1, 0, 0.1)
    endpoint: dict[str, str | None] = {"value": None}
    client = Client("tj.EmbeddingServer", lambda: endpoint["value"], deadline_s=20)
    request = Message({"ids": torch.tensor([3]), "counts": torch.tensor([1])})
    future = client.call_async("Lookup", request)  # must not raise here
    with pytest.raises(ConnectionError, match="no endpoint registered"):
        future.result()
    server = serve(shard, host="127.0.0.1")
    registered = threading.Timer(0.5, lambda: endpoint.update(value=f"127.0.0.1:{server.port}"))
    registered.start()
    try:
        rows = client.call("Lookup", request).tensors["rows"]  # waits until the endpoint appears
        assert torch.equal(rows, shard.tables.weights[0][[3]])
        assert client.stalled_s >= 0.4
    finally:
        registered.cancel()
        server.stop(grace=0)
        client.close()


def test_a_call_hanging_on_a_dead_peer_moves_to_its_replacement_once_it_registers() -> None:
    # A peer whose node died sends no RST: the call would hang for the whole attempt (30 s). Once the
    # replacement has registered a new endpoint, the call gives up on the old peer and goes there.
    import threading

    from dlrm_trainer.rpc import Server

    hung = threading.Event()
    dead = Server("tj.EmbeddingServer", {"Lookup": lambda m: (hung.wait(30), m)[1]}, host="127.0.0.1")
    dead.start()
    shard = EmbeddingShard(ShardTables.initialise([8], 2, 1, 0, seed=0), 1, 0, 0.1)
    replacement = serve(shard, host="127.0.0.1")
    endpoint = {"value": f"127.0.0.1:{dead.port}"}
    client = Client("tj.EmbeddingServer", lambda: endpoint["value"], deadline_s=60)
    registered = threading.Timer(1.0, lambda: endpoint.update(value=f"127.0.0.1:{replacement.port}"))
    registered.start()
    started = time.monotonic()
    try:
        rows = client.call("Lookup", Message({"ids": torch.tensor([3]), "counts": torch.tensor([1])})).tensors["rows"]
        took = time.monotonic() - started
        assert torch.equal(rows, shard.tables.weights[0][[3]])
        assert took < 3.0, f"waited {took:.1f}s on a replaced peer"
        assert client.stalled_s >= 0.9  # the hang counts as a stall
    finally:
        hung.set()
        registered.cancel()
        dead.stop(grace=0)
        replacement.stop(grace=0)
        client.close()


def test_bad_request_is_invalid_argument_not_retried() -> None:
    import grpc
    import pytest

    server = serve(EmbeddingShard(ShardTables.initialise([8], 2, 1, 0, seed=0), 1, 0, 0.1), host="127.0.0.1")
    client = Client("tj.EmbeddingServer", lambda: f"127.0.0.1:{server.port}", deadline_s=5)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            client.call("Lookup", Message({"ids": torch.tensor([99]), "counts": torch.tensor([1])}))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        server.stop(grace=0)


def test_stall_time_is_the_union_of_overlapping_waits() -> None:
    from dlrm_trainer.rpc import stalled_seconds

    a = Client("x", lambda: None)
    b = Client("y", lambda: None)
    a.stalls = [(0.0, 2.0), (5.0, 6.0)]
    b.stalls = [(1.0, 3.0)]  # overlaps a's first wait: one outage seen by two threads
    assert stalled_seconds([a, b]) == 4.0
    assert a.stalled_s == 3.0


def test_an_emulated_round_trip_delays_every_call_and_only_that_clients() -> None:
    """Benchmarks emulate network latency on the trainer <-> sync-server path (no netem on these machines)."""
    shard = EmbeddingShard(ShardTables.initialise([8], 2, 1, 0, seed=0), 1, 0, 0.1)
    server = serve(shard, host="127.0.0.1")
    endpoint = f"127.0.0.1:{server.port}"
    slow = Client("tj.EmbeddingServer", lambda: endpoint, deadline_s=10, emulated_rtt_s=0.05)
    fast = Client("tj.EmbeddingServer", lambda: endpoint, deadline_s=10)
    request = Message({"ids": torch.tensor([3]), "counts": torch.tensor([1])})
    try:
        for client in (slow, fast):
            client.call("Lookup", request)  # connect first
        started = time.monotonic()
        for _ in range(5):
            slow.call("Lookup", request)
        slow_s = time.monotonic() - started
        started = time.monotonic()
        slow.call_async("Lookup", request).result()
        async_s = time.monotonic() - started
        started = time.monotonic()
        for _ in range(5):
            fast.call("Lookup", request)
        fast_s = time.monotonic() - started
        assert slow_s >= 5 * 0.05 and async_s >= 0.05
        assert fast_s < slow_s / 2
    finally:
        server.stop(grace=0)
        slow.close()
        fast.close()
