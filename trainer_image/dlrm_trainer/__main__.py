"""Entrypoint of the trainer image: ``python -m dlrm_trainer`` runs the role named by TJ_ROLE.

Exit codes: 0 done, 78 configuration error (never retried), anything else retryable.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback

from dlrm_trainer.runtime import EXIT_CONFIG, ConfigError, replica_env
from trainingjob_operator.api.exits import record_exit
from trainingjob_operator.api.spec import Role


def main() -> int:
    logging.basicConfig(level=os.environ.get("TJ_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if os.environ.get("TJ_STANDBY") == "1":  # a warm standby pod: wait for a rank, then run it (in main again)
        from dlrm_trainer.standby import serve_in_pod

        return serve_in_pod()
    try:
        renv = replica_env()
        import torch

        torch.set_num_threads(renv.spec.training.torch_threads)
        if renv.role is Role.EMBEDDING_SERVER:
            from dlrm_trainer.roles import run_embedding_server

            return run_embedding_server(renv)
        if renv.role is Role.SYNC_SERVER:
            from dlrm_trainer.roles import run_sync_server

            return run_sync_server(renv)
        from dlrm_trainer.roles import run_trainer

        return run_trainer(renv)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    except Exception:  # report and exit non-zero: the coordinator retries
        traceback.print_exc()
        return 1


def exit_now(code: int) -> None:
    """Exit without the interpreter's teardown once the role is done (its result and checkpoints are written
    by then). A trainer that had logged ``done`` sometimes never exited: finalisation had frozen its daemon
    threads (the heartbeat among them) and then waited on gRPC's, so the coordinator saw a hung replica
    and replaced a trainer that had finished.

    Locally the code is also recorded (``api.exits``) for a supervisor that adopted this process."""
    record_exit(code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
