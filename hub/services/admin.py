"""Administration of head-ends, device types and parameter groups."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func
from sqlmodel import Session, select

from hub.db import Database, utcnow
from hub.model import (
    Concentrator,
    ConcentratorComms,
    ConcentratorType,
    HeadEnd,
    LogicalDeviceType,
    ParameterGroup,
    ParameterGroupItem,
    PhysicalDevice,
    PhysicalDeviceType,
)
from hub.model.topology import DEFAULT_HE_CAPACITY
from hub.services.errors import Conflict, NotFound


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class HeadEndIn(_Input):
    he_id: int = Field(ge=1, le=10**12, description="HEID: devices fill the lowest first")
    name: str = Field(min_length=1, max_length=128)
    adapter: str = Field("simulator", max_length=32, description="HeadEnd port implementation")
    settings: dict[str, Any] = Field(default_factory=dict)
    capacity: int = Field(DEFAULT_HE_CAPACITY, ge=1, le=10_000_000)


class HeadEndPatch(_Input):
    name: str | None = Field(None, min_length=1, max_length=128)
    adapter: str | None = Field(None, max_length=32)
    settings: dict[str, Any] | None = None
    capacity: int | None = Field(None, ge=1, le=10_000_000)


class DeviceTypeIn(_Input):
    type_id: int = Field(ge=0, le=2**31 - 1)
    name: str = Field(min_length=1, max_length=128)
    maker: str | None = Field(None, max_length=128)
    model: str | None = Field(None, max_length=128)
    description: str | None = Field(None, max_length=2000)
    group_id: int | None = Field(None, description="parameter group (logical device types only)")


class ParameterItemIn(_Input):
    sub_number: int = Field(ge=0, le=65535)
    obis: str = Field(min_length=1, max_length=32)
    name: str = Field(min_length=1, max_length=128)
    unit: str = Field(max_length=16)
    kind: Literal["cumulative", "instantaneous", "maximum"] = "cumulative"
    min_value: float | None = None
    max_value: float | None = None


class ParameterGroupIn(_Input):
    group_id: int = Field(ge=0, le=2**31 - 1)
    name: str = Field(min_length=1, max_length=128)
    description: str | None = Field(None, max_length=2000)
    items: list[ParameterItemIn] = Field(default_factory=list, max_length=1000)


TypeLevel = Literal["concentrator", "physical-device", "logical-device"]
TYPE_TABLES: dict[str, type] = {
    "concentrator": ConcentratorType,
    "physical-device": PhysicalDeviceType,
    "logical-device": LogicalDeviceType,
}


def dummy_co_id(he_id: int) -> str:
    """The seed names a head-end's holding concentrator after it: ``HE1``, ``HE2``..."""
    return f"HE{he_id}"


class AdminService:
    def __init__(self, db: Database) -> None:
        self.db = db

    # head-ends ---------------------------------------------------------------------------------
    def create_head_end(self, data: HeadEndIn) -> dict[str, Any]:
        with self.db.session() as s:
            if s.get(HeadEnd, data.he_id):
                raise Conflict.on("he_id", f"head-end {data.he_id} already exists")
            if s.exec(select(Concentrator).where(Concentrator.co_id == dummy_co_id(data.he_id))).first():
                raise Conflict.on("he_id", f"concentrator ID {dummy_co_id(data.he_id)} is already taken")
            he = HeadEnd(**data.model_dump())
            s.add(he)
            s.flush()
            dummy = Concentrator(co_id=dummy_co_id(data.he_id), he_id=he.he_id, is_dummy=True,
                                 name=f"holding concentrator of head-end {he.he_id}")
            s.add(dummy)
            s.flush()
            s.add(ConcentratorComms(concentrator_id=dummy.id))
            return self._head_end_view(s, he)

    def get_head_end(self, he_id: int) -> dict[str, Any]:
        with self.db.session() as s:
            return self._head_end_view(s, self._head_end(s, he_id))

    def list_head_ends(self, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        with self.db.session() as s:
            total = s.exec(select(func.count()).select_from(HeadEnd)).one()
            rows = s.exec(select(HeadEnd).order_by(HeadEnd.he_id).limit(limit).offset(offset)).all()
            loads = device_counts(s)
            return [self._head_end_view(s, he, loads) for he in rows], total

    def update_head_end(self, he_id: int, patch: HeadEndPatch) -> dict[str, Any]:
        with self.db.session() as s:
            he = self._head_end(s, he_id)
            for key, value in patch.model_dump(exclude_unset=True).items():
                setattr(he, key, value)
            s.add(he)
            return self._head_end_view(s, he)

    @staticmethod
    def _head_end(s: Session, he_id: int) -> HeadEnd:
        he = s.get(HeadEnd, he_id)
        if he is None:
            raise NotFound.on("he_id", f"head-end {he_id} does not exist")
        return he

    @staticmethod
    def _head_end_view(s: Session, he: HeadEnd, loads: dict[int, int] | None = None) -> dict[str, Any]:
        loads = device_counts(s) if loads is None else loads
        view = he.model_dump(mode="json")
        view["devices"] = loads.get(he.he_id, 0)
        return view

    # types -------------------------------------------------------------------------------------
    def create_type(self, level: TypeLevel, data: DeviceTypeIn) -> dict[str, Any]:
        table = TYPE_TABLES[level]
        with self.db.session() as s:
            if s.get(table, data.type_id):
                raise Conflict.on("type_id", f"{level} type {data.type_id} already exists")
            fields = data.model_dump(exclude={"group_id"})
            if table is LogicalDeviceType:
                if data.group_id is None:
                    raise NotFound.on("group_id", "a logical device type needs a parameter group")
                if s.get(ParameterGroup, data.group_id) is None:
                    raise NotFound.on("group_id", f"parameter group {data.group_id} does not exist")
                fields["group_id"] = data.group_id
            row = table(**fields)
            s.add(row)
            return row.model_dump(mode="json")

    def list_types(self, level: TypeLevel, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        table = TYPE_TABLES[level]
        with self.db.session() as s:
            total = s.exec(select(func.count()).select_from(table)).one()
            rows = s.exec(select(table).order_by(table.type_id).limit(limit).offset(offset)).all()
            return [r.model_dump(mode="json") for r in rows], total

    def get_type(self, level: TypeLevel, type_id: int) -> dict[str, Any]:
        with self.db.session() as s:
            row = s.get(TYPE_TABLES[level], type_id)
            if row is None:
                raise NotFound.on("type_id", f"{level} type {type_id} does not exist")
            return row.model_dump(mode="json")

    # parameter groups --------------------------------------------------------------------------
    def create_parameter_group(self, data: ParameterGroupIn) -> dict[str, Any]:
        subs = [item.sub_number for item in data.items]
        if len(subs) != len(set(subs)):
            raise Conflict.on("items", "sub numbers must be unique within a group")
        with self.db.session() as s:
            if s.get(ParameterGroup, data.group_id):
                raise Conflict.on("group_id", f"parameter group {data.group_id} already exists")
            s.add(ParameterGroup(group_id=data.group_id, name=data.name, description=data.description))
            s.flush()
            for item in data.items:
                s.add(ParameterGroupItem(group_id=data.group_id, **item.model_dump()))
            s.flush()
            return self._group_view(s, data.group_id)

    def get_parameter_group(self, group_id: int) -> dict[str, Any]:
        with self.db.session() as s:
            return self._group_view(s, group_id)

    def list_parameter_groups(self, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        with self.db.session() as s:
            total = s.exec(select(func.count()).select_from(ParameterGroup)).one()
            ids = s.exec(select(ParameterGroup.group_id).order_by(ParameterGroup.group_id)
                         .limit(limit).offset(offset)).all()
            return [self._group_view(s, gid) for gid in ids], total

    def put_parameter_item(self, group_id: int, item: ParameterItemIn) -> dict[str, Any]:
        """Add or replace one register of a group (a new register is a row, not a code change)."""
        with self.db.session() as s:
            self._group_view(s, group_id)
            row = s.get(ParameterGroupItem, (group_id, item.sub_number))
            if row is None:
                row = ParameterGroupItem(group_id=group_id, **item.model_dump())
            else:
                for key, value in item.model_dump().items():
                    setattr(row, key, value)
            s.add(row)
            s.flush()
            return self._group_view(s, group_id)

    @staticmethod
    def _group_view(s: Session, group_id: int) -> dict[str, Any]:
        group = s.get(ParameterGroup, group_id)
        if group is None:
            raise NotFound.on("group_id", f"parameter group {group_id} does not exist")
        items = s.exec(select(ParameterGroupItem).where(ParameterGroupItem.group_id == group_id)
                       .order_by(ParameterGroupItem.sub_number)).all()
        view = group.model_dump(mode="json")
        view["items"] = [i.model_dump(mode="json", exclude={"group_id"}) for i in items]
        return view


def device_counts(s: Session) -> dict[int, int]:
    """Live (not disposed) physical devices per head-end: the load that assignment balances."""
    rows = s.exec(
        select(Concentrator.he_id, func.count(PhysicalDevice.id))
        .join(PhysicalDevice, PhysicalDevice.concentrator_id == Concentrator.id)
        .where(PhysicalDevice.deleted == False)  # noqa: E712
        .group_by(Concentrator.he_id)
    ).all()
    return {he_id: count for he_id, count in rows}


def touch(row: Any) -> None:
    row.updated_at = utcnow()
