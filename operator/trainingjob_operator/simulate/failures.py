"""When nodes fail: a renewal process per node (exponential or Weibull), or a replayed failure log.

Each replica slot (role, rank) runs on a node. A node fails after a draw from the lifetime distribution,
counted from when it was given to the job; the replacement runs on a fresh node, and a replica that is
merely restarted (every survivor of a full recovery) keeps its node and its age. Each slot draws from its
own random stream, seeded by (seed, role, rank), and the replacement of a failed node is created at the
moment of the failure in every mode, so the failure times of a seed are the same whatever the recovery
mode or checkpoint interval: runs that differ only in those are compared on the same failures (common
random numbers), which is what lets a grid sweep resolve differences smaller than its seeds' spread.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

from trainingjob_operator.simulate.config import FailureSpec, LoggedFailure


class NodeLifetimes:
    """Draws node lifetimes per slot; ``inf`` for roles that do not fail."""

    def __init__(self, spec: FailureSpec, seed: int) -> None:
        self.spec = spec
        self.seed = seed
        self._streams: dict[tuple[str, int], random.Random] = {}
        self._roles = frozenset(spec.roles)
        if spec.distribution == "weibull":
            # mean = scale * Gamma(1 + 1/k)
            self._scale = spec.mtbf_node_s / math.gamma(1.0 + 1.0 / spec.weibull_shape)
        else:
            self._scale = spec.mtbf_node_s

    def _stream(self, role: str, rank: int) -> random.Random:
        key = (role, rank)
        stream = self._streams.get(key)
        if stream is None:
            stream = random.Random(f"{self.seed}/{role}/{rank}")
            self._streams[key] = stream
        return stream

    def lifetime(self, role: str, rank: int) -> float:
        """Seconds the next node of this slot lives."""
        if self.spec.log is not None or role not in self._roles or math.isinf(self.spec.mtbf_node_s):
            return math.inf
        stream = self._stream(role, rank)
        if self.spec.distribution == "weibull":
            return stream.weibullvariate(self._scale, self.spec.weibull_shape)
        return stream.expovariate(1.0 / self._scale)


def replay(log: tuple[LoggedFailure, ...], counts: dict[str, int]) -> Iterator[tuple[float, str, int]]:
    """The log's failures in time order as (time, role, rank); a rank beyond the role's (scaled) count
    wraps around, and roles the job does not have are skipped."""
    for failure in sorted(log, key=lambda f: (f.time_s, f.role, f.rank)):
        count = counts.get(failure.role, 0)
        if count > 0:
            yield failure.time_s, failure.role, failure.rank % count
