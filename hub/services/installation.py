"""A physical device's life in the field, after registration (seed §2.3.2, §2.3.5, §2.3.6, §2.3.11).

- Installation registration (table 2.3.2(3)): the designer's PD_ID, the PD name, the concentrator,
  and for each metering point its LD_ID, cluster, name and contract amps. Usage is produced for an
  LD only once it has an LD_ID.
- Installation clear: back to stock (no PD_ID or LD_IDs, under the head-end's holding concentrator).
  Meter replacement is a clear of the old unit and an installation of the new one with the same
  LD_IDs, so the metering point and its history carry over. With ``cancel`` the contract ends too:
  see :mod:`hub.services.cancellation`.
- Adding a logical device to a live physical device (table 2.3.11(2)).
- Disposal (§2.3.5): delete flags; MAC and serial discarded so provisioning ignores the unit and
  the numbers can be reused; comms secrets wiped. Certificate revocation stays a separate call.

Each operation is one transaction: on any error nothing changes.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import false, select, true
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hub.db import Database, utcnow
from hub.model import (
    Cluster,
    Concentrator,
    HeadEnd,
    LogicalDevice,
    LogicalDeviceType,
    PhysicalDevice,
    PhysicalDeviceComms,
)
from hub.services.admin import device_counts
from hub.services.cancellation import cancel_services
from hub.services.devices import logical_device_view, physical_device_view
from hub.services.errors import Conflict, FieldError, InvalidInput, NotFound
from hub.services.validation import BusinessKey, DeviceId


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class LogicalDeviceInstallation(_Input):
    """Installation values of one metering point; omitted optional values keep what is stored."""

    ld_address: int | None = Field(None, ge=1, le=65535,
                                   description="which logical device of the unit; default: the first (lowest address)")
    ld_id: BusinessKey = Field(description="LD_ID: the metering-point key shared with billing")
    cluster_id: BusinessKey | None = None
    name: str | None = Field(None, max_length=128)
    contract_amps: int | None = Field(None, ge=0, le=10_000)


class Installation(_Input):
    """Installation registration of a physical device (seed table 2.3.2(3))."""

    pd_id: DeviceId = Field(description="PD_ID: the designer's value (15-character ASCII)")
    name: str | None = Field(None, max_length=128, description="physical device name; omitted keeps the stored one")
    co_id: DeviceId | None = Field(None, description="concentrator CO_ID; omitted keeps the current one")
    logical_devices: list[LogicalDeviceInstallation] = Field(min_length=1, max_length=1000)

    @model_validator(mode="after")
    def _distinct(self) -> Installation:
        if sum(1 for ld in self.logical_devices if ld.ld_address is None) > 1:
            raise ValueError("only one logical device may omit ld_address (it means the first one)")
        addresses = [ld.ld_address for ld in self.logical_devices if ld.ld_address is not None]
        if len(addresses) != len(set(addresses)):
            raise ValueError("each ld_address may appear once")
        ld_ids = [ld.ld_id for ld in self.logical_devices]
        if len(ld_ids) != len(set(ld_ids)):
            raise ValueError("each ld_id may appear once")
        return self


class LogicalDeviceAddition(_Input):
    """A logical device added to a live physical device (seed table 2.3.11(2))."""

    type_id: int = Field(description="logical device type (required, must exist)")
    ld_id: BusinessKey | None = Field(None, description="LD_ID; without it the LD produces no usage yet")
    cluster_id: BusinessKey | None = None
    name: str | None = Field(None, max_length=128)
    ld_address: int = Field(2, ge=1, le=65535, description="COSEM logical device address (the channel)")
    contract_amps: int = Field(0, ge=0, le=10_000)
    relay_state: Literal[0, 1] = 1


class ClearOptions(_Input):
    cancel: bool = Field(False, description="true: the contract ends too; the customer-side records of the "
                                            "cleared LD_IDs are logically deleted")


class InstallationService:
    def __init__(self, db: Database) -> None:
        self.db = db

    def install(self, key: int, data: Installation) -> dict[str, Any]:
        """Register the installation of physical device ``key``: 404 unknown, 409 disposed or an ID
        held by another device (or an LD installed under another LD_ID), 422 unknown references."""
        with self.db.session() as s:
            pd = _live_device(s, key)
            lds = _logical_devices(s, key)
            by_address = {ld.ld_address: ld for ld in lds}
            invalid: list[FieldError] = []
            conflicts: list[FieldError] = []
            targets: list[tuple[LogicalDevice, LogicalDeviceInstallation]] = []
            for i, item in enumerate(data.logical_devices):
                where = f"logical_devices.{i}"
                ld = by_address.get(item.ld_address) if item.ld_address is not None else (lds[0] if lds else None)
                if ld is None:
                    invalid.append(FieldError(f"{where}.ld_address", f"physical device {key} has no logical "
                                              f"device at address {item.ld_address}"))
                    continue
                if any(ld is other for other, _ in targets):
                    invalid.append(FieldError(f"{where}.ld_address", f"logical device at address {ld.ld_address} "
                                              "is named twice"))
                    continue
                if ld.ld_id is not None and ld.ld_id != item.ld_id:
                    conflicts.append(FieldError(f"{where}.ld_id", f"logical device at address {ld.ld_address} is "
                                                f"installed as {ld.ld_id}; clear its installation first"))
                if item.cluster_id is not None and s.get(Cluster, item.cluster_id) is None:
                    invalid.append(FieldError(f"{where}.cluster_id", f"unknown cluster {item.cluster_id}"))
                targets.append((ld, item))
            co = s.get(Concentrator, pd.concentrator_id)
            if data.co_id is not None and data.co_id != (co.co_id if co else None):
                co = s.scalar(select(Concentrator).where(Concentrator.co_id == data.co_id))
                if co is None or co.deleted:
                    invalid.append(FieldError("co_id", f"unknown concentrator {data.co_id}"))
                elif co.is_dummy:
                    invalid.append(FieldError("co_id", f"{data.co_id} holds head-end {co.he_id}'s uninstalled "
                                                       "devices; install on a real concentrator"))
            if invalid:
                raise InvalidInput(invalid[0].message, invalid)
            assert co is not None
            holder = s.scalar(select(PhysicalDevice.id).where(PhysicalDevice.pd_id == data.pd_id,
                                                              PhysicalDevice.id != key))
            if holder is not None:
                conflicts.append(FieldError("pd_id", f"pd_id {data.pd_id} is used by physical device {holder}"))
            for i, (ld, item) in enumerate(targets):
                other = s.scalar(select(LogicalDevice.physical_device_id).where(
                    LogicalDevice.ld_id == item.ld_id, LogicalDevice.id != ld.id))
                if other is not None:
                    conflicts.append(FieldError(f"logical_devices.{i}.ld_id",
                                                f"ld_id {item.ld_id} is used by physical device {other}"))
            if co.id != pd.concentrator_id:
                conflicts += _capacity_problems(s, pd, co)
            if conflicts:
                raise Conflict(conflicts[0].message, conflicts)

            now = utcnow()
            pd.pd_id, pd.concentrator_id, pd.updated_at = data.pd_id, co.id, now
            pd.installed_at = pd.installed_at or now
            if data.name is not None:
                pd.name = data.name
            for ld, item in targets:
                if ld.ld_id != item.ld_id:
                    ld.ld_id, ld.installed_at = item.ld_id, now
                ld.installed_at = ld.installed_at or now
                for attr in ("cluster_id", "name", "contract_amps"):
                    value = getattr(item, attr)
                    if value is not None:
                        setattr(ld, attr, value)
                ld.updated_at = now
            _flush(s)
            return physical_device_view(s, key)

    def clear(self, key: int, *, cancel: bool = False) -> dict[str, Any]:
        """Clear the installation of physical device ``key`` and all its logical devices."""
        with self.db.session() as s:
            pd = _live_device(s, key)
            lds = _logical_devices(s, key)
            ld_ids = [ld.ld_id for ld in lds if ld.ld_id is not None]
            if pd.pd_id is None and not ld_ids:
                raise Conflict.on("id", f"physical device {key} is not installed")
            now = utcnow()
            co = s.get(Concentrator, pd.concentrator_id)
            assert co is not None
            pd.pd_id, pd.name, pd.installed_at, pd.updated_at = None, None, None, now
            pd.concentrator_id = _holding(s, co.he_id).id
            for ld in lds:
                _reset(ld, now)
            _flush(s)
            cancelled = cancel_services(s, ld_ids, now) if cancel else None
            return {"physical_device": physical_device_view(s, key), "cancelled": cancelled}

    def clear_logical(self, ld_id: str, *, cancel: bool = False) -> dict[str, Any]:
        """Clear one metering point (one service of a multi-meter or a controller channel); the
        physical device stays installed."""
        with self.db.session() as s:
            ld = s.scalar(select(LogicalDevice).where(LogicalDevice.ld_id == ld_id))
            if ld is None:
                raise NotFound.on("ld_id", f"no logical device is installed as {ld_id}")
            pd = _live_device(s, ld.physical_device_id)
            now = utcnow()
            _reset(ld, now)
            pd.updated_at = now
            _flush(s)
            cancelled = cancel_services(s, [ld_id], now) if cancel else None
            return {"physical_device": physical_device_view(s, pd.id), "cancelled": cancelled}

    def add_logical_device(self, key: int, data: LogicalDeviceAddition) -> dict[str, Any]:
        """Add a logical device to physical device ``key``: 409 disposed, address or LD_ID taken;
        422 unknown type or cluster."""
        with self.db.session() as s:
            pd = _live_device(s, key)
            invalid = []
            if s.get(LogicalDeviceType, data.type_id) is None:
                invalid.append(FieldError("type_id", f"unknown logical device type {data.type_id}"))
            if data.cluster_id is not None and s.get(Cluster, data.cluster_id) is None:
                invalid.append(FieldError("cluster_id", f"unknown cluster {data.cluster_id}"))
            if invalid:
                raise InvalidInput(invalid[0].message, invalid)
            conflicts = []
            if s.scalar(select(LogicalDevice.id).where(LogicalDevice.physical_device_id == key,
                                                       LogicalDevice.ld_address == data.ld_address)) is not None:
                conflicts.append(FieldError("ld_address", f"physical device {key} already has a logical device "
                                                          f"at address {data.ld_address}"))
            if data.ld_id is not None:
                other = s.scalar(select(LogicalDevice.physical_device_id).where(LogicalDevice.ld_id == data.ld_id))
                if other is not None:
                    conflicts.append(FieldError("ld_id", f"ld_id {data.ld_id} is used by physical device {other}"))
            if conflicts:
                raise Conflict(conflicts[0].message, conflicts)
            now = utcnow()
            ld = LogicalDevice(physical_device_id=key, installed_at=now if data.ld_id else None,
                               created_at=now, updated_at=now, **data.model_dump())
            s.add(ld)
            _flush(s)
            return logical_device_view(ld, pd, s.get(Concentrator, pd.concentrator_id))

    def dispose(self, key: int) -> dict[str, Any]:
        """Dispose of physical device ``key``; an installed device must be cleared first."""
        with self.db.session() as s:
            pd = _device(s, key)
            if pd.deleted:
                raise Conflict.on("id", f"physical device {key} is already disposed")
            lds = s.scalars(select(LogicalDevice).where(LogicalDevice.physical_device_id == key)).all()
            installed = [ld.ld_id for ld in lds if ld.ld_id is not None and not ld.deleted]
            if pd.pd_id is not None or installed:
                ids = ", ".join(([f"PD_ID {pd.pd_id}"] if pd.pd_id else []) + [f"LD_ID {i}" for i in installed])
                raise Conflict.on("id", f"physical device {key} is installed ({ids}); clear the installation first")
            now = utcnow()
            pd.deleted, pd.deleted_at, pd.updated_at = True, now, now
            pd.mac, pd.serial, pd.config_state = None, None, 0
            for ld in lds:
                if not ld.deleted:
                    ld.deleted, ld.deleted_at, ld.updated_at = True, now, now
            comms = s.get(PhysicalDeviceComms, key)
            if comms is not None:
                _wipe(comms, now)
            _flush(s)
            return physical_device_view(s, key)


def _device(s: Session, key: int) -> PhysicalDevice:
    pd = s.get(PhysicalDevice, key)
    if pd is None:
        raise NotFound.on("id", f"physical device {key} does not exist")
    return pd


def _live_device(s: Session, key: int) -> PhysicalDevice:
    pd = _device(s, key)
    if pd.deleted:
        raise Conflict.on("id", f"physical device {key} is disposed")
    return pd


def _logical_devices(s: Session, key: int) -> list[LogicalDevice]:
    return list(s.scalars(select(LogicalDevice).where(LogicalDevice.physical_device_id == key,
                                                      LogicalDevice.deleted == false())
                          .order_by(LogicalDevice.ld_address)))


def _holding(s: Session, he_id: int) -> Concentrator:
    co = s.scalar(select(Concentrator).where(Concentrator.he_id == he_id, Concentrator.is_dummy == true(),
                                             Concentrator.deleted == false()))
    if co is None:
        raise Conflict.on("id", f"head-end {he_id} has no holding concentrator to take the device back")
    return co


def _capacity_problems(s: Session, pd: PhysicalDevice, target: Concentrator) -> list[FieldError]:
    """Moving to a concentrator on another head-end must keep that head-end within its capacity."""
    current = s.get(Concentrator, pd.concentrator_id)
    if current is not None and current.he_id == target.he_id:
        return []
    he = s.get(HeadEnd, target.he_id)
    load = device_counts(s).get(target.he_id, 0)
    if he is not None and load >= he.capacity:
        return [FieldError("co_id", f"head-end {he.he_id} of concentrator {target.co_id} is full "
                                    f"({load} of {he.capacity} devices)")]
    return []


def _reset(ld: LogicalDevice, now: Any) -> None:
    ld.ld_id, ld.cluster_id, ld.name, ld.contract_amps, ld.installed_at = None, None, None, 0, None
    ld.updated_at = now


def _wipe(comms: PhysicalDeviceComms, now: Any) -> None:
    """A disposed unit keeps only its certificate serial (for the separate revocation)."""
    comms.ip = comms.port = comms.password = comms.common_key = comms.session_key = None
    comms.key_updated_at = comms.collection_start_at = comms.collection_stop_at = None
    comms.dhcp_done = comms.provisioned = False
    comms.use_state, comms.updated_at = "N", now


def _flush(s: Session) -> None:
    """Flush, turning a unique key taken by a concurrent writer into a 409."""
    try:
        s.flush()
    except IntegrityError:
        raise Conflict("a PD_ID, LD_ID or logical device address was taken concurrently; retry") from None
