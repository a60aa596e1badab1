"""The secondary-use SOAP service (spyne, SOAP 1.1, document/literal) at /public/soap, WSDL at
/public/soap?wsdl. The same queries as /api/v1/public/..., the same authentication layer
(adapters.auth: ``Authorization: Bearer <key>`` on the HTTP request) and the same access log.

spyne's WSGI application runs on the hub's worker pool; the aiohttp handler builds its environ.
Before spyne sees a body it is parsed once with a hardened parser: no DTD, no entities, no network,
bounded size, so XXE and entity bombs are refused as client faults.
"""

from __future__ import annotations

from datetime import date
import logging
from collections.abc import Callable
from typing import Any

from lxml import etree

from adapters import xmlsafe
from pydantic import ValidationError
from spyne import Application, Array, ComplexModel, Date, DateTime, Double, Fault, Integer, ServiceBase, Unicode, rpc
import spyne.const
from spyne.const import http
from spyne.protocol.soap import Soap11
from spyne.server.wsgi import WsgiApplication

from hub.runtime import Hub
from hub.services.access import Caller, Forbidden
from hub.services.errors import NotFound, ServiceError
from hub.services.public import AggregateQuery, Period, QualityQuery, SeriesQuery
from hub.services.public_sensors import SensorQuery

log = logging.getLogger("mdmhub.public.soap")

# spyne runs a full gc.collect() when it closes a request's context, at most once a second: on a
# hub with a large heap that stalls every edge for whole seconds whenever faults come steadily
# (bad clients, a scan). Python's own collector is enough.
spyne.const.MIN_GC_INTERVAL = float("inf")
TNS = "urn:mdmhub:public:1"
ENV_HUB, ENV_CALLER = "mdmhub.hub", "mdmhub.caller"


class UsageBucket(ComplexModel):
    __namespace__ = TNS
    Group = Unicode
    PeriodStart = Unicode
    EnergyKwh = Double
    Meters = Integer
    Customers = Integer


class UsageAggregate(ComplexModel):
    __namespace__ = TNS
    GroupBy = Unicode
    Resolution = Unicode
    K = Integer
    Suppressed = Integer
    Total = Integer
    Items = Array(UsageBucket)


class QualityBucket(ComplexModel):
    __namespace__ = TNS
    Group = Unicode
    Day = Date
    Normal = Integer
    Missing = Integer
    Recollected = Integer
    MissingRate = Double
    Customers = Integer


class QualitySummary(ComplexModel):
    __namespace__ = TNS
    K = Integer
    Suppressed = Integer
    Total = Integer
    Items = Array(QualityBucket)


class DrEvent(ComplexModel):
    __namespace__ = TNS
    EventId = Unicode
    MarketContext = Unicode
    Status = Unicode
    Start = Unicode
    DurationSeconds = Integer
    Participants = Integer
    Actions = Integer
    ReductionAmps = Double
    Suppressed = Integer


class DrEventSummary(ComplexModel):
    __namespace__ = TNS
    K = Integer
    Total = Integer
    Items = Array(DrEvent)


class SeriesPoint(ComplexModel):
    __namespace__ = TNS
    LdId = Unicode
    PeriodStart = Unicode
    EnergyKwh = Double
    Slots = Integer
    Missing = Integer


class CustomerSeries(ComplexModel):
    __namespace__ = TNS
    CustomerId = Unicode
    Resolution = Unicode
    Total = Integer
    Items = Array(SeriesPoint)


class SensorBucket(ComplexModel):
    __namespace__ = TNS
    Group = Unicode
    Unit = Unicode
    PeriodStart = Unicode
    Mean = Double
    Min = Double
    Max = Double
    Sum = Double
    Values = Integer
    Points = Integer
    Customers = Integer


class SensorSeries(ComplexModel):
    __namespace__ = TNS
    Kind = Unicode
    GroupBy = Unicode
    Resolution = Unicode
    K = Integer
    Suppressed = Integer
    Total = Integer
    Items = Array(SensorBucket)


class SensorKind(ComplexModel):
    __namespace__ = TNS
    Kind = Unicode
    Unit = Unicode
    Points = Integer


class Group(ComplexModel):
    __namespace__ = TNS
    Cluster = Unicode
    Name = Unicode
    Area = Unicode


def _ctx(ctx: Any) -> tuple[Hub, Caller]:
    env = ctx.transport.req_env
    return env[ENV_HUB], env[ENV_CALLER]


def _call(fn: Callable[[], Any]) -> Any:
    """Run a service call, turning its refusals into SOAP client faults."""
    try:
        return fn()
    except ValidationError as exc:
        raise Fault("Client.InvalidInput", "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {e['msg']}" for e in exc.errors())) from None
    except Forbidden as exc:
        raise Fault("Client.Forbidden", exc.message) from None
    except NotFound as exc:
        raise Fault("Client.NotFound", exc.message) from None
    except ServiceError as exc:
        raise Fault("Client.InvalidInput", exc.message) from None


def _page(items: list[Any], limit: int | None, offset: int | None) -> list[Any]:
    limit = 50 if limit is None else limit
    offset = offset or 0
    if not 1 <= limit <= 1000 or offset < 0:
        raise Fault("Client.InvalidInput", "Limit is 1-1000 and Offset at least 0")
    return items[offset:offset + limit]


class PublicData(ServiceBase):
    """Aggregated, privacy-checked data for signage, research, partner and retailer systems."""

    @rpc(_returns=Array(Group))
    def GetGroups(ctx):  # noqa: N802, N805 - SOAP operation names
        hub, caller = _ctx(ctx)
        return [Group(Cluster=g["cluster"], Name=g["name"], Area=g["area"]) for g in _call(
            lambda: hub.public.groups(caller))]

    @rpc(DateTime(min_occurs=1, nillable=False), DateTime(min_occurs=1, nillable=False), Unicode, Unicode, Unicode,
         Integer, Integer, Integer, _returns=UsageAggregate)
    def GetUsageAggregate(ctx, From, To, GroupBy, Group, Resolution, SubNumber, Limit, Offset):  # noqa: N802, N803
        hub, caller = _ctx(ctx)
        q = _call(lambda: AggregateQuery.model_validate(_drop_none(
            {"from": From, "to": To, "group_by": GroupBy, "group": Group, "resolution": Resolution,
             "sub_number": SubNumber})))
        r = _call(lambda: hub.public.usage_aggregate(caller, q))
        return UsageAggregate(GroupBy=r["group_by"], Resolution=r["resolution"], K=r["k"], Suppressed=r["suppressed"],
                              Total=len(r["items"]), Items=[UsageBucket(
                                  Group=i["group"], PeriodStart=i["period_start"], EnergyKwh=i["energy_kwh"],
                                  Meters=i["meters"], Customers=i["customers"]) for i in _page(r["items"], Limit, Offset)])

    @rpc(DateTime(min_occurs=1, nillable=False), DateTime(min_occurs=1, nillable=False), Unicode, Unicode,
         Integer, Integer, _returns=QualitySummary)
    def GetQualitySummary(ctx, From, To, GroupBy, Group, Limit, Offset):  # noqa: N802, N803
        hub, caller = _ctx(ctx)
        q = _call(lambda: QualityQuery.model_validate(_drop_none(
            {"from": From, "to": To, "group_by": GroupBy, "group": Group})))
        r = _call(lambda: hub.public.quality_summary(caller, q))
        return QualitySummary(K=r["k"], Suppressed=r["suppressed"], Total=len(r["items"]), Items=[QualityBucket(
            Group=i["group"], Day=date.fromisoformat(i["period_start"]), Normal=i["normal"], Missing=i["missing"],
            Recollected=i["recollected"], MissingRate=i["missing_rate"], Customers=i["customers"])
            for i in _page(r["items"], Limit, Offset)])

    @rpc(DateTime(min_occurs=1, nillable=False), DateTime(min_occurs=1, nillable=False), Integer, Integer,
         _returns=DrEventSummary)
    def GetDrEventSummary(ctx, From, To, Limit, Offset):  # noqa: N802, N803
        hub, caller = _ctx(ctx)
        q = _call(lambda: Period.model_validate({"from": From, "to": To}))
        r = _call(lambda: hub.public.dr_events(caller, q))
        return DrEventSummary(K=r["k"], Total=len(r["items"]), Items=[DrEvent(
            EventId=i["event_id"], MarketContext=i["market_context"], Status=i["status"], Start=i["start"],
            DurationSeconds=i["duration_seconds"], Participants=i["participants"], Actions=i["actions"],
            ReductionAmps=i["reduction_amps"], Suppressed=1 if i.get("suppressed") else 0)
            for i in _page(r["items"], Limit, Offset)])

    @rpc(Unicode(min_occurs=1, nillable=False), DateTime(min_occurs=1, nillable=False),
         DateTime(min_occurs=1, nillable=False), Unicode, Integer, Integer, _returns=CustomerSeries)
    def GetCustomerSeries(ctx, CustomerId, From, To, Resolution, Limit, Offset):  # noqa: N802, N803
        hub, caller = _ctx(ctx)
        q = _call(lambda: SeriesQuery.model_validate(_drop_none({"from": From, "to": To, "resolution": Resolution})))
        r = _call(lambda: hub.public.customer_series(caller, CustomerId, q))
        return CustomerSeries(CustomerId=r["customer_id"], Resolution=r["resolution"], Total=len(r["items"]),
                              Items=[SeriesPoint(LdId=i["ld_id"], PeriodStart=i["period_start"],
                                                 EnergyKwh=i["energy_kwh"], Slots=i["slots"], Missing=i["missing"])
                                     for i in _page(r["items"], Limit, Offset)])

    @rpc(_returns=Array(SensorKind))
    def GetSensorKinds(ctx):  # noqa: N802, N805
        hub, caller = _ctx(ctx)
        return [SensorKind(Kind=k["kind"], Unit=k["unit"], Points=k["points"])
                for k in _call(lambda: hub.public_sensors.kinds(caller))]

    @rpc(Unicode(min_occurs=1, nillable=False), DateTime(min_occurs=1, nillable=False),
         DateTime(min_occurs=1, nillable=False), Unicode, Unicode, Unicode, Integer, Integer, _returns=SensorSeries)
    def GetSensorSeries(ctx, Kind, From, To, GroupBy, Group, Resolution, Limit, Offset):  # noqa: N802, N803
        hub, caller = _ctx(ctx)
        q = _call(lambda: SensorQuery.model_validate(_drop_none(
            {"kind": Kind, "from": From, "to": To, "group_by": GroupBy, "group": Group, "resolution": Resolution})))
        r = _call(lambda: hub.public_sensors.series(caller, q))
        return SensorSeries(Kind=r["kind"], GroupBy=r["group_by"], Resolution=r["resolution"], K=r["k"],
                            Suppressed=r["suppressed"], Total=len(r["items"]), Items=[SensorBucket(
                                Group=i["group"], Unit=i["unit"], PeriodStart=i["period_start"], Mean=i["mean"],
                                Min=i["min"], Max=i["max"], Sum=i["sum"], Values=i["values"], Points=i["points"],
                                Customers=i["customers"]) for i in _page(r["items"], Limit, Offset)])


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


_CLIENT_FAULT_STATUS = {"Client.Unauthenticated": http.HTTP_401, "Client.Forbidden": http.HTTP_403,
                        "Client.NotFound": http.HTTP_404, "Client.RateLimited": http.HTTP_429}


class _Soap11(Soap11):
    """SOAP 1.1 whose ``Client`` faults (schema violations, invalid input, refusals) carry a 4xx status
    like the edge's own refusals before spyne runs, instead of spyne's 500 for every fault: the access
    log and the caller's HTTP stack then tell a bad request from a failure of the hub."""

    def fault_to_http_response_code(self, fault: Any) -> str:
        code = getattr(fault, "faultcode", "") or ""
        if code == "Client" or code.startswith("Client."):
            return _CLIENT_FAULT_STATUS.get(code, http.HTTP_400)
        return http.HTTP_500


def make_wsgi() -> WsgiApplication:
    app = Application([PublicData], tns=TNS, name="PublicDataService",
                      in_protocol=Soap11(validator="lxml"), out_protocol=_Soap11())
    return WsgiApplication(app)


def run_wsgi(wsgi: WsgiApplication, environ: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
    """Call the WSGI application synchronously (on a worker thread)."""
    captured: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        captured["status"], captured["headers"] = status, headers
        return lambda _: None

    chunks = wsgi(environ, start_response)
    try:
        body = b"".join(chunks)
    finally:
        close = getattr(chunks, "close", None)
        if close:
            close()
    return int(captured["status"].split()[0]), captured["headers"], body


def operation_of(body: bytes) -> str:
    """The SOAP operation a request names (first element of Body); raises ValueError if the
    document is not a well-formed, DTD-free envelope."""
    try:
        env = xmlsafe.parse(body)
    except (xmlsafe.UnsafeXml, xmlsafe.MalformedXml) as exc:
        raise ValueError(str(exc)) from None
    if etree.QName(env).localname != "Envelope":
        raise ValueError("not a SOAP envelope")
    for child in env:
        if isinstance(child.tag, str) and etree.QName(child).localname == "Body":
            for op in child:
                if isinstance(op.tag, str):
                    return etree.QName(op).localname
    raise ValueError("the SOAP Body is empty")
