"""MeterConfig and UsagePointConfig: device registration, disposal, installation and its clearing.

MeterConfig/Meter -> a registration record (:class:`hub.services.registry.DeviceRegistration`):

| Meter element | registration field |
| --- | --- |
| serialNumber | serial (the meter's identity in later messages, with mRID) |
| type | type_id (physical device type) |
| formNumber | ld_type_id (logical device type of its metering function) |
| amrSystem | he_id (head-end; omitted: the assignment strategy chooses) |
| electronicAddress/mac | mac |
| Names/name | name |
| UsagePoint/mRID | ld_id (usually given later, at installation) |

``change MeterConfig`` updates its comms data through the provisioning service (electronicAddress/lan
-> ip[:port], status/value ``dhcp-done`` / ``provisioned``); identity fields stay fixed.
``delete MeterConfig`` disposes of the device (it must not be installed). UsagePointConfig/UsagePoint
is a metering point: mRID = LD_ID, ``Equipments`` names its meter (mRID, name or serial; a Names
entry with NameType ``PD_ID`` gives the PD_ID to install under, else the device's own), Names/name
its name, ratedCurrent its contract amps. ``create`` and ``change`` register the installation,
``delete`` clears it (``cancel`` Option true also ends the contract).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ValidationError

from adapters.cim.envelope import ID, Message
from adapters.cim.profile import Outcome, identifiers, kid, kids, refuse, text
from hub.services.errors import ServiceError
from hub.services.installation import Installation, LogicalDeviceInstallation
from hub.services.provisioning import ProvisioningUpdate
from hub.services.registry import DeviceRegistration

if TYPE_CHECKING:
    from lxml import etree

    from adapters.cim.service import CimEdge


def _elements(edge: CimEdge, msg: Message, profile: str, item: str) -> list[etree._Element]:
    if not msg.payload or not msg.payload.elements:
        raise refuse("bad-request", f"Payload must carry a {profile} element", "Payload")
    out: list[etree._Element] = []
    for el in msg.payload.elements:
        out += kids(edge.payload(el, profile), item)
    if not out:
        raise refuse("bad-request", f"{profile} names no {item}", f"Payload/{profile}")
    return out


def _service_error(out: Outcome, exc: ServiceError, label: str, object_type: str) -> None:
    from hub.services.errors import Conflict, NotFound

    key = "not-found" if isinstance(exc, NotFound) else "conflict" if isinstance(exc, Conflict) else "invalid-object"
    out.fail(key, f"{label}: {exc}", obj=label, object_type=object_type)


def _invalid_meter(out: Outcome, exc: ValidationError, n: int, label: str) -> None:
    """A Meter whose fields the service refused: its first error, with the element's xpath."""
    first = exc.errors()[0]
    out.fail("invalid-object", f"Meter[{n}] {label}: {'.'.join(map(str, first['loc']))}: {first['msg']}",
             obj=label, object_type="Meter", xpath=f"MeterConfig/Meter[{n}]")


async def create_meter(edge: CimEdge, msg: Message) -> Outcome:
    out = Outcome()
    for n, meter in enumerate(_elements(edge, msg, "MeterConfig", "Meter"), start=1):
        label = text(meter, "serialNumber") or text(meter, "mRID") or f"Meter[{n}]"
        names = [t for nm in kids(meter, "Names") if (t := text(nm, "name"))]
        address = kid(meter, "electronicAddress")
        up = kid(meter, "UsagePoint")
        record = {"type_id": text(meter, "type"), "ld_type_id": text(meter, "formNumber"),
                  "he_id": text(meter, "amrSystem"), "serial": text(meter, "serialNumber"),
                  "mac": text(address, "mac") if address is not None else None,
                  "name": names[0] if names else None, "ld_id": text(up, "mRID") if up is not None else None}
        try:
            reg = DeviceRegistration.model_validate({k: v for k, v in record.items() if v is not None})
            view = await edge.hub.run(edge.hub.registry.register, reg)
        except ValidationError as exc:
            _invalid_meter(out, exc, n, label)
            continue
        except ServiceError as exc:
            _service_error(out, exc, label, "Meter")
            continue
        out.ids.append(ID(str(view.get("id", view.get("physical_device", {}).get("id", ""))), kind="other",
                          id_type="physical-device-key", object_type="Meter"))
        out.done += 1
    return out


STATUS_STEPS = {"dhcp-done": "dhcp_done", "provisioned": "provisioned"}
"""``change MeterConfig`` Meter/status/value -> the provisioning step it reports done."""
FIXED_FIELDS = ("type", "formNumber", "amrSystem")


def _lan(lan: str) -> dict[str, object]:
    """``ip``, ``ip:port`` or ``[ipv6]:port`` as provisioning fields (validated by the service)."""
    if lan.startswith("[") and "]" in lan:
        host, _, rest = lan[1:].partition("]")
        return {"ip": host, **({"port": rest[1:]} if rest.startswith(":") else {})}
    if lan.count(":") == 1:
        host, port = lan.split(":")
        return {"ip": host, "port": port}
    return {"ip": lan}


async def change_meter(edge: CimEdge, msg: Message) -> Outcome:
    """Update a registered meter's comms data through the provisioning service: its address
    (``electronicAddress/lan``: an IP address, with ``:port`` optionally; ``[v6]:port`` for IPv6)
    and provisioning progress (``status/value`` ``dhcp-done`` or ``provisioned``). The meter is
    named by mRID (PD_ID or key) or serialNumber. Identity data the hub keeps fixed after
    registration (type, formNumber, amrSystem, mac, names) is refused for that meter."""
    out = Outcome()
    for n, meter in enumerate(_elements(edge, msg, "MeterConfig", "Meter"), start=1):
        names = identifiers(meter)
        label = names[0] if names else f"Meter[{n}]"
        address = kid(meter, "electronicAddress")
        fixed = [f for f in FIXED_FIELDS if text(meter, f)]
        if address is not None and text(address, "mac"):
            fixed.append("electronicAddress/mac")
        if kids(meter, "Names"):
            fixed.append("Names")
        if kid(meter, "UsagePoint") is not None:
            fixed.append("UsagePoint (install with UsagePointConfig)")
        if fixed:
            out.fail("invalid-object", f"Meter[{n}] {label}: {', '.join(fixed)} cannot be changed after "
                     "registration (dispose of the meter and register it again)", obj=label, object_type="Meter",
                     xpath=f"MeterConfig/Meter[{n}]")
            continue
        update: dict[str, object] = {}
        lan = text(address, "lan") if address is not None else None
        if lan:
            update.update(_lan(lan))
        status = kid(meter, "status")
        value = text(status, "value") if status is not None else None
        if value:
            step = STATUS_STEPS.get(value)
            if step is None:
                out.fail("invalid-object", f"Meter[{n}] {label}: status {value} is not one of "
                         f"{', '.join(STATUS_STEPS)}", obj=label, object_type="Meter")
                continue
            update[step] = True
        if not update:
            out.fail("invalid-object", f"Meter[{n}] {label}: nothing to change (electronicAddress/lan, status/value)",
                     obj=label, object_type="Meter", xpath=f"MeterConfig/Meter[{n}]")
            continue
        found = await edge.hub.run(edge.hub.cim_reads.device, names)
        if found is None:
            out.fail("not-found", f"no live meter named {label}", obj=label, object_type="Meter")
            continue
        try:
            data = ProvisioningUpdate.model_validate(update)
            await edge.hub.run(edge.hub.provisioning.update, "physical-device", found[0], data)
        except ValidationError as exc:
            _invalid_meter(out, exc, n, label)
            continue
        except ServiceError as exc:
            _service_error(out, exc, label, "Meter")
            continue
        out.ids.append(ID(str(found[0]), kind="other", id_type="physical-device-key", object_type="Meter"))
        out.done += 1
    return out


async def delete_meter(edge: CimEdge, msg: Message) -> Outcome:
    out = Outcome()
    for n, meter in enumerate(_elements(edge, msg, "MeterConfig", "Meter"), start=1):
        names = identifiers(meter)
        label = names[0] if names else f"Meter[{n}]"
        found = await edge.hub.run(edge.hub.cim_reads.device, names)
        if found is None:
            out.fail("not-found", f"no live meter named {label}", obj=label, object_type="Meter")
            continue
        try:
            await edge.hub.run(edge.hub.installation.dispose, found[0])
        except ServiceError as exc:
            _service_error(out, exc, label, "Meter")
            continue
        out.done += 1
    return out


async def create_usage_point(edge: CimEdge, msg: Message) -> Outcome:
    out = Outcome()
    for n, up in enumerate(_elements(edge, msg, "UsagePointConfig", "UsagePoint"), start=1):
        ld_id = text(up, "mRID")
        label = ld_id or f"UsagePoint[{n}]"
        equipment = kids(up, "Equipments")
        if not ld_id or not equipment:
            out.fail("invalid-object", f"UsagePoint[{n}] needs an mRID (the LD_ID) and Equipments naming its meter",
                     obj=label, object_type="UsagePoint", xpath=f"UsagePointConfig/UsagePoint[{n}]")
            continue
        found = await edge.hub.run(edge.hub.cim_reads.device, identifiers(equipment[0]))
        if found is None:
            out.fail("not-found", f"{label}: no live meter named {identifiers(equipment[0])[:1]}", obj=label,
                     object_type="UsagePoint")
            continue
        key, pd_id = found
        for nm in kids(equipment[0], "Names"):
            nt = kid(nm, "NameType")
            if nt is not None and text(nt, "name") == "PD_ID":
                pd_id = text(nm, "name")
        names = [t for nm in kids(up, "Names") if (t := text(nm, "name"))]
        rated = text(up, "ratedCurrent")
        try:
            data = Installation(pd_id=pd_id or "", logical_devices=[LogicalDeviceInstallation(
                ld_id=ld_id, name=names[0] if names else None,
                contract_amps=int(float(rated)) if rated is not None else None)])
            await edge.hub.run(edge.hub.installation.install, key, data)
        except (ValidationError, ValueError) as exc:
            out.fail("invalid-object", f"{label}: {str(exc).splitlines()[0]}"
                     + ("" if pd_id else " (the meter has no PD_ID: give one as Equipments/Names with NameType PD_ID)"),
                     obj=label, object_type="UsagePoint")
            continue
        except ServiceError as exc:
            _service_error(out, exc, label, "UsagePoint")
            continue
        out.ids.append(ID(ld_id, kind="name", id_type="LD_ID", object_type="UsagePoint"))
        out.done += 1
    return out


async def delete_usage_point(edge: CimEdge, msg: Message) -> Outcome:
    out = Outcome()
    cancel = any(name == "cancel" and (value or "").lower() == "true"
                 for name, value in (msg.request.options if msg.request else []))
    for n, up in enumerate(_elements(edge, msg, "UsagePointConfig", "UsagePoint"), start=1):
        ld_id = text(up, "mRID") or next(iter(identifiers(up)), None)
        if not ld_id:
            out.fail("invalid-object", f"UsagePoint[{n}] has no mRID", object_type="UsagePoint")
            continue
        try:
            await edge.hub.run(edge.hub.installation.clear_logical, ld_id, cancel=cancel)
        except ServiceError as exc:
            _service_error(out, exc, ld_id, "UsagePoint")
            continue
        out.ids.append(ID(ld_id, kind="name", id_type="LD_ID", object_type="UsagePoint"))
        out.done += 1
    return out


__all__ = ["change_meter", "create_meter", "create_usage_point", "delete_meter", "delete_usage_point"]
