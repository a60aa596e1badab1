"""IEEE 1888 (FIAP) points: the registry of point IDs, every value written to them, and the durable
queue of values forwarded to upstream storages.

Point IDs are URIs used as opaque, exact-match, case-sensitive strings. A point maps to a canonical
channel (logical device + register) when it carries one; its values are then also stored on the
readings path (``usage_history``) when they fall on the 30-minute grid. ``fiap_value`` keeps every
value as written (the protocol's values are strings), at any time, so FETCH answers byte for byte.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index
from sqlmodel import Field, SQLModel

from hub.db import UTCDateTime
from hub.model.base import BUSINESS_KEY_MAX, created_field

POINT_ID_MAX = 512
VALUE_MAX = 1023
"""Longest value string (the reference C SDK caps every text at 1023 characters)."""


class FiapPoint(SQLModel, table=True):
    """A registered point: what it measures and, optionally, the canonical channel it feeds."""

    __tablename__ = "fiap_point"
    point_id: str = Field(primary_key=True, max_length=POINT_ID_MAX)
    kind: str = Field(max_length=32, description="energy, power, temperature, humidity, co2, ...")
    unit: str | None = Field(default=None, max_length=16)
    name: str | None = Field(default=None, max_length=128)
    ld_id: str | None = Field(default=None, max_length=BUSINESS_KEY_MAX, index=True)
    sub_number: int | None = None
    created_at: datetime = created_field()


class FiapValue(SQLModel, table=True):
    """One value of one point at one time, as written (``number`` when it parses as a number)."""

    __tablename__ = "fiap_value"
    point_id: str = Field(primary_key=True, max_length=POINT_ID_MAX)
    time: datetime = Field(primary_key=True, sa_type=UTCDateTime)
    value: str = Field(max_length=VALUE_MAX)
    number: float | None = None
    source: str | None = Field(default=None, max_length=64)
    received_at: datetime = created_field()


class FiapOutbox(SQLModel, table=True):
    """A value waiting for an upstream storage to acknowledge it (store-and-forward).

    ``state``: ``queued`` until acknowledged (then the row is deleted), or ``rejected`` when the
    upstream refused it for good (kept for the operator, with the upstream's error)."""

    __tablename__ = "fiap_outbox"
    __table_args__ = (Index("ix_fiap_outbox_due", "upstream", "state", "next_attempt_at"),)
    id: int | None = Field(default=None, primary_key=True)
    upstream: str = Field(max_length=64)
    point_id: str = Field(max_length=POINT_ID_MAX)
    time: datetime = Field(sa_type=UTCDateTime)
    value: str = Field(max_length=VALUE_MAX)
    state: str = Field(default="queued", max_length=12)
    attempts: int = 0
    next_attempt_at: datetime = Field(sa_type=UTCDateTime)
    last_error: str | None = Field(default=None, max_length=512)
    queued_at: datetime = created_field()

