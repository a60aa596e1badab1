"""Meter controls (seed 2.3.8 to 2.3.10): relay off / on, contract-capacity change, live status and
comms-unit reboot of one metering point, each sent through its head-end at control priority and
recorded in the controls history (who, when, what, outcome).

The calls are synchronous, as in the seed: the answer carries the meter's live status after the
command, and may take seconds to tens of seconds. Lowering a contract capacity reads the live load
first and refuses when the load is above the new capacity (the breaker would trip at once and cut
the customer's supply) unless the caller forces it. The check is against the meter's live
contract, not the stored one, which lags when a reservation (meter ADR) is in force.

A control is written to the history before the command goes out and completed after, so an
attempt is never lost: ``done``, ``refused`` (the hub would not send it), ``failed`` (it did not
reach the meter) or ``unknown`` (the head-end timed out: it may have been carried out).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import func, select, update

from hub.db import Database, utcnow
from hub.headends import HeadEndAccess, HeadEnds
from hub.model import Concentrator, LogicalDevice, PhysicalDevice
from hub.model.controls import CONTROL_ACTIONS, CONTROL_OUTCOMES, ControlAction
from hub.ports import (
    HeadEndError,
    HeadEndRejected,
    HeadEndTimeout,
    HeadEndUnreachable,
    LiveStatus,
    MeterRef,
    UnknownDevice,
)
from hub.services.errors import Conflict, NotFound, ServiceError
from hub.services.validation import BusinessKey
from hub.throttle import Priority

log = logging.getLogger("mdmhub.controls")
RunBlocking = Callable[..., Awaitable[Any]]


# errors ----------------------------------------------------------------------------------------

class HeadEndFailure(ServiceError):
    """The head-end did not carry the control out; ``kind`` says how the edges should show it:
    ``timeout`` (the head-end did not answer in time), ``unavailable`` (unreachable, unknown
    device, broken adapter) or ``not-configured`` (the hub runs without head-end adapters)."""

    kind: str = "unavailable"
    code: str = "head-end-error"

    @classmethod
    def of(cls, kind: str, code: str, message: str) -> HeadEndFailure:
        e = cls(message)
        e.kind, e.code = kind, code
        return e


class ControlRejected(Conflict):
    """The meter or head-end refused the command."""

    code = "rejected"


class CapacityRefused(Conflict):
    """Lowering the contract below the live load was refused (the breaker would trip)."""

    def __init__(self, message: str, *, requested_amps: int, status: LiveStatus) -> None:
        super().__init__(message)
        self.requested_amps = requested_amps
        self.status = status


# inputs ----------------------------------------------------------------------------------------

class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    actor: str = Field("api", min_length=1, max_length=128, description="who asks (operator, system)")
    reason: str | None = Field(None, max_length=512, description="why, for the history")


class RelayIn(_Input):
    """Supply on (relay closed) or off."""

    state: Literal["on", "off"]


class ContractIn(_Input):
    """A new contract capacity; lowering below the live load is refused unless ``force``."""

    amps: int = Field(ge=1, le=1000, description="contract capacity in amperes")
    force: bool = Field(False, description="lower even if the live load is above the new capacity "
                                           "(the breaker trips and the supply is cut)")


class ControlIn(_Input):
    """Who asks for a reboot or a status read, and why."""


class ReservationIn(_Input):
    """A contract capacity for a window: the head-end sets it at ``start`` and restores the
    previous capacity at ``end`` (a window already begun takes effect at once)."""

    amps: int = Field(ge=1, le=1000, description="contract capacity in amperes during the window")
    start: AwareDatetime
    end: AwareDatetime

    @model_validator(mode="after")
    def _ordered(self) -> ReservationIn:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class ControlFilter(BaseModel):
    """Controls history filters (all must hold); newest first."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    ld_id: BusinessKey | None = None
    action: Literal[CONTROL_ACTIONS] | None = None  # type: ignore[valid-type]
    outcome: Literal[CONTROL_OUTCOMES] | None = None  # type: ignore[valid-type]
    job_id: int | None = Field(None, ge=1)
    actor: str | None = Field(None, max_length=128)


# targets ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ControlTarget:
    """A metering point as controls address it: the head-end's reference, and where it hangs."""

    meter: MeterRef
    pd_id: str | None
    concentrator: str | None
    """CO_ID of the concentrator, for its throttle; None for a head-end's holding concentrator,
    which is a bookkeeping place, not a network node."""

    @property
    def ld_id(self) -> str:
        return self.meter.ld_id

    @property
    def he_id(self) -> int:
        return self.meter.he_id


def control_target(s: Any, ld_id: str) -> ControlTarget:
    """The installed metering point ``ld_id`` (NotFound, or Conflict when disposed)."""
    row = s.execute(select(LogicalDevice.ld_id, LogicalDevice.physical_device_id, LogicalDevice.ld_address,
                           LogicalDevice.deleted, PhysicalDevice.pd_id, PhysicalDevice.deleted,
                           Concentrator.co_id, Concentrator.is_dummy, Concentrator.he_id)
                    .join(PhysicalDevice, PhysicalDevice.id == LogicalDevice.physical_device_id)
                    .join(Concentrator, Concentrator.id == PhysicalDevice.concentrator_id)
                    .where(LogicalDevice.ld_id == ld_id)).first()
    if row is None:
        raise NotFound.on("ld_id", f"logical device {ld_id} does not exist")
    ld, device_key, address, ld_deleted, pd_id, pd_deleted, co_id, dummy, he_id = row
    if ld_deleted or pd_deleted:
        raise Conflict.on("ld_id", f"logical device {ld_id} is disposed; it cannot be controlled")
    return ControlTarget(MeterRef(ld, device_key, address, he_id), pd_id, None if dummy else co_id)


def status_view(status: LiveStatus) -> dict[str, Any]:
    view = asdict(status)
    clock = status.clock.astimezone(UTC).isoformat()
    view["clock"] = clock[:-6] + "Z" if clock.endswith("+00:00") else clock  # as every stamp of the API
    return view


def head_end_failure(e: Exception, target: ControlTarget) -> ServiceError:
    """A typed head-end error as the service error the edges render."""
    where = f"head-end {target.he_id}, {target.ld_id}"
    if isinstance(e, HeadEndTimeout):
        return HeadEndFailure.of("timeout", e.code, f"{where}: no answer in time ({e}); the command may "
                                 "have been carried out: read the live status before trying again")
    if isinstance(e, HeadEndRejected):
        err = ControlRejected(f"{where}: the meter refused the command: {e}")
        return err
    if isinstance(e, UnknownDevice):
        return HeadEndFailure.of("unavailable", e.code, f"{where}: the head-end does not know this device: {e}")
    if isinstance(e, HeadEndUnreachable):
        return HeadEndFailure.of("unavailable", e.code, f"{where}: unreachable: {e}")
    code = e.code if isinstance(e, HeadEndError) else "adapter-error"
    return HeadEndFailure.of("unavailable", code, f"{where}: the head-end adapter failed: {e}")


def outcome_of(e: Exception) -> str:
    return "unknown" if isinstance(e, HeadEndTimeout) else "failed"


@dataclass
class ControlRecord:
    """A history row to write (one insert) for work done without a pending row (jobs)."""

    target: ControlTarget
    action: str
    outcome: str
    actor: str
    requested_at: datetime
    finished_at: datetime
    reason: str | None = None
    job_id: int | None = None
    error_code: str | None = None
    detail: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        t = self.target
        return {"ld_id": t.ld_id, "pd_id": t.pd_id, "he_id": t.he_id, "action": self.action, "params": self.params,
                "actor": self.actor, "reason": self.reason, "job_id": self.job_id, "outcome": self.outcome,
                "error_code": self.error_code, "detail": self.detail, "result": self.result,
                "requested_at": self.requested_at, "finished_at": self.finished_at}


def control_view(a: ControlAction) -> dict[str, Any]:
    view = a.model_dump(mode="json")
    return view


# the service -----------------------------------------------------------------------------------

class ControlService:
    def __init__(self, db: Database, head_ends: HeadEnds, run_blocking: RunBlocking,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.head_ends = head_ends
        self.clock = clock
        self._run = run_blocking

    # controls ----------------------------------------------------------------------------------

    async def relay(self, ld_id: str, data: RelayIn) -> dict[str, Any]:
        """Supply on or off; the control and the meter's live status after it."""
        on = data.state == "on"
        target = await self._run(self.target, ld_id)
        action = "relay-on" if on else "relay-off"
        control_id = await self._run(self._begin, target, action, {"state": data.state}, data)
        status = await self._send(control_id, target, "set_relay", on)
        return await self._run(self._done, control_id, status, relay=status.relay_on)

    async def contract(self, ld_id: str, data: ContractIn) -> dict[str, Any]:
        """Change the contract capacity now. When lowering (judged against the meter's live
        contract) and not forced, the live load is read first: above the new capacity, the change
        is refused (:class:`CapacityRefused`, recorded ``refused``)."""
        target = await self._run(self.target, ld_id)
        params = {"amps": data.amps, "force": data.force}
        control_id = await self._run(self._begin, target, "contract", params, data)
        if not data.force:
            live = await self._send(control_id, target, "status")
            if data.amps < live.contract_amps and live.load_amps > data.amps:
                message = (f"{ld_id}: the live load is {live.load_amps} A, above the requested "
                           f"{data.amps} A: lowering now would trip the breaker and cut the supply. "
                           "Ask the customer to reduce the load, or force the change")
                await self._run(self._finish, control_id, "refused", error_code="load-above-capacity",
                                detail=message, result={"live_status": status_view(live)})
                raise CapacityRefused(message, requested_amps=data.amps, status=live)
        status = await self._send(control_id, target, "set_contract", data.amps)
        return await self._run(self._done, control_id, status, contract=data.amps)

    async def status(self, ld_id: str, data: ControlIn | None = None) -> dict[str, Any]:
        """A live read through the head-end (load, relay, contract, clock), recorded as ``status``."""
        target = await self._run(self.target, ld_id)
        control_id = await self._run(self._begin, target, "status", {}, data or ControlIn())
        status = await self._send(control_id, target, "status")
        return await self._run(self._done, control_id, status)

    async def reboot(self, ld_id: str, data: ControlIn) -> dict[str, Any]:
        """Restart the comms unit of ``ld_id``'s meter (it is unreachable for a while after)."""
        target = await self._run(self.target, ld_id)
        control_id = await self._run(self._begin, target, "reboot", {}, data)
        await self._send(control_id, target, "reboot")
        return await self._run(self._done, control_id, None)

    async def reserve(self, ld_id: str, data: ReservationIn) -> dict[str, Any]:
        """Reserve a contract capacity over a window through the head-end (set at the start,
        restored at the end); recorded as ``reserve`` with the head-end's reservation ID."""
        target = await self._run(self.target, ld_id)
        params = {"amps": data.amps, "start": data.start.isoformat(), "end": data.end.isoformat()}
        control_id = await self._run(self._begin, target, "reserve", params, data)
        rid = await self._send(control_id, target, "reserve_contract", data.amps, data.start, data.end)
        view = await self._run(self._finish, control_id, "done", result={"reservation_id": rid})
        return {"control": view, "reservation_id": rid}

    async def release(self, reservation_id: str, data: ControlIn, ld_id: str | None = None) -> dict[str, Any]:
        """Cancel a reservation this hub made (found in the controls history, on ``ld_id`` when
        given); one in force restores the capacity at once. Recorded as ``release``."""
        found = await self._run(self.reservation_owner, reservation_id, ld_id)
        if found is None:
            raise NotFound.on("reservation_id", f"no contract reservation {reservation_id}"
                              + (f" on {ld_id}" if ld_id else ""))
        target = await self._run(self.target, found)
        control_id = await self._run(self._begin, target, "release", {"reservation_id": reservation_id}, data)
        await self._send(control_id, target, "cancel_reservation", reservation_id)
        view = await self._run(self._finish, control_id, "done", result={"reservation_id": reservation_id})
        return {"control": view, "reservation_id": reservation_id}

    def reservation_owner(self, reservation_id: str, ld_id: str | None = None) -> str | None:
        """The LD_ID whose ``reserve`` control got ``reservation_id`` (newest first)."""
        where = [ControlAction.action == "reserve", ControlAction.outcome == "done"]
        if ld_id is not None:
            where.append(ControlAction.ld_id == ld_id)
        with self.db.session() as s:
            for owner, result in s.execute(select(ControlAction.ld_id, ControlAction.result).where(*where)
                                           .order_by(ControlAction.id.desc()).limit(100_000)):
                if (result or {}).get("reservation_id") == reservation_id:
                    return owner
        return None

    # sending -----------------------------------------------------------------------------------

    async def access(self, he_id: int) -> HeadEndAccess:
        """The head-end's access (HeadEndFailure when it cannot be built)."""
        if not self.head_ends.available:
            raise HeadEndFailure.of("not-configured", "no-head-ends",
                                    "this hub runs without head-end adapters: controls are unavailable")
        try:
            return await self._run(self.head_ends.access, he_id)
        except NotFound:
            raise
        except Exception as e:  # noqa: BLE001 - a head-end that cannot be built is unavailable
            log.error("head-end cannot be built", extra={"he_id": he_id, "error": str(e)})
            raise HeadEndFailure.of("unavailable", "adapter-error", f"head-end {he_id} cannot be used: {e}") from e

    async def _send(self, control_id: int, target: ControlTarget, method: str, *args: Any) -> Any:
        """Send one command at control priority; on failure the control is closed with its outcome
        and the failure raised as a service error."""
        try:
            access = await self.access(target.he_id)
            fn = getattr(access.port, method)
            return await access.call(fn, target.meter, *args, priority=Priority.CONTROL,
                                     concentrator=target.concentrator)
        except ServiceError as e:
            await asyncio.shield(self._run(self._finish, control_id, "failed", error_code=getattr(e, "code", None),
                                           detail=e.message))
            raise
        except HeadEndError as e:
            error = head_end_failure(e, target)
            await asyncio.shield(self._run(self._finish, control_id, outcome_of(e), error_code=e.code,
                                           detail=str(e)))
            raise error from e
        except Exception as e:
            log.exception("control failed in the adapter", extra={"ld_id": target.ld_id, "he_id": target.he_id})
            await asyncio.shield(self._run(self._finish, control_id, "failed", error_code="adapter-error",
                                           detail=f"{type(e).__name__}: {e}"))
            raise head_end_failure(e, target) from e
        except BaseException:  # cancelled: the command may or may not have gone out
            await asyncio.shield(self._run(self._finish, control_id, "unknown", error_code="cancelled",
                                           detail="the request was cancelled while the command was in flight"))
            raise

    # store -------------------------------------------------------------------------------------

    def target(self, ld_id: str) -> ControlTarget:
        with self.db.session() as s:
            return control_target(s, ld_id)

    def _begin(self, target: ControlTarget, action: str, params: dict[str, Any], data: _Input) -> int:
        with self.db.session() as s:
            row = ControlAction(ld_id=target.ld_id, pd_id=target.pd_id, he_id=target.he_id, action=action,
                                params=params, actor=data.actor, reason=data.reason, outcome="running",
                                requested_at=self.clock())
            s.add(row)
            s.flush()
            assert row.id is not None
            return row.id

    def _finish(self, control_id: int, outcome: str, *, error_code: str | None = None, detail: str | None = None,
                result: dict[str, Any] | None = None) -> dict[str, Any]:
        with self.db.session() as s:
            row = s.get(ControlAction, control_id)
            assert row is not None
            row.outcome, row.error_code, row.detail = outcome, error_code, detail
            row.result = result or {}
            row.finished_at = self.clock()
            s.add(row)
            s.flush()
            return control_view(row)

    def _done(self, control_id: int, status: LiveStatus | None, *, relay: bool | None = None,
              contract: int | None = None) -> dict[str, Any]:
        """Close the control as done and bring the logical device's stored relay / contract in line."""
        result = {"live_status": status_view(status)} if status is not None else {}
        view = self._finish(control_id, "done", result=result)
        values: dict[str, Any] = {}
        if relay is not None:
            values["relay_state"] = 1 if relay else 0
        if contract is not None:
            values["contract_amps"] = contract
        if values:
            with self.db.session() as s:
                s.execute(update(LogicalDevice).where(LogicalDevice.ld_id == view["ld_id"])
                          .values(**values, updated_at=utcnow()))
        return {"control": view, "status": result.get("live_status")}

    def record(self, records: list[ControlRecord]) -> None:
        """Write finished controls in one insert (a job's per-device results)."""
        if records:
            with self.db.session() as s:
                s.execute(ControlAction.__table__.insert(), [r.row() for r in records])

    # history -----------------------------------------------------------------------------------

    def history(self, f: ControlFilter, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        """Controls, newest first, with the total."""
        where = []
        for name in ("ld_id", "action", "outcome", "job_id", "actor"):
            value = getattr(f, name)
            if value is not None:
                where.append(getattr(ControlAction, name) == value)
        with self.db.session() as s:
            total = s.scalar(select(func.count()).select_from(ControlAction).where(*where)) or 0
            rows = s.scalars(select(ControlAction).where(*where)
                             .order_by(ControlAction.requested_at.desc(), ControlAction.id.desc())
                             .limit(limit).offset(offset))
            return [control_view(r) for r in rows], total

    def get(self, control_id: int) -> dict[str, Any]:
        with self.db.session() as s:
            row = s.get(ControlAction, control_id)
            if row is None:
                raise NotFound.on("id", f"control {control_id} does not exist")
            return control_view(row)
