"""Transports of the 61968-9 edge: plain XML over HTTP POST and SOAP 1.1 (1.2 accepted).

- ``POST /cim/messages``: the body is a 61968-100 message (bare ``RequestMessage``/``EventMessage``
  or a verb+noun wrapper); the answer is a ``ResponseMessage`` (HTTP 200 whatever its Result, 413
  for a body over ``[cim] max_message_bytes``).
- ``POST /cim/soap``: a SOAP envelope whose body holds the verb+noun wrapper (or a bare message);
  the answer is ``<Noun>ResponseMessage`` in a SOAP envelope. A SOAP Fault (with
  ``<Noun>FaultMessage/Reply`` in its detail) is only used when the SOAP layer itself is broken:
  not XML, not an envelope, an empty body.
- ``GET /cim/soap?wsdl`` and ``GET /cim/schemas/<name>.xsd``: the WSDL and the XSDs it imports.

Why not spyne: spyne generates WSDL from Python classes, while 61968-100 services are defined by
fixed XSDs with ``xs:any`` payloads and verb+noun wrappers in per-noun namespaces; mapping those
onto spyne models would mean re-declaring every profile and losing the exact wire shapes. The
envelope is small, so the hub serves its WSDL (built from the handlers served) and reads SOAP
envelopes with lxml, under the same safe-parsing rules as every other message.

Asynchronous replies are POSTed to the request's ReplyAddress in the transport the request came
by (bare ResponseMessage over HTTP, or a SOAP envelope); only addresses under a prefix listed in
``[cim] reply_addresses`` are used (otherwise the request is refused), so the hub cannot be made
to call arbitrary URLs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from lxml import etree

import schemas
from adapters import xmlsafe
from adapters.cim import publish, stream, wsdl
from adapters.cim.envelope import Message, Reply, build_element, reply_to, wrapper_for
from adapters.cim.service import CimEdge, error_item, lenient_header, served

if TYPE_CHECKING:
    from hub.runtime import Hub

log = logging.getLogger("mdmhub.cim")
SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
XML = "application/xml"
CIM_EDGE: web.AppKey[CimEdge] = web.AppKey("cim_edge", CimEdge)
SCHEMA_FILES = {p.name for p in schemas.path("cim/Message.xsd").parent.glob("*.xsd")}


class TooLarge(Exception):
    """The body is over ``[cim] max_message_bytes``; it is refused before being read whole."""


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body, refused once it passes ``limit`` bytes (a stated Content-Length is checked first)."""
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _xml(msg: Message, status: int = 200) -> web.Response:
    body = etree.tostring(build_element(msg), xml_declaration=True, encoding="UTF-8")
    return web.Response(body=body, status=status, content_type=XML, charset="utf-8")


def _refusal(edge: CimEdge, key: str, details: str, root: etree._Element | None = None) -> Message:
    return edge.failed(lenient_header(root), key, details)


async def post_message(request: web.Request) -> web.Response:
    edge = request.app[CIM_EDGE]
    try:
        body = await read_body(request, edge.settings.max_message_bytes)
    except TooLarge:
        return _xml(_refusal(edge, "too-large", f"the message is over {edge.settings.max_message_bytes} bytes"), 413)
    try:
        parsed = stream.read(body)
    except xmlsafe.UnsafeXml as exc:
        return _xml(_refusal(edge, "forbidden-dtd", str(exc)))
    except xmlsafe.MalformedXml as exc:
        return _xml(_refusal(edge, "malformed-xml", str(exc)))
    return _xml(await edge.process(parsed.root, "http", parsed.streamed))


# SOAP --------------------------------------------------------------------------------------------

def soap_envelope(content: etree._Element, version: str = SOAP11) -> bytes:
    env = etree.Element(f"{{{version}}}Envelope", nsmap={"soapenv": version})
    etree.SubElement(env, f"{{{version}}}Body").append(content)
    return etree.tostring(env, xml_declaration=True, encoding="UTF-8")


def _soap_fault(edge: CimEdge, key: str, details: str, version: str = SOAP11, noun: str = "") -> web.Response:
    msg = reply_to(lenient_header(None), Reply("FAILED", [error_item(key, details)]), source=edge.settings.source)
    env = etree.Element(f"{{{version}}}Envelope", nsmap={"soapenv": version})
    body = etree.SubElement(env, f"{{{version}}}Body")
    fault = etree.SubElement(body, f"{{{version}}}Fault")
    if version == SOAP11:
        etree.SubElement(fault, "faultcode").text = "soapenv:Client"
        etree.SubElement(fault, "faultstring").text = details[:500]
        detail = etree.SubElement(fault, "detail")
    else:
        code = etree.SubElement(fault, f"{{{version}}}Code")
        etree.SubElement(code, f"{{{version}}}Value").text = "soapenv:Sender"
        reason = etree.SubElement(fault, f"{{{version}}}Reason")
        etree.SubElement(reason, f"{{{version}}}Text", {"{http://www.w3.org/XML/1998/namespace}lang": "en"}).text = \
            details[:500]
        detail = etree.SubElement(fault, f"{{{version}}}Detail")
    fm = Message("FaultMessage", msg.header, reply=msg.reply)
    detail.append(build_element(fm, (f"http://iec.ch/TC57/2011/{noun}Message", f"{noun}FaultMessage")
                                if noun else None))
    ctype = "text/xml" if version == SOAP11 else "application/soap+xml"
    return web.Response(body=etree.tostring(env, xml_declaration=True, encoding="UTF-8"), status=500,
                        content_type=ctype, charset="utf-8")


async def post_soap(request: web.Request) -> web.Response:
    edge = request.app[CIM_EDGE]
    version = SOAP12 if request.content_type == "application/soap+xml" else SOAP11
    try:
        body = await read_body(request, edge.settings.max_message_bytes)
    except TooLarge:
        return _soap_fault(edge, "too-large", f"the message is over {edge.settings.max_message_bytes} bytes", version)
    try:
        parsed = stream.read(body)
        env = parsed.root
    except xmlsafe.UnsafeXml as exc:
        return _soap_fault(edge, "forbidden-dtd", str(exc), version)
    except xmlsafe.MalformedXml as exc:
        return _soap_fault(edge, "malformed-xml", str(exc), version)
    q = etree.QName(env)
    if q.localname != "Envelope" or q.namespace not in (SOAP11, SOAP12):
        return _soap_fault(edge, "bad-header", "the body is not a SOAP envelope", version)
    version = q.namespace
    soap_body = next((c for c in env if isinstance(c.tag, str) and etree.QName(c).localname == "Body"), None)
    content = [c for c in (soap_body if soap_body is not None else []) if isinstance(c.tag, str)]
    if not content:
        return _soap_fault(edge, "bad-header", "the SOAP Body is empty", version)
    response = await edge.process(content[0], "soap", parsed.streamed)
    ctype = "text/xml" if version == SOAP11 else "application/soap+xml"
    return web.Response(body=soap_envelope(build_element(response, wrapper_for(response)), version),
                        content_type=ctype, charset="utf-8")


async def get_soap(request: web.Request) -> web.Response:
    if "wsdl" not in {k.lower() for k in request.query}:
        raise web.HTTPNotFound(text="GET /cim/soap?wsdl for the service description")
    address = str(request.url.with_query(None))
    return web.Response(text=wsdl.build_wsdl(served(), address), content_type="text/xml", charset="utf-8")


async def get_schema(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in SCHEMA_FILES:
        raise web.HTTPNotFound(text=f"no schema {name}")
    return web.Response(body=schemas.path(f"cim/{name}").read_bytes(), content_type="text/xml", charset="utf-8")


# asynchronous replies ----------------------------------------------------------------------------

def make_delivery(edge: CimEdge, app: web.Application) -> None:
    async def deliver(address: str, response: Message, transport: str) -> None:
        if transport == "soap":
            body, ctype = soap_envelope(build_element(response, wrapper_for(response))), "text/xml"
        else:
            body, ctype = etree.tostring(build_element(response), xml_declaration=True, encoding="UTF-8"), XML
        timeout = aiohttp.ClientTimeout(total=edge.settings.reply_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session, \
                session.post(address, data=body, headers={"Content-Type": f"{ctype}; charset=utf-8"}) as r:
            if r.status >= 300:
                raise RuntimeError(f"reply endpoint answered HTTP {r.status}")
        log.info("asynchronous reply delivered", extra={"reply_address": address,
                                                         "correlation_id": response.header.correlation_id})

    edge.deliver = deliver


def install(app: web.Application, hub: Hub) -> CimEdge:
    """Mount the 61968-9 edge on ``app``."""
    edge = CimEdge(hub, hub.settings.cim)
    app[CIM_EDGE] = edge
    make_delivery(edge, app)
    edge.publisher = publish.install(app, hub)  # created EndDeviceEvents / MeterReadings to subscribers
    app.router.add_post("/cim/messages", post_message)
    app.router.add_post("/cim/soap", post_soap)
    app.router.add_get("/cim/soap", get_soap)
    app.router.add_get("/cim/schemas/{name}", get_schema)

    async def stop(_: web.Application) -> None:
        await edge.drain()

    app.on_shutdown.append(stop)
    return edge
