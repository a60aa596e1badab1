"""Histories: certificates, alerts, usage and quotes (the two big tables keyed by LD, sub, time)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, text
from sqlmodel import Field, SQLModel

from hub.db import UTCDateTime
from hub.model.base import BUSINESS_KEY_MAX, created_field, ts_field

USAGE_STATUSES = ("normal", "missing", "recollected")


class Certificate(SQLModel, table=True):
    """An X.509 certificate issued for a concentrator or device (the seed's CERTIFICATE_HISTORY)."""

    __tablename__ = "certificate"
    serial: str = Field(primary_key=True, max_length=64)
    subject: str | None = Field(default=None, max_length=256)
    issued_at: datetime | None = ts_field()
    expires_at: datetime | None = ts_field()
    revoked: bool = False
    revoked_at: datetime | None = ts_field()
    revocation_reason: str | None = Field(default=None, max_length=256)
    created_at: datetime = created_field()


class Alert(SQLModel, table=True):
    """A fault or security alert raised by the hub or forwarded from another part."""

    __tablename__ = "alert"
    __table_args__ = (Index("ix_alert_events_unqueued", "id", sqlite_where=text("events_queued_at IS NULL"),
                            postgresql_where=text("events_queued_at IS NULL")),)
    id: int | None = Field(default=None, primary_key=True)
    raised_at: datetime = Field(sa_type=UTCDateTime, index=True)
    source: str = Field(max_length=64)
    severity: str = Field(default="warning", max_length=16)
    code: str = Field(max_length=64, index=True)
    message: str
    ld_id: str | None = Field(default=None, max_length=BUSINESS_KEY_MAX, index=True)
    he_id: int | None = None
    details: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    nms_sent_at: datetime | None = ts_field()
    events_queued_at: datetime | None = ts_field()
    """When the alert's outbound events (61968-9 ``created EndDeviceEvents``) were queued, in the
    same transaction as the outbox rows; NULL until then, so a start finds what a crash left."""


class UsageHistory(SQLModel, table=True):
    """A register snapshot of one metering point, one row per expected snapshot (normal or missing).

    No foreign key to logical_device: the history belongs to the metering point (LD_ID) and outlives
    installations and meter replacements.

    ``quality`` is a bit set (:mod:`hub.services.quality`). The effective increment of a row is
    ``recollected_increment`` when set (re-collection filled a gap before or at it), else ``increment``.
    Indexes: by time (exports, purges) and a small partial one over missing rows, which is all the
    re-collection scan reads.
    """

    __tablename__ = "usage_history"
    __table_args__ = (
        Index("ix_usage_history_measured_time", "measured_time"),
        Index("ix_usage_history_missing", "measured_time", sqlite_where=text("status = 'missing'"),
              postgresql_where=text("status = 'missing'")),
    )
    ld_id: str = Field(primary_key=True, max_length=BUSINESS_KEY_MAX)
    sub_number: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    measured_time: datetime = Field(primary_key=True, sa_type=UTCDateTime)
    register_value: float | None = None
    increment: float | None = None
    status: str = Field(default="normal", max_length=12)
    recollected_increment: float | None = None
    quality: int = Field(default=0, description="bit set of quality flags")
    source: str | None = Field(default=None, max_length=32)
    updated_at: datetime = created_field()


class QuoteHistory(SQLModel, table=True):
    """Increment and estimated charge per snapshot; created empty with each usage row, then updated
    by billing import or pseudo-billing (never inserted by them)."""

    __tablename__ = "quote_history"
    ld_id: str = Field(primary_key=True, max_length=BUSINESS_KEY_MAX)
    sub_number: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    measured_time: datetime = Field(primary_key=True, sa_type=UTCDateTime)
    increment: float | None = None
    estimated_charge: float | None = None
    co2_kg: float | None = None
    source: str | None = Field(default=None, max_length=32)
    corrected: bool = False
    updated_at: datetime = created_field()
