"""Concentrators: registration from asset management (seed table 2.3.2(4)), installation (table
2.3.2(5): the designed CO_ID and HEID) and reads.

A concentrator and its comms row are written in one transaction. Devices point at their
concentrator, never at a head-end, so installing a concentrator on another head-end moves every
device under it with one row change. Each head-end's holding concentrator (``is_dummy``) belongs
to the head-end itself: it is neither installed nor registered through here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import false, func, select, true
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hub.config import RegistrySection
from hub.db import Database, utcnow
from hub.model import Concentrator, ConcentratorComms, ConcentratorType, HeadEnd, PhysicalDevice
from hub.services.admin import device_counts
from hub.services.assignment import strategy
from hub.services.devices import comms_view
from hub.services.errors import Conflict, FieldError, InvalidInput, NotFound
from hub.services.validation import DeviceId, MacAddress


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ConcentratorRegistration(_Input):
    """One concentrator as asset management registers it; blank values take the seed's defaults."""

    type_id: int = Field(description="concentrator type (required, must exist)")
    co_id: DeviceId | None = Field(None, description="CO_ID, usually set at installation")
    he_id: int | None = Field(None, description="head-end; default: chosen by the assignment strategy")
    serial: str | None = Field(None, min_length=1, max_length=64)
    mac: MacAddress | None = None
    name: str | None = Field(None, max_length=128)
    config_state: Literal[0, 1] = Field(0, description="0 do not poll, 1 poll")
    ip: str | None = Field(None, max_length=45)
    port: int | None = Field(None, ge=1, le=65535)
    cert_serial: str | None = Field(None, max_length=64)
    password: str | None = Field(None, max_length=128)


class ConcentratorInstallation(_Input):
    """The designer's values for an installed concentrator."""

    co_id: DeviceId = Field(description="CO_ID (15-character ASCII)")
    he_id: int = Field(description="the head-end that serves it; its devices follow")


class ConcentratorFilter(_Input):
    he_id: int | None = None
    co_id: DeviceId | None = None
    dummy: bool | None = Field(None, description="true: only head-ends' holding concentrators; false: only real ones")
    deleted: bool = Field(False, description="true lists disposed concentrators instead of live ones")


class ConcentratorService:
    def __init__(self, db: Database, settings: RegistrySection) -> None:
        self.db = db
        self.settings = settings

    def register(self, data: ConcentratorRegistration) -> dict[str, Any]:
        """Store a concentrator with its comms row, or nothing: 422 for unknown references, 409 for
        a CO_ID, MAC or serial already in use."""
        with self.db.session() as s:
            invalid = []
            if s.get(ConcentratorType, data.type_id) is None:
                invalid.append(FieldError("type_id", f"unknown concentrator type {data.type_id}"))
            if data.he_id is not None and s.get(HeadEnd, data.he_id) is None:
                invalid.append(FieldError("he_id", f"unknown head-end {data.he_id}"))
            if invalid:
                raise InvalidInput(invalid[0].message, invalid)
            _refuse_taken(s, data.co_id, data.mac, data.serial)
            he_id = data.he_id if data.he_id is not None else self._assign(s)
            now = utcnow()
            co = Concentrator(co_id=data.co_id, he_id=he_id, type_id=data.type_id, serial=data.serial, mac=data.mac,
                              name=data.name, config_state=data.config_state, created_at=now, updated_at=now)
            s.add(co)
            _flush(s)
            comms = ConcentratorComms(concentrator_id=co.id, ip=data.ip, port=data.port, cert_serial=data.cert_serial,
                                      password=data.password, use_state="N", updated_at=now)
            s.add(comms)
            _flush(s)
            return _view(co, comms, 0)

    def install(self, key: int, data: ConcentratorInstallation) -> dict[str, Any]:
        """Set the designed CO_ID and HEID. Moving to another head-end must leave it within capacity."""
        with self.db.session() as s:
            co = _concentrator(s, key)
            if co.is_dummy:
                raise Conflict.on("id", f"concentrator {key} holds head-end {co.he_id}'s uninstalled devices; "
                                        "it cannot be installed")
            if co.deleted:
                raise Conflict.on("id", f"concentrator {key} is disposed")
            he = s.get(HeadEnd, data.he_id)
            if he is None:
                raise InvalidInput.on("he_id", f"unknown head-end {data.he_id}")
            if data.co_id != co.co_id:
                _refuse_taken(s, data.co_id, None, None)
            devices = _device_counts(s, [key]).get(key, 0)
            if data.he_id != co.he_id and devices:
                load = device_counts(s).get(data.he_id, 0)
                if load + devices > he.capacity:
                    raise Conflict.on("he_id", f"head-end {data.he_id} holds {load} of {he.capacity} devices; "
                                               f"the {devices} under this concentrator do not fit")
            co.co_id, co.he_id, co.updated_at = data.co_id, data.he_id, utcnow()
            s.add(co)
            _flush(s)
            return _view(co, s.get(ConcentratorComms, key), devices)

    def get(self, key: int) -> dict[str, Any]:
        with self.db.session() as s:
            co = _concentrator(s, key)
            return _view(co, s.get(ConcentratorComms, key), _device_counts(s, [key]).get(key, 0))

    def list_concentrators(self, f: ConcentratorFilter, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        conds = [Concentrator.deleted == (true() if f.deleted else false())]
        if f.he_id is not None:
            conds.append(Concentrator.he_id == f.he_id)
        if f.co_id is not None:
            conds.append(Concentrator.co_id == f.co_id)
        if f.dummy is not None:
            conds.append(Concentrator.is_dummy == (true() if f.dummy else false()))
        with self.db.session() as s:
            total = s.scalar(select(func.count(Concentrator.id)).where(*conds)) or 0
            rows = s.execute(select(Concentrator, ConcentratorComms)
                             .outerjoin(ConcentratorComms, ConcentratorComms.concentrator_id == Concentrator.id)
                             .where(*conds).order_by(Concentrator.id).limit(limit).offset(offset)).all()
            counts = _device_counts(s, [co.id for co, _ in rows])
            return [_view(co, comms, counts.get(co.id, 0)) for co, comms in rows], total

    def _assign(self, s: Session) -> int:
        capacities = {he: cap for he, cap in s.execute(select(HeadEnd.he_id, HeadEnd.capacity))}
        if not capacities:
            raise InvalidInput.on("he_id", "no head-end is registered")
        he_id = strategy(self.settings.assignment).choose(device_counts(s), capacities)
        if he_id is None:
            raise InvalidInput.on("he_id", "no head-end has capacity left")
        return he_id


def _concentrator(s: Session, key: int) -> Concentrator:
    co = s.get(Concentrator, key)
    if co is None:
        raise NotFound.on("id", f"concentrator {key} does not exist")
    return co


def _refuse_taken(s: Session, co_id: str | None, mac: str | None, serial: str | None) -> None:
    """409 for every key already held. A MAC is unique across concentrators and physical devices:
    provisioning finds a unit by it."""
    taken = []
    if co_id is not None:
        holder = s.scalar(select(Concentrator).where(Concentrator.co_id == co_id))
        if holder is not None:
            what = f"the holding concentrator of head-end {holder.he_id}" if holder.is_dummy else "another concentrator"
            taken.append(FieldError("co_id", f"co_id {co_id} is already registered ({what})"))
    if mac is not None and (s.scalar(select(Concentrator.id).where(Concentrator.mac == mac)) is not None
                            or s.scalar(select(PhysicalDevice.id).where(PhysicalDevice.mac == mac)) is not None):
        taken.append(FieldError("mac", f"mac {mac} is already registered"))
    if serial is not None and s.scalar(select(Concentrator.id).where(Concentrator.serial == serial)) is not None:
        taken.append(FieldError("serial", f"serial {serial} is already registered"))
    if taken:
        raise Conflict(taken[0].message, taken)


def _flush(s: Session) -> None:
    """Flush, turning a unique-key race lost to a concurrent writer into a 409."""
    try:
        s.flush()
    except IntegrityError:
        raise Conflict("a CO_ID, MAC or serial of this concentrator was registered concurrently") from None


def _device_counts(s: Session, keys: list[int]) -> dict[int, int]:
    """Live physical devices under each of these concentrators (one grouped query)."""
    if not keys:
        return {}
    rows = s.execute(select(PhysicalDevice.concentrator_id, func.count(PhysicalDevice.id))
                     .where(PhysicalDevice.concentrator_id.in_(keys), PhysicalDevice.deleted == false())
                     .group_by(PhysicalDevice.concentrator_id))
    return {key: count for key, count in rows}


def _view(co: Concentrator, comms: ConcentratorComms | None, devices: int) -> dict[str, Any]:
    view = co.model_dump(mode="json")
    view["comms"] = comms_view(comms) if comms else None
    view["devices"] = devices
    return view
