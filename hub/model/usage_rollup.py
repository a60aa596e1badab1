"""Per-slot totals of usage by cluster and by area, kept so secondary-use aggregates do not scan
every meter's rows on each request.

``usage_history`` holds one row per meter, register and 30-minute slot: a day of 80,000 meters is
3.84 M rows, and summing them with a distinct-customer count for each request took tens of
seconds. The rollup keeps, per slot, register and group, what the public aggregates publish:
energy, meters, distinct customers (for the k-anonymity check) and the status counts of the
quality summary.

Freshness is tracked, not assumed:

- ``usage_rollup_slot`` says a slot was rolled up, and under which ``generation``;
- ``usage_rollup_stale`` gets a row for each slot whose usage rows were written since (the writer
  adds it in the same transaction as the rows);
- ``usage_rollup_state.generation`` goes up whenever what a slot's rows add up to could change
  without a usage write: a metering point moved to another cluster, a cluster to another area, a
  customer link added, ended or removed. Every slot rolled up under an older generation is stale.

A slot is read from the rollup only when it is covered under the current generation and has no
stale row; anything else is rolled up again first (:mod:`hub.services.usage_rollup`).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, PrimaryKeyConstraint
from sqlmodel import Field, SQLModel

from hub.db import UTCDateTime


class UsageRollup(SQLModel, table=True):
    """Totals of one group (a cluster or an area) for one register and one slot."""

    __tablename__ = "usage_rollup"
    __table_args__ = (PrimaryKeyConstraint("sub_number", "measured_time", "group_kind", "group_id",
                                           name="pk_usage_rollup"),)
    sub_number: int = Field(sa_column_kwargs={"autoincrement": False})
    measured_time: datetime = Field(sa_type=UTCDateTime, description="the slot's end, as in usage_history")
    group_kind: str = Field(max_length=8, description="cluster, area, or fleet (every row; operations only)")
    group_id: str = Field(max_length=128)
    energy: float | None = Field(default=None, description="sum of the effective increments")
    meters: int = Field(default=0, description="usage rows (one per metering point)")
    customers: int = Field(default=0, description="distinct customers; a point with none counts as its own")
    normal: int = 0
    missing: int = 0
    recollected: int = 0


class UsageRollupSlot(SQLModel, table=True):
    """A slot (every register of it) rolled up under ``generation``."""

    __tablename__ = "usage_rollup_slot"
    measured_time: datetime = Field(primary_key=True, sa_type=UTCDateTime)
    generation: int = Field(default=0)


class UsageRollupStale(SQLModel, table=True):
    """A slot whose usage rows changed after it was rolled up. One row per writing transaction and
    slot, never updated: a roll-up removes exactly the rows it saw, so a write that commits while
    it runs stays marked. The newest id tells a reader whether anything was written since it last
    looked."""

    __tablename__ = "usage_rollup_stale"
    __table_args__ = (Index("ix_usage_rollup_stale_measured_time", "measured_time"),
                      {"sqlite_autoincrement": True})  # ids never reused: readers compare the newest id
    id: int | None = Field(default=None, primary_key=True)
    measured_time: datetime = Field(sa_type=UTCDateTime)


class UsageRollupState(SQLModel, table=True):
    """One row: the generation of the grouping (which meters are in which cluster and area, and
    whose customers they are)."""

    __tablename__ = "usage_rollup_state"
    id: int = Field(default=1, primary_key=True, sa_column_kwargs={"autoincrement": False})
    generation: int = Field(default=0)
