"""IEEE 1888 point registry: list the registered points and register new ones."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from adapters.rest.common import Page, hub_of, ok, page, parse_body, parse_query
from adapters.rest.routing import ApiRoutes
from hub.services.points import PointIn

routes = ApiRoutes()


class PointQuery(Page):
    """Paging plus optional filters; ordered by point ID."""

    prefix: str | None = Field(None, max_length=512, description="only point IDs starting with this")
    kind: str | None = Field(None, max_length=32)


class PointsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    points: list[PointIn] = Field(min_length=1, max_length=10_000)


@routes.get("/api/v1/fiap/points", tag="ieee1888", query=PointQuery,
            summary="List registered IEEE 1888 points with the channel each feeds")
async def list_points(request: web.Request) -> web.Response:
    hub = hub_of(request)
    q = parse_query(request, PointQuery)
    items, total = await hub.run(hub.fiap.points.list_points, q.limit, q.offset, q.prefix, q.kind)
    return page(items, total)


@routes.post("/api/v1/fiap/points", tag="ieee1888", body=PointsIn, status=200,
             summary="Register IEEE 1888 points (existing ones are updated); WRITEs to others are refused")
async def register_points(request: web.Request) -> web.Response:
    hub = hub_of(request)
    data = await parse_body(request, PointsIn)
    return ok(await hub.run(hub.fiap.points.register, data.points))
