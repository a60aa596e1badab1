"""Concentrators: registration, installation (designed CO_ID and head-end) and reads."""

from __future__ import annotations

from aiohttp import web

from adapters.rest.common import Page, hub_of, ok, page, parse_body, parse_query, path_int
from adapters.rest.routing import ApiRoutes
from hub.services.concentrators import ConcentratorFilter, ConcentratorInstallation, ConcentratorRegistration

routes = ApiRoutes()


class ConcentratorQuery(ConcentratorFilter, Page):
    """Concentrator filters plus paging; results are ordered by table key."""


@routes.post("/api/v1/concentrators", summary="Register a concentrator with its comms settings",
             tag="concentrators", body=ConcentratorRegistration, status=201)
async def register_concentrator(request: web.Request) -> web.Response:
    hub = hub_of(request)
    data = await parse_body(request, ConcentratorRegistration)
    return ok(await hub.run(hub.concentrators.register, data), 201)


@routes.get("/api/v1/concentrators", summary="List concentrators with their device counts", tag="concentrators",
            query=ConcentratorQuery)
async def list_concentrators(request: web.Request) -> web.Response:
    hub = hub_of(request)
    q = parse_query(request, ConcentratorQuery)
    items, total = await hub.run(hub.concentrators.list_concentrators, q, q.limit, q.offset)
    return page(items, total)


@routes.get("/api/v1/concentrators/{id}", summary="One concentrator", tag="concentrators")
async def get_concentrator(request: web.Request) -> web.Response:
    hub = hub_of(request)
    return ok(await hub.run(hub.concentrators.get, path_int(request, "id")))


@routes.post("/api/v1/concentrators/{id}/installation", summary="Install a concentrator: set its CO_ID and head-end",
             tag="concentrators", body=ConcentratorInstallation)
async def install_concentrator(request: web.Request) -> web.Response:
    hub = hub_of(request)
    data = await parse_body(request, ConcentratorInstallation)
    return ok(await hub.run(hub.concentrators.install, path_int(request, "id"), data))
