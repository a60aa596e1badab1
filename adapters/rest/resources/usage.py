"""Usage of a metering point: its snapshots over a period (actual, raw or estimated), edits of one
snapshot (each a new version; the raw row stays) and the versions of a snapshot."""

from __future__ import annotations

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from adapters.rest.common import Page, hub_of, ok, page, parse_body, parse_query
from adapters.rest.routing import ApiRoutes
from hub.services.usage import UsageEdit, UsagePeriod

routes = ApiRoutes()
PATH = "/api/v1/logical-devices/{ld_id}/usage"


class UsageQuery(UsagePeriod, Page):
    """A period (at most 31 days, aware times), an optional register, a view, and paging."""


class VersionQuery(BaseModel):
    """One snapshot: register and time."""

    model_config = ConfigDict(extra="forbid")
    sub_number: int = Field(ge=0, le=65535)
    measured_time: AwareDatetime


@routes.get(PATH, tag="usage", query=UsageQuery,
            summary="Snapshots of a metering point over a period, by time then register: value, increment, "
            "status, quality flags; view=estimated fills short gaps with flagged estimates",
            responses={400: "bad period, naive time, span over 31 days, unknown parameter",
                       404: "no such logical device"})
async def list_usage(request: web.Request) -> web.Response:
    hub = hub_of(request)
    q = parse_query(request, UsageQuery)
    items, total = await hub.run(hub.usage.usage, request.match_info["ld_id"], q, q.limit, q.offset)
    return page(items, total)


@routes.post(PATH + "/edits", tag="usage", body=UsageEdit, status=201,
             summary="Edit one snapshot: stored as its next version flagged edited, with who and why; "
             "the raw row is never changed",
             responses={404: "no such logical device or snapshot", 409: "edited concurrently",
                        422: "invalid edit"})
async def edit_usage(request: web.Request) -> web.Response:
    hub = hub_of(request)
    data = await parse_body(request, UsageEdit)
    return ok(await hub.run(hub.usage.edit, request.match_info["ld_id"], data), status=201)


@routes.get(PATH + "/versions", tag="usage", query=VersionQuery,
            summary="Every version of one snapshot: the raw row (version 0), then each edit with who, why, when",
            responses={404: "no such logical device or snapshot"})
async def usage_versions(request: web.Request) -> web.Response:
    hub = hub_of(request)
    q = parse_query(request, VersionQuery)
    items = await hub.run(hub.usage.versions, request.match_info["ld_id"], q.sub_number, q.measured_time)
    return page(items, len(items))


__all__ = ["routes"]
