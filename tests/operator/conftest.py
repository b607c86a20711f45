"""The real kopf operator, in-process, against an in-memory Kubernetes API server and a real Redis.

What is real: kopf (watching, indexing, daemons, finalizers, event posting), every line of the
operator, HTTP between them, and a redis-server process (the session's ``redis_url``).
What is emulated: the API server (``trainingjob_operator.k8s.emulator.ApiServerEmulator``: it
stores objects, adds UIDs, and a toy kubelet turns new pods Running) — no garbage collection, no
strategic merge, no conflicts, no schema validation. Pods run nothing: tests decide their fate by
patching pod status as a kubelet would (``api.finish_pod``, ``api.evict_pod``).

Waits poll with a deadline (``eventually``); nothing sleeps a fixed time to "let things settle"
except where a test asserts that something does NOT happen (``quietly``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import kmock
import pytest

from tests.support.cluster import (  # noqa: F401  (re-exported for the operator tests)
    JOBS_URL,
    NAMESPACE,
    TICK_S,
    TJ,
    Cluster,
    Operator,
    manifest,
    operator_config,
)
from tests.support.emulator import ApiServerEmulator
from tests.support.waiting import eventually  # noqa: F401


async def quietly(seconds: float) -> None:
    """Let the operator run for a while when asserting that nothing happens."""
    await asyncio.sleep(seconds)


@pytest.fixture
async def cluster(redis_url: str) -> AsyncIterator[Cluster]:
    async with ApiServerEmulator() as api, kmock.Server(api):
        yield Cluster(api=api, redis_url=redis_url)
        await api.stop_kubelet()


@pytest.fixture
async def operator(cluster: Cluster, redis_url: str) -> AsyncIterator[Operator]:
    config = operator_config(cluster.api, redis_url)
    op = Operator(config=config)
    await op.start()
    yield op
    await op.stop()
