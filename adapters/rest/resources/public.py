"""Secondary-use REST API (/api/v1/public/...), API-client administration and the access log
(/api/v1/access/...), and daily CSV delivery. Every route goes through adapters.auth; lists page with
``limit``/``offset`` and answer CSV instead of JSON for ``Accept: text/csv``."""

from __future__ import annotations

import csv
import io
from datetime import date
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from adapters.auth import caller_of, guarded
from adapters.rest.common import Page, hub_of, ok, parse_body, parse_query
from adapters.rest.problems import BadRequest
from adapters.rest.routing import ApiRoutes
from hub.services.access import AccessLogQuery, ClientIn, ClientPatch
from hub.services.public import AggregateQuery, Period, QualityQuery, SeriesQuery
from hub.services.public_sensors import SensorQuery

routes = ApiRoutes()
AUTH = {401: "no valid credential", 403: "scope, IP or right missing", 429: "rate limit reached"}


def wants_csv(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "text/csv" in accept and "application/json" not in accept.split(",")[0]


def csv_response(items: list[dict[str, Any]], columns: list[str] | None = None, name: str = "data.csv") -> web.Response:
    buf = io.StringIO()
    cols = columns or (list(items[0]) if items else [])
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(cols)
    for item in items:
        writer.writerow(["" if item.get(c) is None else _cell(item.get(c)) for c in cols])
    return web.Response(text=buf.getvalue(), content_type="text/csv", charset="utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})


def _cell(value: Any) -> Any:
    if isinstance(value, dict):
        return ";".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list):
        return len(value)
    return value


def paged(request: web.Request, result: dict[str, Any], page: Page, columns: list[str], name: str) -> web.Response:
    items = result["items"]
    window = items[page.offset:page.offset + page.limit]
    if wants_csv(request):
        resp = csv_response(window, columns, name)
        resp.headers["X-Total-Count"] = str(len(items))
        return resp
    return ok({**result, "items": window, "total": len(items), "limit": page.limit, "offset": page.offset})


class UsageQ(AggregateQuery, Page):
    """Aggregate filters plus paging."""


class QualityQ(QualityQuery, Page):
    """Quality-summary filters plus paging."""


class EventsQ(Period, Page):
    """A period plus paging."""


class SeriesQ(SeriesQuery, Page):
    """Customer-series filters plus paging."""


class SensorQ(SensorQuery, Page):
    """Sensor-series filters plus paging."""


USAGE_COLS = ["group", "period_start", "energy_kwh", "meters", "customers"]
QUALITY_COLS = ["group", "period_start", "normal", "missing", "recollected", "missing_rate", "customers"]
EVENT_COLS = ["event_id", "market_context", "status", "start", "duration_seconds", "participants", "actions",
              "reduction_amps", "suppressed"]
SERIES_COLS = ["ld_id", "period_start", "energy_kwh", "slots", "missing"]
SENSOR_COLS = ["group", "kind", "unit", "period_start", "mean", "min", "max", "sum", "values", "points", "customers"]


@routes.get("/api/v1/public/groups", tag="public", responses=AUTH,
            summary="Clusters and areas the caller may aggregate over")
@guarded("rest", "public:read")
async def groups(request: web.Request) -> web.Response:
    hub = hub_of(request)
    items = await hub.run(hub.public.groups, caller_of(request))
    return csv_response(items, name="groups.csv") if wants_csv(request) else ok({"items": items})


@routes.get("/api/v1/public/usage", tag="public", query=UsageQ, responses=AUTH,
            summary="Energy per cluster or area and 30-minute slot or day; groups under k customers suppressed")
@guarded("rest", "public:read")
async def usage(request: web.Request) -> web.Response:
    hub = hub_of(request)
    q = parse_query(request, UsageQ)
    result = await hub.run(hub.public.usage_aggregate, caller_of(request), q)
    return paged(request, result, q, USAGE_COLS, "usage.csv")


@routes.get("/api/v1/public/quality", tag="public", query=QualityQ, responses=AUTH,
            summary="Snapshot status counts (normal, missing, re-collected) per group and day")
@guarded("rest", "public:read")
async def quality(request: web.Request) -> web.Response:
    hub = hub_of(request)
    q = parse_query(request, QualityQ)
    result = await hub.run(hub.public.quality_summary, caller_of(request), q)
    return paged(request, result, q, QUALITY_COLS, "quality.csv")


@routes.get("/api/v1/public/dr-events", tag="public", query=EventsQ, responses=AUTH,
            summary="DR events starting in the period with participation and reserved reduction")
@guarded("rest", "public:read")
async def dr_events(request: web.Request) -> web.Response:
    hub = hub_of(request)
    q = parse_query(request, EventsQ)
    result = await hub.run(hub.public.dr_events, caller_of(request), q)
    return paged(request, result, q, EVENT_COLS, "dr-events.csv")


@routes.get("/api/v1/public/customers/{customer_id}/usage", tag="public", query=SeriesQ, responses=AUTH,
            summary="One customer's metering points per slot, day or month (clients holding that customer)")
@guarded("rest", "customer:read")
async def customer_usage(request: web.Request) -> web.Response:
    hub = hub_of(request)
    q = parse_query(request, SeriesQ)
    result = await hub.run(hub.public.customer_series, caller_of(request), request.match_info["customer_id"], q)
    return paged(request, result, q, SERIES_COLS, "customer-usage.csv")


@routes.get("/api/v1/public/sensors", tag="public", responses=AUTH,
            summary="IEEE 1888 sensor kinds and units with how many points (no point IDs)")
@guarded("rest", "public:read")
async def sensor_kinds(request: web.Request) -> web.Response:
    hub = hub_of(request)
    items = await hub.run(hub.public_sensors.kinds, caller_of(request))
    return csv_response(items, name="sensors.csv") if wants_csv(request) else ok({"items": items})


@routes.get("/api/v1/public/sensors/series", tag="public", query=SensorQ, responses=AUTH,
            summary="Sensor values (mean, min, max, sum) per kind, group and slot or day; "
                    "household groups under k customers suppressed")
@guarded("rest", "public:read")
async def sensor_series(request: web.Request) -> web.Response:
    hub = hub_of(request)
    q = parse_query(request, SensorQ)
    result = await hub.run(hub.public_sensors.series, caller_of(request), q)
    return paged(request, result, q, SENSOR_COLS, "sensor-series.csv")


# --- delivery ------------------------------------------------------------------------------------
class ManifestQ(BaseModel):
    model_config = ConfigDict(extra="forbid")
    since: date | None = Field(None, description="only files of this day and later")


@routes.get("/api/v1/public/delivery/manifest", tag="delivery", query=ManifestQ, responses=AUTH,
            summary="Daily CSV files the client may fetch, with sizes and SHA-256 checksums")
@guarded("rest", "delivery:read")
async def manifest(request: web.Request) -> web.Response:
    hub = hub_of(request)
    q = parse_query(request, ManifestQ)
    result = await hub.run(hub.delivery.manifest, caller_of(request), q.since)
    if request.query.get("format") == "sha256sums" or "text/plain" in request.headers.get("Accept", ""):
        return web.Response(text="".join(f"{f['sha256']}  {f['path']}\n" for f in result["files"]),
                            content_type="text/plain")
    return ok(result)


@routes.get("/api/v1/public/delivery/{kind}/{subject}/{day}.csv", tag="delivery", responses=AUTH,
            summary="One day's CSV file (30-minute energy) of a customer or delivery group")
@guarded("rest", "delivery:read")
async def delivery_file(request: web.Request) -> web.StreamResponse:
    hub = hub_of(request)
    try:
        day = date.fromisoformat(request.match_info["day"])
    except ValueError:
        raise BadRequest(400, "invalid-path", "Invalid path parameter", "day must be YYYY-MM-DD") from None
    entry = await hub.run(hub.delivery.fetch, caller_of(request), request.match_info["kind"],
                          request.match_info["subject"], day)
    return web.FileResponse(entry["file"], headers={
        "Content-Type": "text/csv; charset=utf-8", "Digest": f"sha-256={entry['sha256']}",
        "X-Checksum-SHA256": entry["sha256"],
        "Content-Disposition": f'attachment; filename="{entry["subject"]}-{entry["name"]}"'})


# --- access administration -----------------------------------------------------------------------
@routes.post("/api/v1/access/clients", tag="access", body=ClientIn, status=201, responses=AUTH,
             summary="Create an API client; its key is in this answer only")
@guarded("rest", "access:admin")
async def create_client(request: web.Request) -> web.Response:
    hub = hub_of(request)
    data = await parse_body(request, ClientIn)
    return ok(await hub.run(hub.access.create_client, data), status=201)


@routes.get("/api/v1/access/clients", tag="access", responses=AUTH, summary="API clients (never their keys)")
@guarded("rest", "access:admin")
async def list_clients(request: web.Request) -> web.Response:
    hub = hub_of(request)
    return ok({"items": await hub.run(hub.access.list_clients)})


@routes.patch("/api/v1/access/clients/{client_id}", tag="access", body=ClientPatch, responses=AUTH,
              summary="Revoke, re-enable, change scopes, IP allow-list, rate or expiry of a client")
@guarded("rest", "access:admin")
async def patch_client(request: web.Request) -> web.Response:
    hub = hub_of(request)
    data = await parse_body(request, ClientPatch)
    return ok(await hub.run(hub.access.update_client, request.match_info["client_id"], data))


@routes.post("/api/v1/access/clients/{client_id}/key", tag="access", responses=AUTH,
             summary="Replace a client's key (the old one stops working at once)")
@guarded("rest", "access:admin")
async def rotate_key(request: web.Request) -> web.Response:
    hub = hub_of(request)
    return ok(await hub.run(hub.access.rotate_key, request.match_info["client_id"]))


class LogQ(AccessLogQuery, Page):
    """Access-log filters plus paging."""


@routes.get("/api/v1/access/log", tag="access", query=LogQ, responses=AUTH,
            summary="The access log (who, what, when, result); Accept: text/csv exports it whole")
@guarded("rest", "access:admin")
async def access_log(request: web.Request) -> web.StreamResponse:
    hub = hub_of(request)
    q = parse_query(request, LogQ)
    if wants_csv(request):
        resp = web.StreamResponse(headers={"Content-Type": "text/csv; charset=utf-8",
                                           "Content-Disposition": 'attachment; filename="access-log.csv"'})
        await resp.prepare(request)
        chunks = hub.access.log_csv(q)
        while (chunk := await hub.run(next, chunks, None)) is not None:
            await resp.write(chunk.encode())
        await resp.write_eof()
        return resp
    items, total = await hub.run(hub.access.log_rows, q, q.limit, q.offset)
    return ok({"items": items, "total": total})
