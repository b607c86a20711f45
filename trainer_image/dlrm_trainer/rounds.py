"""Coordinated checkpoint rounds: the consistent cut a full recovery restores.

A full recovery restarts every replica from one checkpoint. If each shard saved on its own clock, shard 1
could hold updates from samples that shard 0's older checkpoint and the trainers' rolled-back cursors do
not: those updates would be applied twice. So while the effective recovery mode is ``full``, saves are
rounds instead:

1. Trainer 0 announces round ``r`` at cursor ``c`` (in Redis) once per checkpoint interval; ``c`` lies
   ahead of every trainer's cursor.
2. Each trainer pauses before batch ``c`` of its shard: its workers finish their in-flight batches and
   wait for their sparse updates to be applied; then it calls ``Round(r)`` on every embedding server
   and on the sync server. Each call blocks until every trainer has arrived.
3. When the last trainer arrives, each server snapshots its state (the only stall), replies, writes the
   snapshot in the background and records its part of the round in Redis once it is durable.
4. A round is complete when every server recorded it. A full recovery restores the newest complete
   round everywhere and sets every trainer's cursor to ``c`` (``core.recovery.consistent_round``).

A round that not every trainer reaches within ``timeout_s`` (a trainer died, or its data ran out) is
abandoned: the waiting calls return ``saved=False`` and training goes on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from dlrm_trainer.rpc import Message

log = logging.getLogger("dlrm_trainer.rounds")
ROUND_METHOD = "Round"
ROUND_TIMEOUT_S = 60.0


class RoundBarrier:
    """A server's side of a round: ``arrive`` blocks until all ``parties`` trainers arrived at round
    ``round_id`` (then ``on_complete(round_id, cursor)`` runs once, in the last arrival's thread, while
    the others still wait) or until ``timeout_s`` passed (the round is abandoned)."""

    def __init__(self, parties: int, on_complete: Callable[[int, int], None], timeout_s: float = ROUND_TIMEOUT_S):
        self.parties, self.on_complete, self.timeout_s = parties, on_complete, timeout_s
        self._cond = threading.Condition()
        self._arrived: dict[int, set[int]] = {}
        self._done: dict[int, bool] = {}  # round -> saved (True) or abandoned (False)

    def arrive(self, round_id: int, party: int, cursor: int, abandon: bool = False) -> bool:
        """``abandon``: this trainer is already past the round's cursor (it heard of the round too late),
        so the round can never be consistent: release everyone now instead of at the timeout."""
        with self._cond:
            if round_id in self._done:
                return self._done[round_id]
            if abandon:
                self._done[round_id] = False
                self._arrived.pop(round_id, None)
                self._cond.notify_all()
                return False
            arrived = self._arrived.setdefault(round_id, set())
            arrived.add(party)
            if len(arrived) < self.parties:
                if not self._cond.wait_for(lambda: round_id in self._done, self.timeout_s):
                    self._done[round_id] = False  # abandoned: the others are released too
                    self._arrived.pop(round_id, None)
                    self._cond.notify_all()
                    log.warning("round %d abandoned: %d of %d trainers arrived", round_id, len(arrived), self.parties)
                return self._done[round_id]
            saved = True
            try:
                self.on_complete(round_id, cursor)
            except Exception:
                log.exception("round %d: snapshot failed", round_id)
                saved = False
            self._done[round_id] = saved
            self._arrived.pop(round_id, None)
            for old in [r for r in self._done if r < round_id - 16]:
                del self._done[old]
            self._cond.notify_all()
            return saved

    def handler(self, request: Message) -> Message:
        meta = request.meta
        saved = self.arrive(int(meta["round"]), int(meta["rank"]), int(meta["cursor"]), bool(meta.get("abandon")))
        return Message(meta={"saved": saved})


def round_request(round_id: int, rank: int, cursor: int, abandon: bool = False) -> Message:
    return Message(meta={"round": round_id, "rank": rank, "cursor": cursor, "abandon": abandon})


def next_round_cursor(cursors: list[int], lead: int, batches_per_trainer: int) -> int | None:
    """PURE: where the next round pauses every trainer: ``lead`` batches past the furthest cursor, so
    every trainer hears of it before it gets there; None when some trainer's data would end first."""
    if not cursors:
        return None
    cursor = max(cursors) + max(1, lead)
    return cursor if cursor < batches_per_trainer else None
