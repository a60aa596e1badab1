"""EndDeviceEvents: ``get`` from the alert history, and the ``created EndDeviceEvents`` event
messages the hub publishes for alerts and control outcomes.

An alert becomes one EndDeviceEvent: mRID ``alert-<id>``, createdDateTime = raised_at, issuerID =
the part that raised it, reason = its message, severity, the EndDeviceEventType code from
``mappings/cim_codes.toml`` (the hub's alert code and details travel in EndDeviceEventDetails),
and the UsagePoint (LD_ID) it is about.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from lxml import etree

from adapters.cim import codes
from adapters.cim.envelope import Message, parse_time
from adapters.cim.profile import Builder, Outcome, identifiers, kid, kids, refuse, unique, window
from hub.services.alerts import AlertFilter

if TYPE_CHECKING:
    from adapters.cim.service import CimEdge

NS = "http://iec.ch/TC57/2011/EndDeviceEvents#"
MAX_EVENTS = 10_000


async def get(edge: CimEdge, msg: Message) -> Outcome:
    out = Outcome()
    if not msg.request or not msg.request.profile:
        raise refuse("bad-request", "Request must carry a GetEndDeviceEvents element", "Request")
    g = edge.payload(msg.request.profile[0], "GetEndDeviceEvents")
    start, end = msg.request.start_time, msg.request.end_time
    for sched in kids(g, "TimeSchedule"):
        s, e = window(kid(sched, "scheduleInterval"), "GetEndDeviceEvents/TimeSchedule/scheduleInterval")
        start, end = start or s, end or e
    by_ld = unique(v for up in kids(g, "UsagePoint") for v in identifiers(up))
    by_dev = unique(v for m in kids(g, "Meter") for v in identifiers(m))
    wanted = unique(v for t in kids(g, "EndDeviceEventType") for v in identifiers(t))
    alert_codes = {a for code in wanted for a in codes.alert_codes_for_event(code)}
    for code in wanted:
        if not codes.alert_codes_for_event(code):
            out.fail("unknown-code", f"EndDeviceEventType {code} is not one the hub raises", obj=code,
                     object_type="EndDeviceEventType")
    if wanted and not alert_codes:
        return out
    hub = edge.hub
    ld_ids: list[str | None] = [None]
    if by_ld or by_dev:
        points, unknown = await hub.run(hub.cim_reads.resolve, by_ld, by_dev)
        for name in unknown:
            out.fail("not-found", f"no installed metering point or device named {name}", obj=name,
                     object_type="UsagePoint" if name in by_ld else "Meter")
        if not points:
            return out
        ld_ids = [p.ld_id for p in points]
    alerts: list[dict[str, Any]] = []
    for ld in ld_ids:
        f = AlertFilter(since=start, until=end, ld_id=ld)
        rows, _ = await hub.run(hub.alerts.list_alerts, f, MAX_EVENTS, 0)
        alerts += [a for a in rows if not alert_codes or a["code"] in alert_codes]
    out.payload.append(build_events(alerts))
    out.done = max(1, len(ld_ids))
    return out


def build_events(alerts: list[dict[str, Any]]) -> etree._Element:
    """An EndDeviceEvents element of alerts (as the alert service lists them), oldest first."""
    b = Builder(NS)
    root = b.root("EndDeviceEvents")
    used: set[str] = set()
    for a in sorted(alerts, key=lambda a: (a["raised_at"], a["id"])):
        code = codes.event_code_for_alert(a["code"])
        used.add(code)
        ev = b.sub(root, "EndDeviceEvent")
        b.sub(ev, "mRID", f"alert-{a['id']}")
        raised = a["raised_at"]
        b.sub(ev, "createdDateTime", raised if isinstance(raised, datetime) else
              parse_time(str(raised), "raised_at").astimezone(UTC))
        b.sub(ev, "issuerID", a["source"])
        b.sub(ev, "reason", a["message"][:2000])
        b.sub(ev, "severity", a["severity"])
        detail = b.sub(ev, "EndDeviceEventDetails")
        b.sub(detail, "name", "hub.alert.code")
        b.sub(detail, "value", a["code"])
        for k, v in sorted((a.get("details") or {}).items())[:20]:
            d = b.sub(ev, "EndDeviceEventDetails")
            b.sub(d, "name", str(k))
            b.sub(d, "value", str(v))
        b.sub(ev, "EndDeviceEventType", ref=code)
        if a.get("ld_id"):
            up = b.sub(ev, "UsagePoint")
            b.sub(up, "mRID", a["ld_id"])
    for code in sorted(used):
        t = b.sub(root, "EndDeviceEventType")
        b.sub(t, "mRID", code)
        dev, domain, sub, action = code.split(".")
        b.sub(t, "domain", domain)
        b.sub(t, "eventOrAction", action)
        b.sub(t, "subDomain", sub)
        b.sub(t, "type", dev)
        b.name(t, codes.event_type_name(code))
    return root
