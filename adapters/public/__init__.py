"""The secondary-use SOAP edge at /public/soap (see adapters.public.soap and docs/public-api.md)."""

from __future__ import annotations

import logging
from typing import Any
from xml.sax.saxutils import escape

from aiohttp import web

from adapters.auth import record_access, resolve_caller
from hub.runtime import Hub
from hub.services.access import Forbidden, RateLimited, Unauthenticated

log = logging.getLogger("mdmhub.public.soap")
PATH = "/public/soap"
MAX_BODY = 1024 * 1024
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
_HUB = web.AppKey("public_soap_hub", Hub)
_WSGI: web.AppKey[Any] = web.AppKey("public_soap_wsgi", object)


def fault(code: str, text: str, status: int = 500) -> web.Response:
    body = (f'<?xml version="1.0" encoding="UTF-8"?><soap11env:Envelope xmlns:soap11env="{SOAP_ENV}">'
            f"<soap11env:Body><soap11env:Fault><faultcode>soap11env:{escape(code)}</faultcode>"
            f"<faultstring>{escape(text)}</faultstring></soap11env:Fault></soap11env:Body></soap11env:Envelope>")
    return web.Response(status=status, body=body.encode(), content_type="text/xml", charset="utf-8")


def _environ(request: web.Request, body: bytes, hub: Hub, caller: Any) -> dict[str, Any]:
    import io

    host = request.host or "localhost"
    name, _, port = host.partition(":")
    return {
        "REQUEST_METHOD": request.method, "SCRIPT_NAME": "", "PATH_INFO": request.path,
        "QUERY_STRING": request.query_string, "CONTENT_TYPE": request.headers.get("Content-Type", ""),
        "CONTENT_LENGTH": str(len(body)), "SERVER_NAME": name, "SERVER_PORT": port or "80",
        "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": host, "wsgi.version": (1, 0), "wsgi.url_scheme": request.scheme,
        "wsgi.input": io.BytesIO(body), "wsgi.errors": io.StringIO(), "wsgi.multithread": True,
        "wsgi.multiprocess": False, "wsgi.run_once": False, "mdmhub.hub": hub, "mdmhub.caller": caller}


async def _to_wsgi(request: web.Request, body: bytes, caller: Any) -> web.Response:
    from adapters.public.soap import run_wsgi

    hub = request.app[_HUB]
    status, headers, out = await hub.run(run_wsgi, request.app[_WSGI], _environ(request, body, hub, caller))
    ctype = next((v for k, v in headers if k.lower() == "content-type"), "text/xml; charset=utf-8")
    return web.Response(status=status, body=out, headers={"Content-Type": ctype})


async def get_soap(request: web.Request) -> web.Response:
    """The WSDL (``?wsdl``); anything else is a 405 in SOAP's own form."""
    hub = request.app[_HUB]
    status = 405
    try:
        if "wsdl" in {k.lower() for k in request.query}:
            resp = await _to_wsgi(request, b"", None)
            status = resp.status
            return resp
        return fault("Client", "SOAP requests are POSTed; GET ?wsdl for the service description", 405)
    finally:
        await record_access(request, hub, None, "soap", status, "wsdl")


async def post_soap(request: web.Request) -> web.Response:
    from adapters.public.soap import operation_of

    hub = request.app[_HUB]
    caller, status, operation, detail = None, 500, "?", None
    try:
        if request.content_length is not None and request.content_length > MAX_BODY:
            status, detail = 413, "request too large"
            return fault("Client", f"requests are limited to {MAX_BODY} bytes", 413)
        body = await request.content.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            status, detail = 413, "request too large"
            return fault("Client", f"requests are limited to {MAX_BODY} bytes", 413)
        try:
            operation = operation_of(body)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the client's
            status, detail = 400, f"malformed envelope: {exc}"[:200]
            return fault("Client", "malformed SOAP envelope: " + str(exc)[:200], 400)
        try:
            caller = await resolve_caller(request, hub)
        except (Unauthenticated, Forbidden, RateLimited) as exc:
            status = 401 if isinstance(exc, Unauthenticated) else 429 if isinstance(exc, RateLimited) else 403
            detail = exc.message
            resp = fault("Client." + type(exc).__name__, exc.message, status)
            if isinstance(exc, RateLimited):
                resp.headers["Retry-After"] = str(max(1, round(exc.retry_after + 0.499)))
            return resp
        resp = await _to_wsgi(request, body, caller)
        status = resp.status
        if status >= 400:
            detail = _faultstring(resp.body)
        return resp
    except Exception:
        log.exception("SOAP request failed")
        status = 500
        return fault("Server", "the request failed inside the hub; it has been logged")
    finally:
        await record_access(request, hub, caller, "soap", status, detail, resource=f"{PATH}#{operation}")


def _faultstring(body: Any) -> str | None:
    try:
        text = bytes(body).decode("utf-8", "replace")
        start = text.index("<faultstring>") + len("<faultstring>")
        return text[start:text.index("</faultstring>")][:300]
    except (ValueError, TypeError):
        return None


def install(app: web.Application, hub: Hub) -> None:
    """Mount /public/soap on the hub's application."""
    from adapters.public.soap import make_wsgi

    app[_HUB] = hub
    app[_WSGI] = make_wsgi()
    app.router.add_get(PATH, get_soap)
    app.router.add_post(PATH, post_soap)
