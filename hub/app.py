"""The hub's aiohttp application: every edge mounts here, plus /health."""

from __future__ import annotations

import logging
import time

from aiohttp import web

from hub.config import Settings
from hub.runtime import Hub

log = logging.getLogger("mdmhub.http")
HUB_APP_KEY: web.AppKey[Hub] = web.AppKey("hub_runtime", Hub)


@web.middleware
async def access_log(request: web.Request, handler: web.Handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        log.info("request", extra={"method": request.method, "path": request.path, "status": status,
                                   "ms": round((time.perf_counter() - started) * 1000, 2),
                                   "remote": request.remote})


async def health(request: web.Request) -> web.Response:
    hub = request.app[HUB_APP_KEY]
    db_ok = await hub.run(hub.db.ping)
    body = {"status": "ok" if db_ok else "degraded", "version": hub.version,
            "database": {"backend": hub.db.backend, "reachable": db_ok}}
    return web.json_response(body, status=200 if db_ok else 503)


def make_hub(settings: Settings) -> Hub:
    """The hub with its head-end adapters (the simulator and any registered adapter) plugged in."""
    from adapters.headend import build_head_end

    return Hub(settings, head_end_factory=build_head_end)


def _run_scheduler(app: web.Application, hub: Hub) -> None:
    """Collect on schedule while the application runs (when enabled and head-ends are reachable)."""

    async def start(_: web.Application) -> None:
        await hub.scheduler.start()

    async def stop(_: web.Application) -> None:
        await hub.scheduler.stop()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)


async def _close_interrupted_jobs(app: web.Application) -> None:
    """Reboot jobs a previous process left running are marked interrupted (they do not resume)."""
    hub = app[HUB_APP_KEY]
    count = await hub.run(hub.reboot_jobs.interrupted)
    if count:
        log.warning("reboot jobs interrupted by the last stop", extra={"jobs": count})


def create_app(hub: Hub) -> web.Application:
    """Build the application with every edge mounted; the caller owns the hub's lifetime."""
    from adapters.rest import setup_rest  # composition root: the one place the core wires edges in
    from adapters.rest.app import describe_xml_endpoints
    from adapters.rest.openapi import XmlEndpoint
    from adapters.rest.problems import problem_middleware
    from adapters.rest.routing import ApiRoutes
    from adapters.rest.text_guard import refuse_nul

    app = web.Application(middlewares=[access_log, problem_middleware, refuse_nul],
                          client_max_size=hub.settings.http.max_body_bytes)
    app[HUB_APP_KEY] = hub
    shell = ApiRoutes()
    shell.get("/health", summary="Liveness and database reachability, with the hub's version", tag="meta",
              responses={503: "database unreachable"})(health)
    setup_rest(app, hub, shell)
    from adapters.public import install as install_public_soap  # secondary-use SOAP at /public/soap

    install_public_soap(app, hub)
    from adapters.dashboard import install as install_dashboard  # operations dashboard at /dashboard

    install_dashboard(app, hub)
    describe_xml_endpoints(
        app,
        XmlEndpoint("/dashboard", "GET", "Operations dashboard page (signs in with an ops:read key)", "dashboard",
                    "docs/public-api.md, Operations dashboard", media="text/html"),
        XmlEndpoint("/api/v1/dashboard/overview", "GET", "The dashboard's figures (scope ops:read)", "dashboard",
                    "docs/public-api.md, Operations dashboard", media="application/json"))
    describe_xml_endpoints(
        app,
        XmlEndpoint("/public/soap", "POST", "Secondary-use SOAP API (aggregates, DR and quality summaries)",
                    "public", "the WSDL at /public/soap?wsdl (docs/public-api.md)"),
        XmlEndpoint("/public/soap", "GET", "WSDL of the secondary-use SOAP API (?wsdl)", "public",
                    "WSDL 1.1", media="text/xml"))
    from adapters.cim import install as install_cim  # 61968-9: /cim/messages, /cim/soap

    install_cim(app, hub)
    describe_xml_endpoints(
        app,
        XmlEndpoint("/cim/messages", "POST", "IEC 61968-100 RequestMessage / EventMessage as plain XML",
                    "cim", "IEC 61968-100 Message.xsd and the 61968-9 profiles (docs/cim.md)"),
        XmlEndpoint("/cim/soap", "POST", "IEC 61968-100 messages over SOAP 1.1, one operation per verb and noun",
                    "cim", "the WSDL at /cim/soap?wsdl (docs/cim.md)"),
        XmlEndpoint("/cim/soap", "GET", "WSDL of the 61968-100 SOAP service (?wsdl)", "cim", "WSDL 1.1"),
        XmlEndpoint("/cim/schemas/{name}", "GET", "The XSDs the WSDL imports", "cim", "XML Schema 1.0"))
    if hub.settings.ieee1888.enabled:
        from adapters.ieee1888 import install as install_fiap  # IEEE 1888 storage at /fiap

        install_fiap(app, hub)
        describe_xml_endpoints(
            app,
            XmlEndpoint("/fiap", "POST", "IEEE 1888 storage: data (WRITE) and query (FETCH, TRAP) over SOAP 1.1",
                        "ieee1888", "the WSDL at /fiap?wsdl (docs/ieee1888.md)"),
            XmlEndpoint("/fiap", "GET", "WSDL of the IEEE 1888 storage (?wsdl)", "ieee1888", "WSDL 1.1"))
    app.on_startup.append(_close_interrupted_jobs)
    if hub.settings.delivery.daily_run:  # the daily CSV files and their retention purge
        app.on_startup.append(lambda _: hub.delivery_schedule.start())
        app.on_cleanup.append(lambda _: hub.delivery_schedule.stop())
    if hub.settings.collection.enabled and hub.head_ends.available:
        _run_scheduler(app, hub)
    if hub.settings.mqtt.enabled:
        from adapters.mqtt.lifecycle import install as install_mqtt

        install_mqtt(app, hub)
    if (hub.settings.openadr.vtn_url or hub.settings.openadr.vtns) and hub.head_ends.available:
        from adapters.openadr import install as install_openadr  # the VEN, one per configured VTN

        install_openadr(app, hub)
    if hub.settings.nms.enabled:
        from adapters.nms import install as install_nms

        install_nms(app, hub)
    return app
