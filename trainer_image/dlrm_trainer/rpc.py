"""gRPC transport for tensors: the one seam between trainers and servers.

Messages are safetensors blobs (a dict of tensors plus a small JSON header), carried by gRPC's
generic handlers, so there is no hand-rolled socket protocol and no generated code to keep in
sync. gRPC brings deadlines, wait-for-ready, status codes and the standard health service that
Kubernetes probes natively.
"""

from __future__ import annotations

import json
import math
import struct
import threading
import time
from collections.abc import Callable, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

MAX_MESSAGE_BYTES = 512 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Fail fast on a dead peer so the client can re-resolve its replacement from Redis.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]
_META = "__meta__"
ATTEMPT_S = 30.0  # one attempt of a call; a call retries attempts until its deadline
REPLACED_POLL_S = 0.5  # while a call is slow, how often it checks whether its peer was replaced


@dataclass
class Message:
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


# The safetensors format (an 8-byte little-endian header length, a JSON header naming each tensor's dtype, shape
# and byte range, then the raw bytes), written and read here with as few copies as the format allows: a message
# is one join of the tensors' own buffers, and a received one is one copy of the payload into a writable buffer
# that every tensor views. (safetensors.torch.save copies each tensor to bytes and then again into the file
# buffer; load copies each tensor out: 4-8 ms for a batch's 1.5 MB of rows here, on the critical path.)
_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64",
    torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}
_BY_NAME = {name: dtype for dtype, name in _DTYPES.items()}
_ITEMSIZE = {name: torch.empty(0, dtype=dtype).element_size() for dtype, name in _DTYPES.items()}


def encode(message: Message) -> bytes:
    """``message`` as safetensors bytes (``safetensors.torch.load`` reads them)."""
    meta = torch.frombuffer(bytearray(json.dumps(message.meta).encode()), dtype=torch.uint8)
    tensors = {**{k: v.detach().contiguous().cpu() for k, v in message.tensors.items()}, _META: meta}
    header: dict[str, Any] = {}
    views: list[memoryview] = []
    offset = 0
    for name, tensor in tensors.items():
        if tensor.dtype not in _DTYPES:
            raise ValueError(f"{name}: dtype {tensor.dtype} cannot be sent")
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": _DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        if size:
            views.append(tensor.reshape(-1).view(torch.uint8).numpy().data)
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    return b"".join([struct.pack("<Q", len(text)), text, *views])


def decode(data: bytes) -> Message:
    """Raises ValueError for anything that is not a message :func:`encode` wrote."""
    try:
        tensors = _tensors(data)
        meta = json.loads(bytes(tensors.pop(_META).numpy()).decode())
    except Exception as exc:  # framing, JSON and UTF-8 errors alike: the bytes are not a message
        raise ValueError(f"malformed message ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"malformed message: metadata is {type(meta).__name__}, not a mapping")
    return Message(tensors, meta)


def _tensors(data: bytes) -> dict[str, torch.Tensor]:
    (length,) = struct.unpack_from("<Q", data, 0)
    if length > len(data) - 8:
        raise ValueError(f"header of {length} bytes in a message of {len(data)}")
    header = json.loads(bytes(data[8:8 + length]))
    if not isinstance(header, dict):
        raise ValueError("header is not a mapping")
    header.pop("__metadata__", None)
    payload = bytearray(memoryview(data)[8 + length:])  # the one copy: writable tensors, as a receiver expects
    tensors = {}
    for name, entry in header.items():
        dtype, itemsize = _BY_NAME[entry["dtype"]], _ITEMSIZE[entry["dtype"]]
        shape = [int(d) for d in entry["shape"]]
        start, end = (int(x) for x in entry["data_offsets"])
        count = math.prod(shape)
        if any(d < 0 for d in shape) or not 0 <= start <= end <= len(payload) or end - start != count * itemsize:
            raise ValueError(f"{name}: shape {shape} does not fit bytes {start}..{end} of {len(payload)}")
        tensors[str(name)] = (torch.frombuffer(payload, dtype=dtype, count=count, offset=start).view(shape)
                              if count else torch.empty(shape, dtype=dtype))
    return tensors


Handler = Callable[[Message], Message]


class Server:
    """A gRPC server exposing ``service/method`` handlers plus the standard health service."""

    def __init__(self, service: str, handlers: Mapping[str, Handler], host: str = "0.0.0.0", port: int = 0,
                 workers: int = 8) -> None:
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=CHANNEL_OPTIONS)
        rpc_handlers = {
            # Decoded in the handler, so a malformed request is INVALID_ARGUMENT (a failing deserializer is
            # INTERNAL in gRPC) and the server goes on serving.
            name: grpc.unary_unary_rpc_method_handler(_wrap(fn), response_serializer=encode)
            for name, fn in handlers.items()
        }
        self._server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(service, rpc_handlers)])
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        try:
            self.port = self._server.add_insecure_port(f"{host}:{port}")
        except RuntimeError as exc:  # grpc raises when the address is taken
            raise OSError(f"{service}: cannot serve on {host}:{port}: {exc}") from exc
        if self.port == 0:
            raise OSError(f"{service}: cannot serve on {host}:{port}")
        self.service = service

    def start(self) -> None:
        self._server.start()
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.health.set(self.service, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float = 1.0) -> None:
        self.health.enter_graceful_shutdown()
        self._server.stop(grace).wait()

    def wait(self) -> None:
        self._server.wait_for_termination()


def _wrap(fn: Handler) -> Callable[[bytes, grpc.ServicerContext], Message]:
    def handler(request: bytes, context: grpc.ServicerContext) -> Message:
        try:
            return fn(decode(request))
        except (ValueError, KeyError, IndexError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{type(exc).__name__}: {exc}")
            raise  # unreachable: abort raises

    return handler


def stalled_seconds(clients: list[Client]) -> float:
    """Wall-clock time during which any call of these clients waited for a peer: the union of the
    waits, so two threads stalled on the same outage count once."""
    spans = sorted(span for c in clients for span in c.stalls)
    total, end = 0.0, float("-inf")
    for start, stop in spans:
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


class PeerReplaced(Exception):
    """The peer a call waits on has been replaced (a new endpoint is registered): retry there."""


class _Delay(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Waits ``seconds`` before every call leaves: an emulated network round trip (``tc netem`` is not
    available where the benchmarks run, so the delay is added in user space, on the calling thread, as a
    slower network would hold that thread)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def intercept_unary_unary(self, continuation: Callable[..., Any], client_call_details: Any,
                              request: Any) -> Any:
        time.sleep(self.seconds)
        return continuation(client_call_details, request)


class Client:
    """Calls one server. ``resolve`` re-reads the endpoint (from Redis) after the peer was replaced.
    ``emulated_rtt_s`` delays every call by that much (benchmarks: network latency without netem)."""

    def __init__(self, service: str, resolve: Callable[[], str | None], deadline_s: float = 60.0,
                 peer: str = "", emulated_rtt_s: float = 0.0) -> None:
        self.service = service
        self.emulated_rtt_s = emulated_rtt_s
        self.peer = peer or service  # who is called, for "waiting for embedding-server-1"
        self._resolve = resolve
        self.deadline_s = deadline_s  # how long a call waits for an unavailable (replaced) peer
        self._waiting = 0  # calls now waiting for the peer (Hogwild threads and the shadow thread)
        self._waiting_lock = threading.Lock()
        self._endpoint: str | None = None
        self._channel: grpc.Channel | None = None
        self._stale = True
        self.reconnects = 0
        self.stalls: list[tuple[float, float]] = []  # (start, end) of waits for an unavailable peer

    def _connect(self) -> grpc.Channel:
        if not self._stale and self._channel is not None:
            return self._channel
        endpoint = self._resolve()
        if not endpoint:  # none registered yet: a replacement registers once its shard is loaded
            raise ConnectionError(f"{self.service}: no endpoint registered")
        if endpoint != self._endpoint or self._channel is None:
            if self._channel is not None:
                self._channel.close()
                self.reconnects += 1
            self._channel = grpc.insecure_channel(endpoint, options=CHANNEL_OPTIONS)
            if self.emulated_rtt_s > 0:
                self._channel = grpc.intercept_channel(self._channel, _Delay(self.emulated_rtt_s))
            self._endpoint = endpoint
        self._stale = False
        return self._channel

    def _callable(self, method: str) -> grpc.UnaryUnaryMultiCallable:
        return self._connect().unary_unary(
            f"/{self.service}/{method}", request_serializer=encode, response_deserializer=decode
        )

    def call(self, method: str, request: Message, deadline_s: float | None = None) -> Message:
        """Call with retries until the deadline: an unavailable peer is re-resolved and waited for."""
        wait_s = deadline_s or self.deadline_s
        deadline = time.monotonic() + wait_s
        backoff = 0.05
        first_failure: float | None = None
        try:
            while True:
                attempt_started = time.monotonic()
                try:
                    remaining = max(0.1, deadline - time.monotonic())
                    response = self._attempt(method, request, min(remaining, ATTEMPT_S))
                    if first_failure is not None:
                        self.stalls.append((first_failure, time.monotonic()))
                    return response
                except PeerReplaced as exc:  # the call hung on a dead peer: count the hang as a stall
                    if first_failure is None:
                        first_failure = attempt_started
                        with self._waiting_lock:
                            self._waiting += 1
                    self._stale = True
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"{self.service}.{method}: {self.peer} unavailable for {wait_s:.0f}s") from exc
                    continue  # at once, to the replacement
                except (grpc.RpcError, ConnectionError) as exc:
                    code = exc.code() if isinstance(exc, grpc.RpcError) else grpc.StatusCode.UNAVAILABLE
                    if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                    grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN):
                        raise
                    if first_failure is None:
                        first_failure = time.monotonic()
                        with self._waiting_lock:
                            self._waiting += 1
                    if time.monotonic() + backoff > deadline:
                        raise TimeoutError(
                            f"{self.service}.{method}: {self.peer} unavailable for {wait_s:.0f}s") from exc
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 1.0)
                    self._stale = True  # resolve again: the peer may have been replaced
        finally:
            if first_failure is not None:
                with self._waiting_lock:
                    self._waiting -= 1

    def _attempt(self, method: str, request: Message, timeout: float) -> Message:
        """One attempt. A dead peer (its node gone, no RST) leaves the call hanging until the attempt's
        timeout; once the peer's replacement registered a new endpoint, waiting longer is pointless, so a
        slow call checks every REPLACED_POLL_S and gives up on the old peer (``PeerReplaced``)."""
        future = self._callable(method).future(request, timeout=timeout)
        while True:
            try:
                response: Message = future.result(timeout=REPLACED_POLL_S)
                return response
            except grpc.FutureTimeoutError:
                try:
                    endpoint = self._resolve()
                except Exception:  # Redis unreachable: no news of a replacement, keep waiting
                    endpoint = None
                if endpoint and endpoint != self._endpoint:
                    future.cancel()
                    raise PeerReplaced(f"{self.peer} moved to {endpoint}") from None

    @property
    def waiting(self) -> bool:
        """Some call is waiting for this peer right now (it is down or being replaced)."""
        return self._waiting > 0

    @property
    def stalled_s(self) -> float:
        return stalled_seconds([self])

    def call_async(self, method: str, request: Message) -> grpc.Future | futures.Future[Message]:
        """Fire without retries; the result raises on any failure and the caller falls back to ``call``,
        which waits for the peer. A peer being replaced has no endpoint yet: that, too, is a failed
        future, never an exception here (it once crashed every trainer of a full recovery)."""
        try:
            method_call = self._callable(method)
        except ConnectionError as exc:
            failed: futures.Future[Message] = futures.Future()
            failed.set_exception(exc)
            return failed
        future: grpc.Future = method_call.future(request, timeout=min(self.deadline_s, ATTEMPT_S))
        return future

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
