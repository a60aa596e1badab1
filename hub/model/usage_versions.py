"""Versions of a usage snapshot: edits made after collection, kept beside the raw row.

The raw row in ``usage_history`` is version 0 and is never changed by an edit. Each edit adds the
next version here with the values it sets, its quality flags (``edited`` among them), who made it,
why and when. The version a reader sees by default is the highest one (see
:mod:`hub.services.usage_versions`). Estimates are not stored: they are computed from the latest
versions when read (:mod:`hub.services.estimation`), so a re-collected value replaces them at once.
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from hub.db import UTCDateTime
from hub.model.base import BUSINESS_KEY_MAX, created_field


class UsageVersion(SQLModel, table=True):
    """One edit of a usage snapshot (version 1 and up; the raw row is version 0).

    No foreign key to ``usage_history``: like the history itself, versions belong to the metering
    point, and the retention purge removes both by time."""

    __tablename__ = "usage_version"
    ld_id: str = Field(primary_key=True, max_length=BUSINESS_KEY_MAX)
    sub_number: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    measured_time: datetime = Field(primary_key=True, sa_type=UTCDateTime)
    version: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    register_value: float | None = None
    increment: float | None = None
    quality: int = Field(default=0, description="bit set of quality flags of this version")
    author: str = Field(max_length=128, description="who made the edit")
    reason: str = Field(max_length=512, description="why")
    source: str = Field(default="manual", max_length=32, description="manual, billing-correction...")
    created_at: datetime = created_field()
