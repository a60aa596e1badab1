"""Device registration: one device as JSON, or a bulk import as CSV or JSON."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from adapters.rest.common import hub_of, ok, parse_body, parse_query, read_json
from adapters.rest.problems import BadRequest
from adapters.rest.routing import ApiRoutes
from hub.services.registry import DeviceRegistration

routes = ApiRoutes()


class ImportOptions(BaseModel):
    """``atomic=true``: store every row or none (any bad row fails the whole import)."""

    model_config = ConfigDict(extra="forbid")
    atomic: bool = False


@routes.post("/api/v1/physical-devices", summary="Register one device (physical device, comms, first logical device)",
             tag="registration", body=DeviceRegistration, status=201)
async def register_device(request: web.Request) -> web.Response:
    hub = hub_of(request)
    record = await parse_body(request, DeviceRegistration)
    return ok(await hub.run(hub.registry.register, record), 201)


@routes.post("/api/v1/device-imports", summary="Bulk device registration from CSV or JSON",
             tag="registration", body=DeviceRegistration, body_media=("text/csv", "application/json"),
             query=ImportOptions, status=200,
             responses={422: "atomic import refused: the report lists every bad row"})
async def import_devices(request: web.Request) -> web.Response:
    hub = hub_of(request)
    options = parse_query(request, ImportOptions)
    if request.content_type == "text/csv":
        try:
            text = (await request.read()).decode("utf-8-sig")
        except UnicodeDecodeError:
            raise BadRequest(400, "malformed-csv", "Malformed CSV", "the CSV file must be UTF-8") from None
        report = await hub.run(hub.registry.import_csv, text, atomic=options.atomic)
    elif request.content_type == "application/json":
        report = await hub.run(hub.registry.import_json, await read_json(request), atomic=options.atomic)
    else:
        raise BadRequest(415, "unsupported-media-type", "Unsupported media type",
                         "send text/csv or application/json")
    status = 422 if options.atomic and report.failed else 200
    return ok(report.as_dict(), status)
