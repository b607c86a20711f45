"""Warm standby replicas: processes that have paid for their imports and wait to become a replica.

A replacement that starts cold spends seconds importing torch, grpc and the model (and on Kubernetes
scheduling and pulling its image too) while the survivors wait on its shard. A standby has done that
already. Two ways to wait, one per backend:

- locally, ``python -m dlrm_trainer.standby ROLE`` waits for one line on stdin:
  ``{"env": {...}, "log": PATH}``, the replica it becomes. An empty stdin (the supervisor went away or
  retired the standby) exits 0.
- in a pod, ``python -m dlrm_trainer`` with ``TJ_STANDBY=1`` (the pod the operator renders for
  ``recovery.standby``) offers itself in the job's Redis and blocks on its assignment list: a rank and a
  generation. A server standby answers the gRPC health checks of its pod's probes while it waits, and
  stops answering just before the real server binds the port.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping


def warm_up(role: str) -> None:
    import torch  # noqa: F401

    from dlrm_trainer import checkpoint, embedding_server, roles, rpc, sync_server  # noqa: F401

    if role == "trainer":
        from dlrm_trainer import model, sources, trainer  # noqa: F401
        from dlrm_trainer.data import synthetic  # noqa: F401


def become(assignment: dict[str, object]) -> int:
    env = assignment["env"]
    assert isinstance(env, dict)
    os.environ.update({str(k): str(v) for k, v in env.items()})
    log = assignment.get("log")
    if log:
        fd = os.open(str(log), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    from dlrm_trainer.__main__ import main as replica_main

    return replica_main()


OFFER_EVERY_S = 1.0  # a standby says it is alive this often (the coordinator skips silent ones)


def serve_in_pod(environ: Mapping[str, str] | None = None) -> int:
    """A standby pod's life: warm up, offer itself, wait, then run the rank it is assigned (in this process)."""
    from trainingjob_operator.api.spec import Role
    from trainingjob_operator.coordination import Coordination

    env: Mapping[str, str] = os.environ if environ is None else environ
    role = Role(env["TJ_ROLE"])
    warm_up(role.value)
    from dlrm_trainer import rpc

    instance = env.get("TJ_INSTANCE") or str(os.getpid())
    coord = Coordination(env["TJ_REDIS_URL"], env.get("TJ_NAMESPACE", "default"), env["TJ_JOB"],
                         username=env.get("TJ_REDIS_USERNAME") or None, password=env.get("TJ_REDIS_PASSWORD") or None)
    health = None
    if role in (Role.EMBEDDING_SERVER, Role.SYNC_SERVER):
        health = rpc.Server("trainingjob.Standby", {}, host="0.0.0.0", port=int(env.get("TJ_GRPC_PORT") or 0))
        health.start()
    print(f"standby {role.value} ready (instance {instance})", flush=True)
    assignment = None
    while assignment is None:
        coord.offer_standby(role.value, instance, env.get("POD_IP", ""))
        assignment = coord.await_assignment(instance, OFFER_EVERY_S)
    coord.withdraw_standby(instance)
    print(f"standby {role.value} assigned rank {assignment['rank']} (generation {assignment['generation']})",
          flush=True)
    if health is not None:
        health.stop(grace=0)  # the server about to start binds this port
    os.environ.pop("TJ_STANDBY", None)
    return become({"env": {"TJ_RANK": assignment["rank"], "TJ_GENERATION": assignment["generation"]}})


def main() -> int:
    role = sys.argv[1] if len(sys.argv) > 1 else "trainer"
    warm_up(role)
    print(f"standby {role} ready (pid {os.getpid()})", flush=True)
    line = sys.stdin.readline()
    if not line.strip():
        return 0
    return become(json.loads(line))


if __name__ == "__main__":
    from dlrm_trainer.__main__ import exit_now

    exit_now(main())
