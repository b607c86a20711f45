"""structlog JSON logs for the operator, kopf's own log records included.

Our code logs through ``structlog.get_logger(...)`` with key-value context (job, namespace,
replica...). kopf logs through the standard library; its per-object records carry the object
reference in ``record.k8s_ref``, which is lifted into the JSON as ``object``. One line per
record on stderr, as log collectors expect.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

# Noisy libraries: per-request access logs and the like.
_QUIET = {"aiohttp.access": logging.WARNING, "kopf._core.engines.peering": logging.WARNING}


class _WithoutRoutineSuccesses(logging.Filter):
    """kopf logs every handler's success at INFO; for per-pod-event handlers that is pure noise."""

    NOISY = ("Handler 'pod_changed' succeeded.",)

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and record.getMessage() in self.NOISY)


def _lift_k8s_ref(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    record = event_dict.get("_record")
    ref = getattr(record, "k8s_ref", None)
    if isinstance(ref, dict):
        event_dict["object"] = {k: ref[k] for k in ("kind", "namespace", "name") if k in ref}
    return event_dict


def configure_logging(level: str = "INFO", json: bool = True) -> None:
    """Route structlog and standard logging through one formatter on stderr."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, _lift_k8s_ref],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(_WithoutRoutineSuccesses())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    for name, quiet in _QUIET.items():
        logging.getLogger(name).setLevel(quiet)
