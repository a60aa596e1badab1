"""Inbound enterprise messages the hub has taken in, by sender and message ID, with the reply it gave.

A partner that resends a message (its own retry after a timeout, a replayed queue) must get the
first reply and must not make the hub act twice, also across restarts and between processes of
one hub. The row is claimed before the hub acts (``state`` ``processing``) and holds the reply
once it is known (``replied``). The reply is kept as the edge wrote it: the core never reads it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, PrimaryKeyConstraint, Text
from sqlmodel import Field, SQLModel

from hub.db import UTCDateTime
from hub.model.base import created_field


class MessageReceipt(SQLModel, table=True):
    """One message taken in on one edge (``channel``, e.g. ``cim``)."""

    __tablename__ = "message_receipt"
    __table_args__ = (PrimaryKeyConstraint("channel", "sender", "message_id", name="pk_message_receipt"),
                      Index("ix_message_receipt_received_at", "received_at"))
    channel: str = Field(max_length=16)
    sender: str = Field(max_length=256, description="who sent it (61968-100 Header/Source; may be empty)")
    message_id: str = Field(max_length=256)
    state: str = Field(default="processing", max_length=12, description="processing or replied")
    reply: str | None = Field(default=None, sa_type=Text, description="the reply as sent, once known")
    received_at: datetime = created_field()
    replied_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
