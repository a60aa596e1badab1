"""Device types and parameter groups: which registers a logical device type has."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from hub.model.base import created_field


class _TypeBase(SQLModel):
    name: str = Field(max_length=128)
    maker: str | None = Field(default=None, max_length=128)
    model: str | None = Field(default=None, max_length=128)
    description: str | None = None
    created_at: datetime = created_field()


class ConcentratorType(_TypeBase, table=True):
    __tablename__ = "concentrator_type"
    type_id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})


class PhysicalDeviceType(_TypeBase, table=True):
    __tablename__ = "physical_device_type"
    type_id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})


class ParameterGroup(SQLModel, table=True):
    """A named set of registers (the seed's PARAM_GROUP, keyed by GROUP_ID)."""

    __tablename__ = "parameter_group"
    group_id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    name: str = Field(max_length=128)
    description: str | None = None


class ParameterGroupItem(SQLModel, table=True):
    """One register of a group: sub number, OBIS logical name, unit and plausible range."""

    __tablename__ = "parameter_group_item"
    group_id: int = Field(foreign_key="parameter_group.group_id", primary_key=True, ondelete="CASCADE")
    sub_number: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    obis: str = Field(max_length=32, description="OBIS logical name, e.g. 1.0.1.8.0.255")
    name: str = Field(max_length=128)
    unit: str = Field(max_length=16)
    kind: str = Field(default="cumulative", max_length=16, description="cumulative | instantaneous | maximum")
    min_value: float | None = None
    max_value: float | None = None


class LogicalDeviceType(_TypeBase, table=True):
    __tablename__ = "logical_device_type"
    type_id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    group_id: int = Field(foreign_key="parameter_group.group_id", index=True)
