"""Meter ADR over HTTP: policies (CRUD), received DR events, the action history (JSON or CSV for
billing incentives) and policy assistance from history, under /api/v1/adr/."""

from __future__ import annotations

import csv
import io
from typing import Literal

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from adapters.rest.common import Page, hub_of, ok, page, parse_body, parse_query, path_int
from adapters.rest.routing import ApiRoutes
from hub.services.adr import ACTION_EXPORT_COLUMNS
from hub.services.adr_policies import PolicyIn, PolicyPatch

routes = ApiRoutes()
TAG = "adr"


class PolicyQuery(Page):
    ld_id: str | None = Field(None, max_length=64)
    active: bool | None = None


class EventQuery(Page):
    event_id: str | None = Field(None, max_length=128)


class ActionQuery(Page):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: AwareDatetime | None = Field(None, alias="from", description="reductions starting at or after this time")
    to: AwareDatetime | None = Field(None, description="reductions starting before this time")
    event_id: str | None = Field(None, max_length=128)
    ld_id: str | None = Field(None, max_length=64)
    state: Literal["planned", "reserved", "failed", "released", "cancelled"] | None = None
    format: Literal["json", "csv"] = "json"
    limit: int = Field(50, ge=1, le=100_000)


class AssistQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    days: int = Field(30, ge=1, le=366)
    percent: float = Field(90.0, gt=0, le=100)
    hour_from: int = Field(0, ge=0, le=23)
    hour_to: int = Field(24, ge=1, le=24)


@routes.get("/api/v1/adr/policies", tag=TAG, query=PolicyQuery, summary="List ADR policies")
async def list_policies(request: web.Request) -> web.Response:
    hub = hub_of(request)
    q = parse_query(request, PolicyQuery)
    got = await hub.run(hub.adr.policies.list, ld_id=q.ld_id, active=q.active, limit=q.limit, offset=q.offset)
    return page(got["items"], got["total"])


@routes.post("/api/v1/adr/policies", tag=TAG, body=PolicyIn, status=201,
             summary="Create an ADR policy for a metering point")
async def create_policy(request: web.Request) -> web.Response:
    hub = hub_of(request)
    data = await parse_body(request, PolicyIn)
    return ok(await hub.run(hub.adr.policies.create, data), status=201)


@routes.get("/api/v1/adr/policies/{id}", tag=TAG, summary="One ADR policy", responses={404: "no such policy"})
async def get_policy(request: web.Request) -> web.Response:
    hub = hub_of(request)
    return ok(await hub.run(hub.adr.policies.get, path_int(request, "id")))


@routes.patch("/api/v1/adr/policies/{id}", tag=TAG, body=PolicyPatch,
              summary="Change an ADR policy (activate, levels, capacity, windows, notice, cap, opt-out of one event)")
async def patch_policy(request: web.Request) -> web.Response:
    hub = hub_of(request)
    patch = await parse_body(request, PolicyPatch)
    return ok(await hub.run(hub.adr.policies.update, path_int(request, "id"), patch))


@routes.delete("/api/v1/adr/policies/{id}", tag=TAG, status=204, summary="Delete an ADR policy")
async def delete_policy(request: web.Request) -> web.Response:
    hub = hub_of(request)
    await hub.run(hub.adr.policies.delete, path_int(request, "id"))
    return web.Response(status=204)


@routes.get("/api/v1/adr/events", tag=TAG, query=EventQuery,
            summary="DR events received, one row per modification, newest first, with the answer given")
async def list_events(request: web.Request) -> web.Response:
    hub = hub_of(request)
    q = parse_query(request, EventQuery)
    got = await hub.run(hub.adr.list_events, event_id=q.event_id, limit=q.limit, offset=q.offset)
    return page(got["items"], got["total"])


@routes.get("/api/v1/adr/events/{id}", tag=TAG, summary="One received DR event with its actions by state")
async def get_event(request: web.Request) -> web.Response:
    hub = hub_of(request)
    return ok(await hub.run(hub.adr.get_event, path_int(request, "id")))


@routes.get("/api/v1/adr/actions", tag=TAG, query=ActionQuery,
            summary="ADR action history (format=csv for billing incentives)")
async def list_actions(request: web.Request) -> web.Response:
    hub = hub_of(request)
    q = parse_query(request, ActionQuery)
    got = await hub.run(hub.adr.list_actions, event_id=q.event_id, ld_id=q.ld_id, state=q.state,
                        starts_from=q.from_, starts_before=q.to, limit=q.limit, offset=q.offset)
    if q.format == "json":
        return page(got["items"], got["total"])
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=ACTION_EXPORT_COLUMNS, extrasaction="ignore", lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(got["items"])
    return web.Response(text=out.getvalue(), content_type="text/csv", charset="utf-8",
                        headers={"X-Total-Count": str(got["total"])})


@routes.get("/api/v1/adr/logical-devices/{ld_id}/assistance", tag=TAG, query=AssistQuery,
            summary="Past maximum current by time of day and the capacity that would have held on N% of days")
async def assistance(request: web.Request) -> web.Response:
    hub = hub_of(request)
    q = parse_query(request, AssistQuery)
    return ok(await hub.run(hub.adr.assist.assistance, request.match_info["ld_id"], now=hub.adr.clock(),
                            days=q.days, percent=q.percent, hour_from=q.hour_from, hour_to=q.hour_to))


@routes.get("/api/v1/adr/logical-devices/{ld_id}/reservations", tag=TAG,
            summary="Contract-capacity reservations the hub holds for a metering point")
async def reservations(request: web.Request) -> web.Response:
    hub = hub_of(request)
    items = await hub.run(hub.adr.reservations, request.match_info["ld_id"])
    return page(items, len(items))
