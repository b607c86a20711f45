"""The local supervisor's warm standby processes: as many per role as ``recovery.standby`` asks (at least one),
started one per call, handed out oldest first, dead ones skipped."""

from __future__ import annotations

import subprocess
from pathlib import Path

from trainingjob_operator.local.processes import StandbyPool


def test_the_pool_keeps_the_count_asked_hands_out_oldest_first_and_skips_dead_ones(tmp_path: Path) -> None:
    pool = StandbyPool(tmp_path / "logs", {})
    try:
        pool.prime("trainer", 2)
        pool.prime("embedding-server", 1)
        pool.prime("trainer", 2)
        pool.prime("trainer", 2)  # two alive already: nothing more
        logs = sorted(p.name for p in (tmp_path / "logs").iterdir())
        assert logs == ["standby-embedding-server-2.log", "standby-trainer-1.log", "standby-trainer-3.log"]
        started = list(pool._ready["trainer"])  # in the order they were started

        first = pool.take("trainer")
        second = pool.take("trainer")
        assert [first, second] == started
        assert pool.take("trainer") is None
        for process in started:
            process.kill()
            process.wait()

        pool.prime("trainer", 1)
        [dead] = pool._ready["trainer"]
        dead.kill()
        dead.wait()
        assert pool.take("trainer") is None  # a standby that died is never handed a replica
    finally:
        pool.stop()


def test_stop_kills_every_waiting_standby(tmp_path: Path) -> None:
    pool = StandbyPool(tmp_path / "logs", {})
    pool.prime("trainer", 2)
    pool.prime("trainer", 2)
    waiting: list[subprocess.Popen[bytes]] = list(pool._ready["trainer"])
    pool.stop()
    assert len(waiting) == 2 and all(p.returncode is not None for p in waiting)
