"""Device search and reads: logical devices by LD_ID or any filter, physical devices with their comms
(no secrets) and logical devices."""

from __future__ import annotations

from aiohttp import web

from adapters.rest.common import Page, hub_of, ok, parse_query, path_int
from adapters.rest.routing import ApiRoutes
from hub.services.search import LogicalDeviceFilter, PhysicalDeviceFilter

routes = ApiRoutes()


class LogicalDeviceQuery(LogicalDeviceFilter, Page):
    """Logical device filters plus paging; results are ordered by physical device key, then address.
    The answer is ``{"items", "total", "total_exact"}`` (see hub.services.search for the bound)."""


class PhysicalDeviceQuery(PhysicalDeviceFilter, Page):
    """Physical device filters plus paging; results are ordered by key."""


@routes.get("/api/v1/logical-devices", summary="Search logical devices", tag="devices", query=LogicalDeviceQuery)
async def search_logical_devices(request: web.Request) -> web.Response:
    hub = hub_of(request)
    q = parse_query(request, LogicalDeviceQuery)
    return ok((await hub.run(hub.search.logical_devices, q, q.limit, q.offset)).as_dict())


@routes.get("/api/v1/logical-devices/{ld_id}", summary="One logical device by its LD_ID", tag="devices")
async def get_logical_device(request: web.Request) -> web.Response:
    hub = hub_of(request)
    return ok(await hub.run(hub.search.logical_device, request.match_info["ld_id"]))


@routes.get("/api/v1/physical-devices", summary="Search physical devices", tag="devices", query=PhysicalDeviceQuery)
async def search_physical_devices(request: web.Request) -> web.Response:
    hub = hub_of(request)
    q = parse_query(request, PhysicalDeviceQuery)
    return ok((await hub.run(hub.search.physical_devices, q, q.limit, q.offset)).as_dict())


@routes.get("/api/v1/physical-devices/{id}", summary="One physical device with comms and logical devices",
            tag="devices")
async def get_physical_device(request: web.Request) -> web.Response:
    hub = hub_of(request)
    return ok(await hub.run(hub.search.physical_device, path_int(request, "id")))
