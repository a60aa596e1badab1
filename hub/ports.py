"""Ports: the interfaces the core calls and adapters implement.

``HeadEnd`` is how the core reaches meters: reads, relay and contract-capacity control,
reservations, reboots and live status. Implementations live in ``adapters/headend`` (the simulator,
MQTT push units, ...). The core only ever sees the plain types defined here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

SLOT_SECONDS = 30 * 60  # the seed's collection grid: one snapshot every 30 minutes


@dataclass(frozen=True, slots=True)
class MeterRef:
    """A logical device as a head-end addresses it.

    ``device_key`` is the physical device's table key: a replaced meter is a new physical device
    under the same ``ld_id``, so its registers start again from a small value.
    """

    ld_id: str
    device_key: int
    ld_address: int = 2
    he_id: int = 0


@dataclass(frozen=True, slots=True)
class RegisterRead:
    """One register value of one logical device at one snapshot time (aware UTC)."""

    ld_id: str
    sub_number: int
    measured_time: datetime
    value: float


@dataclass(frozen=True, slots=True)
class LiveStatus:
    ld_id: str
    load_amps: float
    relay_on: bool
    contract_amps: int
    clock: datetime
    breaker_tripped: bool = False


class HeadEndError(Exception):
    """Base of the typed failures a head-end reports."""

    code = "head-end-error"


class HeadEndTimeout(HeadEndError):
    code = "timeout"


class HeadEndUnreachable(HeadEndError):
    """The head-end (or the meter behind it) cannot be reached at all."""

    code = "unreachable"


class HeadEndRejected(HeadEndError):
    """The meter or head-end refused the command (for example a capacity below the live load)."""

    code = "rejected"


class UnknownDevice(HeadEndError):
    code = "unknown-device"


@dataclass
class ReadResult:
    """What a read returned: the values, and per metering point the reason it returned none."""

    reads: list[RegisterRead] = field(default_factory=list)
    failures: dict[str, HeadEndError] = field(default_factory=dict)


@runtime_checkable
class HeadEnd(Protocol):
    """One head-end system. Every method is a coroutine; batch methods never raise for a single
    meter's failure (it is reported in ``ReadResult.failures``), only for the head-end as a whole."""

    he_id: int

    async def read_registers(self, meters: Sequence[MeterRef], at: datetime,
                             sub_numbers: Sequence[int]) -> ReadResult:
        """The registers' values at snapshot time ``at`` (on the 30-minute grid)."""

    async def read_history(self, meters: Sequence[MeterRef], start: datetime, end: datetime,
                           sub_numbers: Sequence[int]) -> ReadResult:
        """Stored snapshots in [start, end] from the meters' memory (44-60 days deep)."""

    async def set_relay(self, meter: MeterRef, on: bool) -> LiveStatus:
        """Supply on (relay closed) or off."""

    async def set_contract(self, meter: MeterRef, amps: int) -> LiveStatus:
        """Change the contract capacity now."""

    async def reserve_contract(self, meter: MeterRef, amps: int, start: datetime, end: datetime) -> str:
        """Change the contract capacity to ``amps`` at ``start`` and restore it at ``end``; returns
        the head-end's reservation ID."""

    async def cancel_reservation(self, meter: MeterRef, reservation_id: str) -> None:
        """Release a reservation; if it is in force the capacity is restored at once."""

    async def reboot(self, meter: MeterRef) -> None:
        """Restart the meter's comms unit."""

    async def status(self, meter: MeterRef) -> LiveStatus:
        """Live read: current load, relay, contract capacity, clock."""
