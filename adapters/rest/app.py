"""Mount the REST HTTP-API and its OpenAPI document on the hub's aiohttp application."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from adapters.rest.common import HUB_KEY, ok
from adapters.rest.openapi import XmlEndpoint, build_openapi, xml_paths
from adapters.rest.resources import admin, alerts, certificates, concentrators, lifecycle, registration, search
from adapters.rest.resources import collection
from adapters.rest.resources import adr
from adapters.rest.resources import portal, public
from adapters.rest.resources import usage
from adapters.rest.resources import controls
from adapters.rest.resources import fiap_points
from adapters.rest.routing import ApiRoutes
from hub.runtime import Hub

RESOURCE_MODULES = [admin, registration, search, concentrators, lifecycle, certificates, alerts]
RESOURCE_MODULES += [fiap_points]
RESOURCE_MODULES += [collection]
RESOURCE_MODULES += [adr]
RESOURCE_MODULES += [public, portal]
RESOURCE_MODULES += [usage]
RESOURCE_MODULES += [controls]


XML_ENDPOINTS_KEY: web.AppKey[list[XmlEndpoint]] = web.AppKey("xml_endpoints", list)
"""Routes of the XML and SOAP edges, added to the OpenAPI document as they are mounted."""


def describe_xml_endpoints(app: web.Application, *endpoints: XmlEndpoint) -> None:
    """List an XML edge's routes in the OpenAPI document (call after :func:`setup_rest`)."""
    app[XML_ENDPOINTS_KEY].extend(endpoints)


def all_routes() -> ApiRoutes:
    merged = ApiRoutes()
    for module in RESOURCE_MODULES:
        merged.operations.extend(module.routes.operations)
    return merged


def setup_rest(app: web.Application, hub: Hub, shell: ApiRoutes | None = None) -> ApiRoutes:
    """Install every REST route plus ``shell`` (the app's own routes, such as /health) and serve
    the OpenAPI document that describes all of them."""
    app[HUB_KEY] = hub
    routes = all_routes()
    if shell is not None:
        routes.operations[:0] = shell.operations
    spec: dict[str, Any] = {}
    app[XML_ENDPOINTS_KEY] = []

    @routes.get("/api/openapi.json", summary="This OpenAPI document", tag="meta")
    async def openapi(request: web.Request) -> web.Response:
        extra = xml_paths(request.app[XML_ENDPOINTS_KEY])
        return ok({**spec, "paths": {**spec["paths"], **extra}})

    spec.update(build_openapi(routes, hub.version))
    routes.install(app)
    return routes
