"""Collection bookkeeping: one row per collection run, and the raw reads as they arrived.

``collection_run`` makes cycles restartable: a run is keyed by head-end, kind and slot, so a cycle
killed half-way is found again (state ``running``) and re-run; a finished one is not repeated.
``collection_log`` is the seed's collection log (収集ログ): every accepted register read, keyed by
metering point, register and snapshot time, so importing the same reads twice adds nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, UniqueConstraint
from sqlmodel import Field, SQLModel

from hub.db import UTCDateTime
from hub.model.base import BUSINESS_KEY_MAX, created_field, ts_field

RUN_KINDS = ("scheduled", "backfill", "recollect")
RUN_STATES = ("running", "done", "failed")


class CollectionRun(SQLModel, table=True):
    """One collection cycle of one head-end: ``scheduled`` (a slot polled on time), ``backfill``
    (slots read from the meters' memory after the hub was away) or ``recollect`` (gaps re-read)."""

    __tablename__ = "collection_run"
    __table_args__ = (UniqueConstraint("he_id", "kind", "slot_time", name="uq_collection_run_slot"),)
    id: int | None = Field(default=None, primary_key=True)
    he_id: int = Field(index=True)
    kind: str = Field(max_length=16)
    slot_time: datetime = Field(sa_type=UTCDateTime, index=True,
                                description="the snapshot slot (scheduled) or the latest slot covered")
    state: str = Field(default="running", max_length=16)
    targets: int = 0
    expected: int = Field(default=0, description="usage rows the run is responsible for")
    normal: int = Field(default=0, description="rows stored with a value")
    missing: int = Field(default=0, description="rows stored without a value")
    recollected: int = Field(default=0, description="missing rows filled by this run")
    expired: int = Field(default=0, description="missing rows past the collection deadline")
    alerts: int = Field(default=0, sa_column_kwargs={"server_default": "0"},
                        description="alerts the run's diagnosis raised")
    failures: dict[str, Any] = Field(default_factory=dict, sa_type=JSON,
                                     description="head-end error code -> number of meters")
    error: str | None = None
    started_at: datetime = created_field()
    finished_at: datetime | None = ts_field()


class CollectionLog(SQLModel, table=True):
    """A raw register read as accepted from a head-end or a push edge; never updated."""

    __tablename__ = "collection_log"
    ld_id: str = Field(primary_key=True, max_length=BUSINESS_KEY_MAX)
    sub_number: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    measured_time: datetime = Field(primary_key=True, sa_type=UTCDateTime)
    value: float
    he_id: int | None = None
    source: str = Field(max_length=32, description="scheduled, backfill, recollect, or a push edge's name")
    run_id: int | None = None
    received_at: datetime = created_field()
