"""Alert history: listing, and alerts reported by other parts (forwarded to the NMS like the hub's own)."""

from __future__ import annotations

from aiohttp import web

from adapters.rest.common import Page, hub_of, ok, page, parse_body, parse_query
from adapters.rest.routing import ApiRoutes
from hub.services.alerts import AlertFilter, ExternalAlertIn

routes = ApiRoutes()


class AlertQuery(AlertFilter, Page):
    """Alert filters plus paging; newest first."""


@routes.get("/api/v1/alerts", tag="alerts", query=AlertQuery,
            summary="List alerts (diagnosis and forwarded), newest first")
async def list_alerts(request: web.Request) -> web.Response:
    hub = hub_of(request)
    q = parse_query(request, AlertQuery)
    items, total = await hub.run(hub.alerts.list_alerts, q, q.limit, q.offset)
    return page(items, total)


@routes.post("/api/v1/alerts", tag="alerts", body=ExternalAlertIn, status=201,
             summary="Report an alert another part detected; it is stored and forwarded to the NMS")
async def post_alert(request: web.Request) -> web.Response:
    hub = hub_of(request)
    data = await parse_body(request, ExternalAlertIn)
    return ok(await hub.run(hub.alerts.forward, data), status=201)
