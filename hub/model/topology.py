"""Topology: head-end -> concentrator -> physical device -> logical device, with comms rows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from hub.model.base import BUSINESS_KEY_MAX, ID_MAX, CommsSettings, created_field, ts_field

DEFAULT_HE_CAPACITY = 20_000


class HeadEnd(SQLModel, table=True):
    """A head-end system (the seed's HECONF); ``adapter`` names the HeadEnd port implementation."""

    __tablename__ = "head_end"
    he_id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    name: str = Field(max_length=128)
    adapter: str = Field(default="simulator", max_length=32)
    settings: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    capacity: int = DEFAULT_HE_CAPACITY
    created_at: datetime = created_field()


class Concentrator(SQLModel, table=True):
    """A concentrator; every head-end also owns a dummy one that holds not-yet-installed devices."""

    __tablename__ = "concentrator"
    id: int | None = Field(default=None, primary_key=True)
    co_id: str | None = Field(default=None, max_length=ID_MAX, unique=True)
    he_id: int = Field(foreign_key="head_end.he_id", index=True)
    type_id: int | None = Field(default=None, foreign_key="concentrator_type.type_id")
    serial: str | None = Field(default=None, max_length=64, unique=True)
    mac: str | None = Field(default=None, max_length=12, unique=True)
    name: str | None = Field(default=None, max_length=128)
    config_state: int = 0
    is_dummy: bool = False
    deleted: bool = False
    deleted_at: datetime | None = ts_field()
    created_at: datetime = created_field()
    updated_at: datetime = created_field()


class ConcentratorComms(CommsSettings, table=True):
    __tablename__ = "concentrator_comms"
    concentrator_id: int = Field(foreign_key="concentrator.id", primary_key=True, ondelete="CASCADE")


class PhysicalDevice(SQLModel, table=True):
    """A meter's comms unit or a smart controller (the seed's CONTROLLER)."""

    __tablename__ = "physical_device"
    # A concentrator's devices in key order: searches by CO_ID page through this index without a
    # sort (PostgreSQL's single-column index does not keep the key order; SQLite's does).
    __table_args__ = (Index("ix_physical_device_concentrator_key", "concentrator_id", "id"),)
    id: int | None = Field(default=None, primary_key=True)
    pd_id: str | None = Field(default=None, max_length=ID_MAX, unique=True)
    concentrator_id: int = Field(foreign_key="concentrator.id")
    type_id: int = Field(foreign_key="physical_device_type.type_id")
    serial: str | None = Field(default=None, max_length=64, unique=True)
    mac: str | None = Field(default=None, max_length=12, unique=True)
    name: str | None = Field(default=None, max_length=128)
    config_state: int = Field(default=0, description="0 do not poll, 1 poll")
    installed_at: datetime | None = ts_field()
    deleted: bool = False
    deleted_at: datetime | None = ts_field()
    created_at: datetime = created_field()
    updated_at: datetime = created_field()


class PhysicalDeviceComms(CommsSettings, table=True):
    __tablename__ = "physical_device_comms"
    physical_device_id: int = Field(foreign_key="physical_device.id", primary_key=True, ondelete="CASCADE")


class LogicalDevice(SQLModel, table=True):
    """One metering point. ``ld_id`` is the key shared with billing; it survives meter replacement
    and is null until installation (no usage is produced before)."""

    __tablename__ = "logical_device"
    __table_args__ = (UniqueConstraint("physical_device_id", "ld_address"),)
    id: int | None = Field(default=None, primary_key=True)
    ld_id: str | None = Field(default=None, max_length=BUSINESS_KEY_MAX, unique=True)
    physical_device_id: int = Field(foreign_key="physical_device.id", index=True)
    ld_address: int = Field(default=2, description="COSEM logical device address; 1 is management")
    type_id: int = Field(foreign_key="logical_device_type.type_id")
    cluster_id: str | None = Field(default=None, foreign_key="cluster.cluster_id", index=True)
    name: str | None = Field(default=None, max_length=128)
    contract_amps: int = 0
    relay_state: int = Field(default=1, description="1 supply on, 0 supply off")
    installed_at: datetime | None = ts_field()
    deleted: bool = False
    deleted_at: datetime | None = ts_field()
    created_at: datetime = created_field()
    updated_at: datetime = created_field()
