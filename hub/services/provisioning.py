"""The comms settings of concentrators and physical devices after registration: provisioning
progress (seed §2.3.2 "設定": DHCP, provisioning, key exchange) and collection stop / start
reservations (§2.3.6, §2.3.7).

Use state only moves forwards: N (new) -> C (configured: DHCP and provisioning done) -> A (active:
a common key exchanged). The only way back to N is disposal, which wipes the comms row.

A reservation takes effect at its time; :func:`is_collecting` is the one rule the collection code
uses to decide whether a device is read at a given moment. Gaps it leaves are refilled later by
re-collection, within the meter's retention.
"""

from __future__ import annotations

from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Literal, Protocol

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, IPvAnyAddress, model_validator

from hub.db import Database, utcnow
from hub.model import Concentrator, ConcentratorComms, PhysicalDevice, PhysicalDeviceComms
from hub.services.devices import comms_view
from hub.services.errors import Conflict, NotFound

DeviceKind = Literal["physical-device", "concentrator"]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ProvisioningUpdate(_Input):
    """What provisioning reports: DHCP done (with the leased address), provisioning done, keys.
    Steps cannot be undone, and no field may be set to null."""

    dhcp_done: bool | None = None
    provisioned: bool | None = None
    ip: IPvAnyAddress | None = None
    port: int | None = Field(None, ge=1, le=65535)
    common_key: str | None = Field(None, min_length=1, max_length=256, description="write-only")
    session_key: str | None = Field(None, min_length=1, max_length=256, description="write-only")

    @model_validator(mode="after")
    def _no_nulls(self) -> ProvisioningUpdate:
        nulls = sorted(name for name in self.model_fields_set if getattr(self, name) is None)
        if nulls:
            raise ValueError(f"{', '.join(nulls)}: provisioning values cannot be cleared (null)")
        return self


class CollectionReservation(_Input):
    """Reserved times at which scheduled collection stops and (re)starts; null clears one.

    ``stop_at`` before ``start_at`` is a pause (stopped in between); ``start_at`` before ``stop_at``
    is a window (collected only in between). The two may not be equal.
    """

    start_at: AwareDatetime | None = Field(None, description="collection (re)starts at this time")
    stop_at: AwareDatetime | None = Field(None, description="collection stops at this time")

    @model_validator(mode="after")
    def _distinct(self) -> CollectionReservation:
        if self.start_at is not None and self.stop_at is not None and self.start_at == self.stop_at:
            raise ValueError("start_at and stop_at must differ")
        return self


class _Reservations(Protocol):
    collection_start_at: datetime | None
    collection_stop_at: datetime | None


def is_collecting(comms: _Reservations, at: datetime) -> bool:
    """Whether the reservations on ``comms`` let scheduled collection read the device at ``at``.

    Collection stops from ``collection_stop_at`` and resumes from ``collection_start_at``. The
    later of the two that has come decides; before either has come, the device is in the state
    opposite to the first one (a pending start means it is stopped until then). Equal times count
    as a stop. Only the reservations are judged here: use state and config state are the poll
    target's other conditions.
    """
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("at must carry a time zone")
    start, stop = comms.collection_start_at, comms.collection_stop_at
    if start is None and stop is None:
        return True
    if start is None or (stop is not None and start == stop):
        return at < stop  # type: ignore[operator]
    if stop is None:
        return at >= start
    if stop < start:  # a pause
        return not stop <= at < start
    return start <= at < stop  # a window


def next_use_state(state: str, *, dhcp_done: bool, provisioned: bool, common_key_set: bool) -> str:
    """N -> C once DHCP and provisioning are done, C -> A once a common key is set; never back."""
    if state == "N" and dhcp_done and provisioned:
        state = "C"
    if state == "C" and common_key_set:
        state = "A"
    return state


class ProvisioningService:
    def __init__(self, db: Database) -> None:
        self.db = db

    def update(self, kind: DeviceKind, key: int, data: ProvisioningUpdate) -> dict[str, Any]:
        """Record provisioning progress; 409 when a done step would be undone."""
        with self.db.session() as s:
            comms = _comms(s, kind, key)
            undone = [step for step in ("dhcp_done", "provisioned")
                      if getattr(data, step) is False and getattr(comms, step)]
            if undone:
                raise Conflict.on(undone[0], f"{undone[0]} is already true; provisioning steps are not undone "
                                             "(dispose of the device to start over)")
            now = utcnow()
            for name, value in data.model_dump(exclude_unset=True).items():
                setattr(comms, name, str(value) if isinstance(value, IPv4Address | IPv6Address) else value)
            if "common_key" in data.model_fields_set or "session_key" in data.model_fields_set:
                comms.key_updated_at = now
            comms.use_state = next_use_state(comms.use_state, dhcp_done=comms.dhcp_done,
                                             provisioned=comms.provisioned,
                                             common_key_set=comms.common_key is not None)
            comms.updated_at = now
            s.add(comms)
            s.flush()
            return comms_view(comms)

    def reserve_collection(self, kind: DeviceKind, key: int, data: CollectionReservation) -> dict[str, Any]:
        """Replace the collection stop / start reservations of one device."""
        with self.db.session() as s:
            comms = _comms(s, kind, key)
            comms.collection_start_at, comms.collection_stop_at = _utc(data.start_at), _utc(data.stop_at)
            comms.updated_at = utcnow()
            s.add(comms)
            s.flush()
            return comms_view(comms)


def _utc(moment: datetime | None) -> datetime | None:
    """Answer in UTC, as the store keeps it, whatever offset the caller wrote."""
    return None if moment is None else moment.astimezone(UTC)


def _comms(s: Any, kind: DeviceKind, key: int) -> PhysicalDeviceComms | ConcentratorComms:
    """The comms row of a live device: 404 unknown, 409 disposed or a head-end's holding concentrator."""
    if kind == "physical-device":
        pd = s.get(PhysicalDevice, key)
        if pd is None:
            raise NotFound.on("id", f"physical device {key} does not exist")
        if pd.deleted:
            raise Conflict.on("id", f"physical device {key} is disposed")
        comms: Any = s.get(PhysicalDeviceComms, key)
    else:
        co = s.get(Concentrator, key)
        if co is None:
            raise NotFound.on("id", f"concentrator {key} does not exist")
        if co.deleted:
            raise Conflict.on("id", f"concentrator {key} is disposed")
        if co.is_dummy:
            raise Conflict.on("id", f"concentrator {key} only holds head-end {co.he_id}'s uninstalled devices; "
                                    "it is never provisioned or collected")
        comms = s.get(ConcentratorComms, key)
    if comms is None:
        raise Conflict.on("id", f"{kind} {key} has no comms settings")
    return comms
