"""Starting the operator: ``run_operator(...)`` for the CLI, ``serve(...)`` to embed it.

``python -m trainingjob_operator.k8s.main --standalone`` runs it without the CLI (benchmarks).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import threading
from typing import Any

import kopf

from trainingjob_operator.k8s.config import OperatorConfig
from trainingjob_operator.k8s.logging import configure_logging


def operator_kwargs(config: OperatorConfig) -> dict[str, Any]:
    """kopf.operator() arguments for a config: scope and peering."""
    kwargs: dict[str, Any] = {"standalone": config.standalone}
    if config.namespace:
        kwargs["namespaces"] = [config.namespace, *config.extra_namespaces]
    else:
        kwargs["clusterwide"] = True
    if not config.standalone:
        # Mandatory peering under our own name; a random priority per replica (see OperatorConfig).
        kwargs["peering_name"] = config.peering_name
        kwargs["priority"] = config.peering_priority()
    return kwargs


async def serve(
    config: OperatorConfig,
    *,
    stop_flag: asyncio.Event | threading.Event | None = None,
    ready_flag: asyncio.Event | threading.Event | None = None,
    liveness_endpoint: str | None = None,
    memo: kopf.Memo | None = None,
) -> None:
    """Run the operator in the current event loop until ``stop_flag`` is set (or cancelled).

    ``memo`` (optional) receives the operator's shared state as ``memo["tj"]`` once started.
    """
    import trainingjob_operator.k8s.handlers  # noqa: F401 - registers the handlers with kopf

    memo = memo if memo is not None else kopf.Memo()
    memo["config"] = config
    await kopf.operator(memo=memo, stop_flag=stop_flag, ready_flag=ready_flag,
                        liveness_endpoint=liveness_endpoint, **operator_kwargs(config))


def run_operator(
    namespace: str | None,
    standalone: bool,
    metrics_port: int | None,
    redis_url: str | None,
    *,
    tick_s: float | None = None,
    liveness_port: int | None = None,
    priority: int | None = None,
    log_json: bool = True,
    log_level: str = "INFO",
    extra_namespaces: tuple[str, ...] = (),
    peering_name: str | None = None,
    liveness_endpoint: str | None = None,
) -> None:
    """Run the operator until SIGINT/SIGTERM (what ``trainingjob operator`` calls).

    Args:
        namespace: serve one namespace; None serves all of them.
        standalone: no kopf peering (one replica only); otherwise replicas elect one via peering.
        metrics_port: Prometheus /metrics port, None for none.
        redis_url: Redis for jobs without ``spec.redis.url`` (else TJ_DEFAULT_REDIS_URL).
        tick_s: reconcile every job at least this often (default 2 s).
        liveness_port: serve kopf's /healthz on this port.
        priority: peering priority (default: random per replica).
        log_json: structlog JSON lines (else human-readable console logs).
        log_level: root log level.
    """
    base = OperatorConfig.from_env()
    config = dataclasses.replace(
        base, namespace=namespace, standalone=standalone, metrics_port=metrics_port,
        default_redis_url=redis_url or base.default_redis_url, tick_s=tick_s or base.tick_s,
        priority=priority, log_json=log_json, log_level=log_level, extra_namespaces=extra_namespaces,
        peering_name=peering_name or base.peering_name,
    )
    configure_logging(config.log_level, config.log_json)
    liveness = liveness_endpoint or (f"http://0.0.0.0:{liveness_port}/healthz" if liveness_port else None)
    asyncio.run(serve(config, liveness_endpoint=liveness))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m trainingjob_operator.k8s.main", description=__doc__)
    parser.add_argument("--namespace", default=None)
    parser.add_argument("--standalone", action="store_true")
    parser.add_argument("--metrics-port", type=int, default=None)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--tick", type=float, default=None)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--console-logs", action="store_true")
    args = parser.parse_args(argv)
    run_operator(args.namespace, args.standalone, args.metrics_port, args.redis_url, tick_s=args.tick,
                 log_json=not args.console_logs, log_level=args.log_level)


if __name__ == "__main__":
    main()
