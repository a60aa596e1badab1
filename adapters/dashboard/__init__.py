"""The operations dashboard (seed 001) at /dashboard: one HTML page with its own script and SVG chart
(no build step, nothing fetched from outside the hub) and the JSON it draws, at
/api/v1/dashboard/overview. The page is a login form until an operator key (scope ``ops:read``) is
given; the key stays in the tab's sessionStorage and travels as ``Authorization: Bearer`` through the
shared authentication layer, which logs every request."""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from adapters.auth import guarded
from adapters.rest.common import hub_of, ok
from hub.runtime import Hub

SCOPE = "ops:read"
PAGE = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")
HEADERS = {
    # the page's own script and style only; no framing, no external fetches
    "Content-Security-Policy": "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
}


async def page(request: web.Request) -> web.Response:
    """The page itself holds no data (the figures come from the guarded JSON), so it is served to anyone."""
    return web.Response(text=PAGE, content_type="text/html", charset="utf-8", headers=HEADERS)


@guarded("dashboard", SCOPE)
async def overview(request: web.Request) -> web.Response:
    hub = hub_of(request)
    body = await hub.run(hub.dashboard.overview)
    sched = hub.scheduler.status()
    body["scheduler"] = {k: sched.get(k) for k in ("running", "next_tick_at", "next_recollect_at", "last_recollection")}
    resp = ok(body)
    resp.headers["Cache-Control"] = "no-store"
    return resp


def install(app: web.Application, hub: Hub) -> None:
    app.router.add_get("/dashboard", page)
    app.router.add_get("/api/v1/dashboard/overview", overview)
