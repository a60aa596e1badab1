"""EndDeviceControls: ``create`` runs remote connect / disconnect, a contract-capacity change and a
comms-unit reboot through the hub's controls service (recorded in the controls history).

Each EndDeviceControl names its command by ``EndDeviceControlType@ref`` (rows of
``mappings/cim_codes.toml``), its targets by ``UsagePoints`` (LD_ID) or ``EndDevices`` (PD_ID,
serial or LD_ID), and for a contract change the new capacity in an ``EndDeviceControlAttribute``
named ``amps`` (``force`` = true lowers below the live load). The reply carries one Reply/ID per
target carried out and an Error per target that was not (unknown, disposed, refused, head-end down).

A contract change with ``primaryDeviceTiming/interval`` having an ``end`` is a reservation: the
head-end sets the capacity at ``start`` (now, if it has begun) and restores the previous one at
``end``; the reply's Reply/ID (idType ``reservation``) names it, and ``cancel EndDeviceControls``
with that ID as the EndDeviceControl mRID releases it (restoring at once if in force). Other
commands scheduled for later are refused (``1.8``).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from lxml import etree
from pydantic import ValidationError

from adapters.cim import codes
from adapters.cim.envelope import ID, Message, parse_time
from adapters.cim.profile import Outcome, identifiers, kid, kids, refuse, text, unique
from hub.services.controls import ContractIn, ControlIn, HeadEndFailure, RelayIn, ReservationIn
from hub.services.errors import ServiceError

if TYPE_CHECKING:
    from adapters.cim.service import CimEdge


def _controls(edge: CimEdge, msg: Message) -> Iterator[tuple[str, etree._Element]]:
    """Each EndDeviceControl of the payload, validated, with its xpath for errors."""
    if not msg.payload or not msg.payload.elements:
        raise refuse("bad-request", "Payload must carry an EndDeviceControls element", "Payload")
    for element in msg.payload.elements:
        for n, control in enumerate(kids(edge.payload(element, "EndDeviceControls"), "EndDeviceControl"), start=1):
            yield f"EndDeviceControl[{n}]", control


async def create(edge: CimEdge, msg: Message) -> Outcome:
    out = Outcome()
    actor = (msg.header.user_id or msg.header.source or "cim")[:128]
    for where, control in _controls(edge, msg):
        type_el = kid(control, "EndDeviceControlType")
        code = type_el.get("ref") if type_el is not None else None
        command = codes.control_command(code or "")
        if command is None:
            out.fail("unknown-code", f"{where}: EndDeviceControlType {code} is not served", obj=code or "",
                     object_type="EndDeviceControlType", xpath=where)
            continue
        timing = kid(control, "primaryDeviceTiming")
        interval = kid(timing, "interval") if timing is not None else None
        start = text(interval, "start") if interval is not None else None
        end = text(interval, "end") if interval is not None else None
        window: tuple[datetime, datetime] | None = None
        if command == "set-contract" and end:
            window = (parse_time(start, f"{where}/primaryDeviceTiming/interval/start") if start
                      else datetime.now(UTC), parse_time(end, f"{where}/primaryDeviceTiming/interval/end"))
        elif start and parse_time(start, f"{where}/primaryDeviceTiming/interval/start") > datetime.now(UTC):
            out.fail("bad-request", f"{where}: only contract-capacity controls can be scheduled (with an "
                     "interval end, for the restore); send this control when it is due", obj=code or "",
                     object_type="EndDeviceControl", xpath=where)
            continue
        attrs = {text(a, "name"): text(a, "value") for a in kids(control, "EndDeviceControlAttribute")}
        by_ld = unique(v for up in kids(control, "UsagePoints") for v in identifiers(up))
        by_dev = unique(v for d in kids(control, "EndDevices") for v in identifiers(d))
        if not by_ld and not by_dev:
            out.fail("invalid-object", f"{where}: name UsagePoints or EndDevices", xpath=where)
            continue
        points, unknown = await edge.hub.run(edge.hub.cim_reads.resolve, by_ld, by_dev)
        for name in unknown:
            out.fail("not-found", f"{where}: no installed metering point or device named {name}", obj=name,
                     object_type="EndDevice")
        reason = text(control, "reason")
        for p in points:
            try:
                if window is not None:
                    done = await _reserve(edge, p.ld_id, attrs, window, actor, reason)
                    out.ids.append(ID(done["reservation_id"], kind="other", id_type="reservation",
                                      object_type="EndDeviceControl"))
                else:
                    await _run(edge, command, p.ld_id, attrs, actor, reason)
            except (ValidationError, ValueError) as exc:
                out.fail("invalid-object", f"{where} {p.ld_id}: {str(exc).splitlines()[0]}", obj=p.ld_id,
                         object_type="UsagePoint", xpath=where)
                continue
            except HeadEndFailure as exc:
                out.fail("device-error", f"{where} {p.ld_id}: {exc.kind}: {exc}", obj=p.ld_id,
                         object_type="UsagePoint")
                continue
            except ServiceError as exc:
                from adapters.cim.config_nouns import _service_error

                _service_error(out, exc, p.ld_id, "UsagePoint")
                continue
            out.ids.append(ID(p.ld_id, kind="name", id_type="LD_ID", object_type="UsagePoint"))
            out.done += 1
    return out


async def cancel(edge: CimEdge, msg: Message) -> Outcome:
    """Release contract reservations: each EndDeviceControl's mRID is the reservation ID a create
    answered with (Reply/ID idType ``reservation``); UsagePoints, when named, narrow the search."""
    out = Outcome()
    actor = (msg.header.user_id or msg.header.source or "cim")[:128]
    for where, control in _controls(edge, msg):
        rid = text(control, "mRID")
        if not rid:
            out.fail("invalid-object", f"{where}: mRID must name the reservation to cancel", xpath=where,
                     object_type="EndDeviceControl")
            continue
        lds = unique(v for up in kids(control, "UsagePoints") for v in identifiers(up)) or [None]
        for ld_id in lds:
            try:
                await edge.hub.controls.release(rid, ControlIn(actor=actor, reason=text(control, "reason")),
                                                ld_id=ld_id)
            except HeadEndFailure as exc:
                out.fail("device-error", f"{where} {rid}: {exc.kind}: {exc}", obj=rid,
                         object_type="EndDeviceControl")
                continue
            except ServiceError as exc:
                from adapters.cim.config_nouns import _service_error

                _service_error(out, exc, rid, "EndDeviceControl")
                continue
            out.ids.append(ID(rid, kind="other", id_type="reservation", object_type="EndDeviceControl"))
            out.done += 1
    return out


async def _reserve(edge: CimEdge, ld_id: str, attrs: dict[str | None, str | None], window: tuple[datetime, datetime],
                   actor: str, reason: str | None) -> dict[str, Any]:
    amps = attrs.get("amps") or attrs.get("contractAmps")
    if amps is None:
        raise ValueError("a contract change needs an EndDeviceControlAttribute named amps")
    return await edge.hub.controls.reserve(ld_id, ReservationIn(amps=int(float(amps)), start=window[0], end=window[1],
                                                                actor=actor, reason=reason))


async def _run(edge: CimEdge, command: str, ld_id: str, attrs: dict[str | None, str | None], actor: str,
               reason: str | None) -> dict[str, Any]:
    controls = edge.hub.controls
    if command in ("connect", "disconnect"):
        return await controls.relay(ld_id, RelayIn(state="on" if command == "connect" else "off", actor=actor,
                                                   reason=reason))
    if command == "set-contract":
        amps = attrs.get("amps") or attrs.get("contractAmps")
        if amps is None:
            raise ValueError("a contract change needs an EndDeviceControlAttribute named amps")
        return await controls.contract(ld_id, ContractIn(amps=int(float(amps)), actor=actor, reason=reason,
                                                         force=(attrs.get("force") or "").lower() == "true"))
    if command == "reboot":
        return await controls.reboot(ld_id, ControlIn(actor=actor, reason=reason))
    raise ValueError(f"command {command} is not carried out by this edge")
