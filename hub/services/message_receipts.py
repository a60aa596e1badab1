"""Replay memory of inbound enterprise messages: a resent message gets the first reply, and the hub
acts on it once, across restarts and between processes sharing one store.

An edge claims ``(sender, message_id)`` before acting. The first claim wins and the edge acts, then
records the reply it gave (as opaque text: the core never reads it). A later claim of the same key
finds the reply and the edge sends it again, or finds the message still ``processing``: being
handled by another process now, or interrupted by a crash after the hub may have acted. Then the
edge must not act again; it answers that the outcome is unknown, so the partner can look before
resending under a new ID. Receipts are kept for ``retention`` and then purged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from hub.db import Database, utcnow
from hub.model import MessageReceipt

KEY_MAX = 256
"""Longest sender or message ID stored as given; longer ones are stored as their SHA-256."""

PURGE_EVERY = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Claim:
    """The outcome of :meth:`MessageReceiptService.claim`: ``first`` means act now; otherwise
    ``reply`` is the reply given before, or None while the first copy is (or was) in hand."""

    first: bool
    reply: str | None = None
    received_at: datetime | None = None


class MessageReceiptService:
    def __init__(self, db: Database, retention: timedelta = timedelta(days=7),
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.retention = retention
        self.clock = clock
        self._purged_at: datetime | None = None

    def claim(self, channel: str, sender: str, message_id: str) -> Claim:
        """Take the message in, unless it was taken in before (then say what is known of it)."""
        now = self.clock()
        self._purge_now_and_then(now)
        key = _key(channel, sender, message_id)
        try:
            with self.db.session() as s:
                s.add(MessageReceipt(channel=key[0], sender=key[1], message_id=key[2], received_at=now))
            return Claim(first=True)
        except IntegrityError:
            pass  # taken in before: read what the first copy left
        with self.db.session() as s:
            row = s.execute(select(MessageReceipt.reply, MessageReceipt.received_at)
                            .where(*_where(key))).one_or_none()
        if row is None:  # purged between the two statements: a retention-old message is new again
            return self.claim(channel, sender, message_id)
        return Claim(first=False, reply=row.reply, received_at=row.received_at)

    def release(self, channel: str, sender: str, message_id: str) -> None:
        """Give up a claim whose message turned out not to be taken after all (refused as invalid
        once its tail was read): a corrected copy under the same MessageID is then a first copy."""
        with self.db.session() as s:
            s.execute(delete(MessageReceipt).where(*_where(_key(channel, sender, message_id))))

    def record_reply(self, channel: str, sender: str, message_id: str, reply: str) -> None:
        """The reply given to the message claimed first, for later copies."""
        with self.db.session() as s:
            s.execute(update(MessageReceipt).where(*_where(_key(channel, sender, message_id)))
                      .values(state="replied", reply=reply, replied_at=self.clock()))

    def purge(self, older_than: datetime) -> int:
        """Forget receipts taken in before ``older_than``; returns how many."""
        with self.db.session() as s:
            return s.execute(delete(MessageReceipt).where(MessageReceipt.received_at < older_than)).rowcount or 0

    def _purge_now_and_then(self, now: datetime) -> None:
        if self._purged_at is None or now - self._purged_at >= PURGE_EVERY:
            self._purged_at = now
            self.purge(now - self.retention)


def _key(channel: str, sender: str, message_id: str) -> tuple[str, str, str]:
    return channel, _fit(sender), _fit(message_id)


def _fit(value: str) -> str:
    if len(value) <= KEY_MAX:
        return value
    return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def _where(key: tuple[str, str, str]) -> tuple[object, ...]:
    return (MessageReceipt.channel == key[0], MessageReceipt.sender == key[1], MessageReceipt.message_id == key[2])
