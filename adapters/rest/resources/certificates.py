"""Certificate history: bulk registration, listing and revocation."""

from __future__ import annotations

from aiohttp import web
from pydantic import RootModel

from adapters.rest.common import Page, hub_of, ok, page, parse_body, parse_query, read_json
from adapters.rest.routing import ApiRoutes
from hub.services.certificates import CertificateFilter, CertificateIn, Revocation

routes = ApiRoutes()


class CertificateQuery(CertificateFilter, Page):
    """Certificate filters plus paging; results are ordered by serial."""


class CertificateBatch(RootModel[list[CertificateIn]]):
    """The bulk registration body (documentation only: each item is validated on its own)."""


@routes.post("/api/v1/certificates", tag="certificates", body=CertificateBatch,
             summary="Register issued certificates in bulk (a JSON array); the report lists refused items")
async def register_certificates(request: web.Request) -> web.Response:
    hub = hub_of(request)
    report = await hub.run(hub.certificates.register, await read_json(request))
    return ok(report.as_dict())


@routes.get("/api/v1/certificates", tag="certificates", query=CertificateQuery, summary="List certificates")
async def list_certificates(request: web.Request) -> web.Response:
    hub = hub_of(request)
    q = parse_query(request, CertificateQuery)
    items, total = await hub.run(hub.certificates.list_certificates, q, q.limit, q.offset)
    return page(items, total)


@routes.get("/api/v1/certificates/{serial}", tag="certificates", summary="One certificate")
async def get_certificate(request: web.Request) -> web.Response:
    hub = hub_of(request)
    return ok(await hub.run(hub.certificates.get, request.match_info["serial"]))


@routes.post("/api/v1/certificates/{serial}/revocation", tag="certificates", body=Revocation,
             summary="Revoke a certificate", responses={409: "already revoked"})
async def revoke_certificate(request: web.Request) -> web.Response:
    hub = hub_of(request)
    data = await parse_body(request, Revocation)
    return ok(await hub.run(hub.certificates.revoke, request.match_info["serial"], data))
