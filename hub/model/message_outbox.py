"""Outbound enterprise messages waiting for a subscriber to acknowledge them (store-and-forward).

An edge builds the message (the core never sees its protocol); the core keeps it until the
subscriber acknowledges. ``state``: ``queued`` until acknowledged (then the row is deleted), or
``rejected`` when the subscriber refused it for good (kept for the operator, with its answer).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Text
from sqlmodel import Field, SQLModel

from hub.db import UTCDateTime
from hub.model.base import created_field


class MessageOutbox(SQLModel, table=True):
    """One message for one subscriber of one edge (``channel``, e.g. ``cim``)."""

    __tablename__ = "message_outbox"
    __table_args__ = (Index("ix_message_outbox_due", "channel", "subscriber", "state", "next_attempt_at"),)
    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(max_length=16)
    subscriber: str = Field(max_length=64)
    topic: str = Field(max_length=64, description="what the message is about, e.g. the noun")
    body: str = Field(sa_type=Text)
    state: str = Field(default="queued", max_length=12)
    attempts: int = 0
    next_attempt_at: datetime = Field(sa_type=UTCDateTime)
    last_error: str | None = Field(default=None, max_length=512)
    queued_at: datetime = created_field()
