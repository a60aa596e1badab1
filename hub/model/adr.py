"""Meter ADR: policies (how a metering point answers DR), received events, and actions taken."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, UniqueConstraint
from sqlmodel import Field, SQLModel

from hub.model.base import BUSINESS_KEY_MAX, created_field, ts_field


class AdrPolicy(SQLModel, table=True):
    """When and how far one register of a metering point answers a curtailment request."""

    __tablename__ = "adr_policy"
    id: int | None = Field(default=None, primary_key=True)
    ld_id: str = Field(max_length=BUSINESS_KEY_MAX, index=True)
    sub_number: int = 1
    active: bool = True
    signal_levels: list[int] = Field(default_factory=list, sa_type=JSON)
    signal_names: list[str] = Field(default_factory=list, sa_type=JSON)
    reduced_amps: int | None = None
    reduction_step_amps: int | None = None
    days_of_week: list[int] = Field(default_factory=lambda: list(range(7)), sa_type=JSON)
    hour_from: int = 0
    hour_to: int = 24
    min_notice_minutes: int = 0
    max_events_per_month: int | None = None
    opt_out_event_id: str | None = Field(default=None, max_length=128)
    created_by: str = Field(default="api", max_length=16, description="api | portal | terminal")
    deleted: bool = False
    deleted_at: datetime | None = ts_field()
    created_at: datetime = created_field()
    updated_at: datetime = created_field()


class AdrEvent(SQLModel, table=True):
    """A DR event as received (one row per modification number)."""

    __tablename__ = "adr_event"
    __table_args__ = (UniqueConstraint("vtn_id", "event_id", "modification_number"),)
    id: int | None = Field(default=None, primary_key=True)
    vtn_id: str = Field(max_length=128)
    event_id: str = Field(max_length=128, index=True)
    modification_number: int = 0
    market_context: str | None = Field(default=None, max_length=256)
    priority: int | None = None
    status: str = Field(default="far", max_length=16)
    test_event: bool = False
    dtstart: datetime | None = ts_field()
    duration_seconds: int | None = None
    tolerance_seconds: int | None = None
    notification_seconds: int | None = None
    ramp_up_seconds: int | None = None
    recovery_seconds: int | None = None
    signals: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON)
    targets: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    response: str | None = Field(default=None, max_length=16)
    response_reason: str | None = None
    received_at: datetime = created_field()


class AdrAction(SQLModel, table=True):
    """A contract-capacity reservation made for an event on one metering point, and its outcome."""

    __tablename__ = "adr_action"
    id: int | None = Field(default=None, primary_key=True)
    adr_event_id: int = Field(foreign_key="adr_event.id", index=True)
    policy_id: int | None = Field(default=None, foreign_key="adr_policy.id", index=True)
    ld_id: str = Field(max_length=BUSINESS_KEY_MAX, index=True)
    directed_at: datetime = created_field()
    start_at: datetime | None = ts_field()
    end_at: datetime | None = ts_field()
    reduced_amps: int | None = None
    restore_amps: int | None = None
    state: str = Field(default="pending", max_length=16)
    detail: str | None = None
    updated_at: datetime = created_field()
