"""The store-and-forward queue of values bound for upstream IEEE 1888 storages.

Values are queued in the transaction that stores them (:mod:`hub.services.fiap_store`). A forwarder
takes the due rows of one upstream in queue order, sends them, and then either deletes them (the
upstream acknowledged), pushes them back with exponential back-off (the upstream could not be
reached or had a passing fault), or marks them ``rejected`` (the upstream refused them for good;
they are kept for the operator). A row leaves the queue only on an acknowledgement, so an outage of
any length loses nothing; a crash between sending and deleting sends it again (at least once; the
upstream's duplicate rule makes a repeat harmless).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update

from hub.db import Database, utcnow
from hub.model import FiapOutbox


@dataclass(frozen=True, slots=True)
class Queued:
    id: int
    point_id: str
    time: datetime
    value: str
    attempts: int


class OutboxService:
    def __init__(self, db: Database, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.clock = clock

    def due(self, upstream: str, limit: int) -> list[Queued]:
        """The oldest queued rows of ``upstream`` whose next attempt is due."""
        with self.db.session() as s:
            rows = s.execute(select(FiapOutbox.id, FiapOutbox.point_id, FiapOutbox.time, FiapOutbox.value,
                                    FiapOutbox.attempts)
                             .where(FiapOutbox.upstream == upstream, FiapOutbox.state == "queued",
                                    FiapOutbox.next_attempt_at <= self.clock())
                             .order_by(FiapOutbox.id).limit(limit))
            return [Queued(*r) for r in rows]

    def acknowledged(self, ids: Sequence[int]) -> int:
        with self.db.session() as s:
            n = 0
            for i in range(0, len(ids), 900):
                n += s.execute(delete(FiapOutbox).where(FiapOutbox.id.in_(ids[i:i + 900]))).rowcount or 0
            return n

    def retry_later(self, ids: Sequence[int], error: str, min_s: float, max_s: float) -> datetime:
        """Push ``ids`` back: the next attempt waits min_s * 2^attempts, at most max_s."""
        with self.db.session() as s:
            attempts = max(s.scalars(select(FiapOutbox.attempts).where(FiapOutbox.id.in_(ids[:900]))).all(),
                           default=0)
            wait = min(max_s, min_s * (2 ** min(attempts, 30)))
            at = self.clock() + timedelta(seconds=wait)
            for i in range(0, len(ids), 900):
                s.execute(update(FiapOutbox).where(FiapOutbox.id.in_(ids[i:i + 900]))
                          .values(attempts=FiapOutbox.attempts + 1, next_attempt_at=at, last_error=error[:512]))
            return at

    def reject(self, ids: Sequence[int], error: str) -> None:
        with self.db.session() as s:
            for i in range(0, len(ids), 900):
                s.execute(update(FiapOutbox).where(FiapOutbox.id.in_(ids[i:i + 900]))
                          .values(state="rejected", attempts=FiapOutbox.attempts + 1, last_error=error[:512]))

    def stats(self) -> dict[str, Any]:
        """Per upstream: rows queued, rows rejected, the oldest queued time and the last error."""
        out: dict[str, Any] = {}
        with self.db.session() as s:
            for upstream, state, n, oldest in s.execute(
                    select(FiapOutbox.upstream, FiapOutbox.state, func.count(), func.min(FiapOutbox.queued_at))
                    .group_by(FiapOutbox.upstream, FiapOutbox.state)):
                entry = out.setdefault(upstream, {"queued": 0, "rejected": 0, "oldest_queued_at": None})
                entry[state] = n
                if state == "queued":
                    entry["oldest_queued_at"] = oldest
        return out
