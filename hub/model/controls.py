"""Meter controls: the history of every control sent to a meter (who, when, what, outcome), and the
background jobs that send many at once (mass reboot).

``control_action`` is written before the command goes out (``outcome`` ``running``) and completed
after, so a hub that dies mid-control still shows the attempt. A job's per-device results are rows
of the same table carrying the job's id.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index
from sqlmodel import Field, SQLModel

from hub.db import UTCDateTime
from hub.model.base import BUSINESS_KEY_MAX, ID_MAX, created_field, ts_field

CONTROL_ACTIONS = ("relay-on", "relay-off", "contract", "status", "reboot", "reserve", "release")
CONTROL_OUTCOMES = ("running", "done", "refused", "failed", "unknown")
JOB_STATES = ("queued", "running", "done", "cancelling", "cancelled", "failed", "interrupted")


class ControlAction(SQLModel, table=True):
    """One control (or live status read) of one metering point."""

    __tablename__ = "control_action"
    __table_args__ = (Index("ix_control_action_ld_time", "ld_id", "requested_at"),
                      Index("ix_control_action_job", "job_id", "outcome"))
    id: int | None = Field(default=None, primary_key=True)
    ld_id: str = Field(max_length=BUSINESS_KEY_MAX)
    pd_id: str | None = Field(default=None, max_length=ID_MAX)
    he_id: int | None = None
    action: str = Field(max_length=16, description="relay-on, relay-off, contract, status, reboot")
    params: dict[str, Any] = Field(default_factory=dict, sa_type=JSON, description="what was asked (amps, force)")
    actor: str = Field(default="api", max_length=128, description="who asked")
    reason: str | None = Field(default=None, max_length=512, description="why, as the caller gave it")
    job_id: int | None = Field(default=None, description="the background job this control belongs to")
    outcome: str = Field(default="running", max_length=16)
    error_code: str | None = Field(default=None, max_length=32)
    detail: str | None = None
    result: dict[str, Any] = Field(default_factory=dict, sa_type=JSON,
                                   description="the live status the meter answered with, or the refusal's figures")
    requested_at: datetime = Field(sa_type=UTCDateTime)
    finished_at: datetime | None = ts_field()


class ControlJob(SQLModel, table=True):
    """A background control job over a device search (mass reboot), with its progress."""

    __tablename__ = "control_job"
    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(default="reboot", max_length=16)
    state: str = Field(default="queued", max_length=16, index=True)
    search: dict[str, Any] = Field(default_factory=dict, sa_type=JSON, description="the device search it runs over")
    actor: str = Field(default="api", max_length=128)
    reason: str | None = Field(default=None, max_length=512)
    total: int = Field(default=0, description="devices (comms units) to reboot")
    done: int = Field(default=0, description="devices that accepted the command")
    failed: int = Field(default=0, description="devices the command did not reach")
    error: str | None = None
    created_at: datetime = created_field()
    started_at: datetime | None = ts_field()
    finished_at: datetime | None = ts_field()
    updated_at: datetime = created_field()
