"""A warm standby replica: ``python -m dlrm_trainer.standby ROLE``.

It imports everything its role needs (torch, grpc, torchrec for trainers: seconds on a small
machine), then waits for one line on stdin: ``{"env": {...}, "log": PATH}``, the replica it becomes.
The coordinator keeps one per role so a replacement starts without paying the imports: that is
time survivors would otherwise spend waiting on a lost embedding shard. An empty stdin (the
coordinator went away or retired the standby) exits 0.
"""

from __future__ import annotations

import json
import os
import sys


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
