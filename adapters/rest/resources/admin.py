"""Head-ends, device types and parameter groups."""

from __future__ import annotations

from aiohttp import web

from adapters.rest.common import Page, hub_of, ok, page, parse_body, parse_query, path_int
from adapters.rest.routing import ApiRoutes
from hub.services.admin import DeviceTypeIn, HeadEndIn, HeadEndPatch, ParameterGroupIn, ParameterItemIn

routes = ApiRoutes()
TYPE_PATHS = {
    "concentrator": "/api/v1/concentrator-types",
    "physical-device": "/api/v1/physical-device-types",
    "logical-device": "/api/v1/logical-device-types",
}


@routes.post("/api/v1/head-ends", summary="Register a head-end (and its holding concentrator)",
             tag="administration", body=HeadEndIn, status=201)
async def create_head_end(request: web.Request) -> web.Response:
    data = await parse_body(request, HeadEndIn)
    return ok(await hub_of(request).run(hub_of(request).admin.create_head_end, data), 201)


@routes.get("/api/v1/head-ends", summary="List head-ends with their device counts", tag="administration",
            query=Page)
async def list_head_ends(request: web.Request) -> web.Response:
    p = parse_query(request, Page)
    items, total = await hub_of(request).run(hub_of(request).admin.list_head_ends, p.limit, p.offset)
    return page(items, total)


@routes.get("/api/v1/head-ends/{he_id}", summary="One head-end", tag="administration")
async def get_head_end(request: web.Request) -> web.Response:
    hub = hub_of(request)
    return ok(await hub.run(hub.admin.get_head_end, path_int(request, "he_id")))


@routes.patch("/api/v1/head-ends/{he_id}", summary="Change a head-end's name, adapter, settings or capacity",
              tag="administration", body=HeadEndPatch)
async def patch_head_end(request: web.Request) -> web.Response:
    hub = hub_of(request)
    patch = await parse_body(request, HeadEndPatch)
    return ok(await hub.run(hub.admin.update_head_end, path_int(request, "he_id"), patch))


def _type_routes(level: str, path: str) -> None:
    async def create(request: web.Request) -> web.Response:
        hub = hub_of(request)
        data = await parse_body(request, DeviceTypeIn)
        return ok(await hub.run(hub.admin.create_type, level, data), 201)

    async def list_(request: web.Request) -> web.Response:
        hub = hub_of(request)
        p = parse_query(request, Page)
        items, total = await hub.run(hub.admin.list_types, level, p.limit, p.offset)
        return page(items, total)

    async def get(request: web.Request) -> web.Response:
        hub = hub_of(request)
        return ok(await hub.run(hub.admin.get_type, level, path_int(request, "type_id")))

    routes.post(path, summary=f"Register a {level} type", tag="administration", body=DeviceTypeIn,
                status=201)(create)
    routes.get(path, summary=f"List {level} types", tag="administration", query=Page)(list_)
    routes.get(path + "/{type_id}", summary=f"One {level} type", tag="administration")(get)


for _level, _path in TYPE_PATHS.items():
    _type_routes(_level, _path)


@routes.post("/api/v1/parameter-groups", summary="Register a parameter group with its registers",
             tag="administration", body=ParameterGroupIn, status=201)
async def create_group(request: web.Request) -> web.Response:
    hub = hub_of(request)
    data = await parse_body(request, ParameterGroupIn)
    return ok(await hub.run(hub.admin.create_parameter_group, data), 201)


@routes.get("/api/v1/parameter-groups", summary="List parameter groups", tag="administration", query=Page)
async def list_groups(request: web.Request) -> web.Response:
    hub = hub_of(request)
    p = parse_query(request, Page)
    items, total = await hub.run(hub.admin.list_parameter_groups, p.limit, p.offset)
    return page(items, total)


@routes.get("/api/v1/parameter-groups/{group_id}", summary="One parameter group", tag="administration")
async def get_group(request: web.Request) -> web.Response:
    hub = hub_of(request)
    return ok(await hub.run(hub.admin.get_parameter_group, path_int(request, "group_id")))


@routes.put("/api/v1/parameter-groups/{group_id}/items/{sub_number}",
            summary="Add or replace one register of a parameter group", tag="administration", body=ParameterItemIn)
async def put_group_item(request: web.Request) -> web.Response:
    hub = hub_of(request)
    item = await parse_body(request, ParameterItemIn)
    if item.sub_number != path_int(request, "sub_number"):
        from adapters.rest.problems import BadRequest
        raise BadRequest(422, "invalid-body", "Invalid request body", "sub_number in the body differs from the path")
    return ok(await hub.run(hub.admin.put_parameter_item, path_int(request, "group_id"), item))
