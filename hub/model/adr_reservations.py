"""Contract-capacity reservations the hub holds on meters for DR events.

One row per head-end reservation. A metering point's reservations never overlap (head-ends refuse
that), so overlapping events on one LD are cut into segments, each at the lowest capacity any of
its events asks for; the ADR action history says which events each segment served. Rows persist,
so after a restart the hub knows what is in force and can cancel or re-plan it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index
from sqlmodel import Field, SQLModel

from hub.model.base import BUSINESS_KEY_MAX, created_field, ts_field


class AdrReservation(SQLModel, table=True):
    __tablename__ = "adr_reservation"
    __table_args__ = (Index("ix_adr_reservation_ld_state", "ld_id", "state"),)
    id: int | None = Field(default=None, primary_key=True)
    ld_id: str = Field(max_length=BUSINESS_KEY_MAX)
    he_id: int
    device_key: int
    ld_address: int = 2
    start_at: datetime = ts_field(nullable=False)
    end_at: datetime = ts_field(nullable=False)
    amps: int
    reservation_id: str = Field(max_length=128, description="the head-end's reservation ID")
    state: str = Field(default="reserved", max_length=16, description="reserved | cancelled")
    created_at: datetime = created_field()
    updated_at: datetime = created_field()
