"""Poll targets of a head-end (the seed's views HE_POLL_TARGET_*) and the registers they carry.

A logical device is a poll target at a moment when it is installed (LD_ID set, not deleted), its
physical device is live with config state 1 and comms use state C or A, and the collection
reservations of both its physical device and its concentrator let collection run then
(:func:`hub.services.provisioning.is_collecting`). The registers read are the items of its logical
device type's parameter group; cumulative registers get increments, the others only values.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import false, select
from sqlalchemy.orm import Session

from hub.model import (
    Concentrator,
    ConcentratorComms,
    LogicalDevice,
    LogicalDeviceType,
    ParameterGroupItem,
    PhysicalDevice,
    PhysicalDeviceComms,
)
from hub.ports import MeterRef
from hub.services.provisioning import is_collecting

POLLED_USE_STATES = ("C", "A")


@dataclass(frozen=True, slots=True)
class Register:
    sub_number: int
    cumulative: bool


@dataclass(frozen=True, slots=True)
class _Reservations:
    collection_start_at: datetime | None
    collection_stop_at: datetime | None


@dataclass(frozen=True, slots=True)
class Target:
    """A candidate poll target with what decides whether it is read at a given slot."""

    meter: MeterRef
    registers: tuple[Register, ...]
    device: _Reservations
    concentrator: _Reservations
    group_id: int = 0
    """The parameter group of its logical device type (ranges for diagnosis)."""

    @property
    def ld_id(self) -> str:
        return self.meter.ld_id

    @property
    def sub_numbers(self) -> tuple[int, ...]:
        return tuple(r.sub_number for r in self.registers)

    def collecting(self, at: datetime) -> bool:
        return is_collecting(self.device, at) and is_collecting(self.concentrator, at)


def register_groups(s: Session) -> dict[int, tuple[Register, ...]]:
    """Parameter group -> its registers, by sub number."""
    groups: dict[int, list[Register]] = {}
    for group_id, sub, kind in s.execute(select(ParameterGroupItem.group_id, ParameterGroupItem.sub_number,
                                                ParameterGroupItem.kind)
                                         .order_by(ParameterGroupItem.group_id, ParameterGroupItem.sub_number)):
        groups.setdefault(group_id, []).append(Register(sub, kind == "cumulative"))
    return {g: tuple(regs) for g, regs in groups.items()}


def candidate_targets(s: Session, he_id: int) -> list[Target]:
    """Every installed, pollable logical device under head-end ``he_id`` (reservations not yet
    judged: see :meth:`Target.collecting`), ordered by LD_ID. Types without registers are left out."""
    groups = register_groups(s)
    ld, pd, pdc, co, coc = LogicalDevice, PhysicalDevice, PhysicalDeviceComms, Concentrator, ConcentratorComms
    rows = s.execute(
        select(ld.ld_id, ld.physical_device_id, ld.ld_address, LogicalDeviceType.group_id,
               pdc.collection_start_at, pdc.collection_stop_at, coc.collection_start_at, coc.collection_stop_at)
        .join(pd, pd.id == ld.physical_device_id)
        .join(pdc, pdc.physical_device_id == pd.id)
        .join(co, co.id == pd.concentrator_id)
        .outerjoin(coc, coc.concentrator_id == co.id)
        .join(LogicalDeviceType, LogicalDeviceType.type_id == ld.type_id)
        .where(co.he_id == he_id, ld.ld_id.is_not(None), ld.deleted == false(), pd.deleted == false(),
               pd.config_state == 1, pdc.use_state.in_(POLLED_USE_STATES))
        .order_by(ld.ld_id))
    targets = []
    for ld_id, device_key, address, group_id, pd_start, pd_stop, co_start, co_stop in rows:
        registers = groups.get(group_id)
        if registers:
            targets.append(Target(MeterRef(ld_id, device_key, address, he_id), registers,
                                  _Reservations(pd_start, pd_stop), _Reservations(co_start, co_stop), group_id))
    return targets


def collecting_at(targets: Iterable[Target], at: datetime) -> list[Target]:
    """The poll targets at ``at``."""
    return [t for t in targets if t.collecting(at)]


def registers_of(s: Session, ld_ids: Iterable[str]) -> dict[str, tuple[Register, ...]]:
    """The registers of installed logical devices by LD_ID (for pushed reads); unknown LD_IDs are absent."""
    groups = register_groups(s)
    wanted = sorted(set(ld_ids))
    out: dict[str, tuple[Register, ...]] = {}
    for start in range(0, len(wanted), 900):
        chunk = wanted[start:start + 900]
        for ld_id, group_id in s.execute(
                select(LogicalDevice.ld_id, LogicalDeviceType.group_id)
                .join(LogicalDeviceType, LogicalDeviceType.type_id == LogicalDevice.type_id)
                .where(LogicalDevice.ld_id.in_(chunk), LogicalDevice.deleted == false())):
            if groups.get(group_id):
                out[ld_id] = groups[group_id]
    return out
