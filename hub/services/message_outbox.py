"""The store-and-forward queue of messages an edge publishes to its subscribers.

The edge builds each message (the core holds it as opaque text) and queues it here before any
attempt to send. A sender takes a subscriber's due rows in queue order and either deletes them (the
subscriber acknowledged), pushes them back with exponential back-off (unreachable, or a passing
fault), or marks them ``rejected`` (refused for good; kept for the operator). A row leaves the
queue only on an acknowledgement, so an outage of any length, or a restart of the hub, loses
nothing (delivery is at least once).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from hub.db import Database, utcnow
from hub.model import MessageOutbox


@dataclass(frozen=True, slots=True)
class Outgoing:
    id: int
    subscriber: str
    topic: str
    body: str
    attempts: int


def queue_rows(s: Session, channel: str, items: Iterable[tuple[str, str, str]], now: datetime) -> int:
    """Queue ``(subscriber, topic, body)`` messages in the caller's transaction (so a service can
    queue messages about what it stores in the same commit); returns how many."""
    rows = [{"channel": channel, "subscriber": sub, "topic": topic, "body": body, "state": "queued",
             "attempts": 0, "next_attempt_at": now, "queued_at": now} for sub, topic, body in items]
    if rows:
        s.execute(insert(MessageOutbox), rows)
    return len(rows)


class MessageOutboxService:
    def __init__(self, db: Database, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.clock = clock

    def enqueue(self, channel: str, items: Iterable[tuple[str, str, str]]) -> int:
        """Queue ``(subscriber, topic, body)`` messages of ``channel`` (one insert); returns how many."""
        items = list(items)
        if items:
            with self.db.session() as s:
                queue_rows(s, channel, items, self.clock())
        return len(items)

    def due(self, channel: str, subscriber: str, limit: int) -> list[Outgoing]:
        """The oldest queued messages of ``subscriber`` whose next attempt is due."""
        with self.db.session() as s:
            rows = s.execute(select(MessageOutbox.id, MessageOutbox.subscriber, MessageOutbox.topic,
                                    MessageOutbox.body, MessageOutbox.attempts)
                             .where(MessageOutbox.channel == channel, MessageOutbox.subscriber == subscriber,
                                    MessageOutbox.state == "queued", MessageOutbox.next_attempt_at <= self.clock())
                             .order_by(MessageOutbox.id).limit(limit))
            return [Outgoing(*r) for r in rows]

    def acknowledged(self, ids: Sequence[int]) -> None:
        with self.db.session() as s:
            s.execute(delete(MessageOutbox).where(MessageOutbox.id.in_(list(ids))))

    def retry_later(self, ids: Sequence[int], error: str, min_s: float, max_s: float) -> datetime:
        """Push ``ids`` back: the next attempt waits min_s * 2^attempts, at most max_s."""
        with self.db.session() as s:
            attempts = max(s.scalars(select(MessageOutbox.attempts).where(MessageOutbox.id.in_(list(ids)))).all(),
                           default=0)
            at = self.clock() + timedelta(seconds=min(max_s, min_s * (2 ** min(attempts, 30))))
            s.execute(update(MessageOutbox).where(MessageOutbox.id.in_(list(ids)))
                      .values(attempts=MessageOutbox.attempts + 1, next_attempt_at=at, last_error=error[:512]))
            return at

    def reject(self, ids: Sequence[int], error: str) -> None:
        with self.db.session() as s:
            s.execute(update(MessageOutbox).where(MessageOutbox.id.in_(list(ids)))
                      .values(state="rejected", attempts=MessageOutbox.attempts + 1, last_error=error[:512]))

    def stats(self, channel: str) -> dict[str, Any]:
        """Per subscriber: messages queued and rejected, the oldest queued time and the last error."""
        out: dict[str, Any] = {}
        with self.db.session() as s:
            for sub, state, n, oldest in s.execute(
                    select(MessageOutbox.subscriber, MessageOutbox.state, func.count(), func.min(MessageOutbox.queued_at))
                    .where(MessageOutbox.channel == channel)
                    .group_by(MessageOutbox.subscriber, MessageOutbox.state)):
                entry = out.setdefault(sub, {"queued": 0, "rejected": 0, "oldest_queued_at": None})
                entry[state] = n
                if state == "queued":
                    entry["oldest_queued_at"] = oldest
        return out
