"""The one authentication layer of every HTTP edge (REST, SOAP, portal API, file delivery).

The credential travels in ``Authorization: Bearer <credential>`` (or ``X-API-Key``); the core's
:meth:`hub.services.access.AccessService.resolve` decides who it is. Every request through this layer,
allowed or refused, leaves one access-log row (who, what, when, result).

REST handlers use the :func:`guarded` decorator; other edges (SOAP, anything not a plain handler) call
:func:`resolve_caller` and :func:`record_access` themselves and render refusals in their own form.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from hub.runtime import Hub
from hub.services.access import Caller, Forbidden, RateLimited, Unauthenticated
from hub.services.errors import Conflict, InvalidInput, NotFound, ServiceError

log = logging.getLogger("mdmhub.auth")
CALLER_KEY: web.RequestKey[Caller] = web.RequestKey("mdmhub_caller", Caller)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def credential_of(request: web.Request) -> str | None:
    """The credential a request carries, or None."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("X-API-Key") or None


async def resolve_caller(request: web.Request, hub: Hub) -> Caller:
    """The caller of ``request`` (raises Unauthenticated, Forbidden or RateLimited)."""
    return await hub.run(hub.access.resolve, credential_of(request), request.remote)


async def record_access(request: web.Request, hub: Hub, caller: Caller | None, edge: str, status: int,
                        detail: str | None = None, resource: str | None = None) -> None:
    """Write the access-log row; a failure to log is itself logged but never hides the answer."""
    try:
        await hub.run(hub.access.record, caller, edge, request.method, resource or request.path_qs, status, detail,
                      request.remote)
    except Exception:  # noqa: BLE001 - the row is for audit; the caller's answer must still go out
        log.exception("access log row not written", extra={"path": request.path})


def refusal(exc: ServiceError, path: str) -> web.Response:
    """The problem document of an authentication or authorisation refusal."""
    from adapters.rest.problems import problem  # lazily: the REST package imports this module

    if isinstance(exc, Unauthenticated):
        resp = problem(401, "unauthenticated", "Authentication required", exc.message, instance=path)
        resp.headers["WWW-Authenticate"] = 'Bearer realm="mdmhub"'
        return resp
    if isinstance(exc, RateLimited):
        resp = problem(429, "rate-limited", "Too many requests", exc.message, instance=path)
        resp.headers["Retry-After"] = str(max(1, round(exc.retry_after + 0.499)))
        return resp
    return problem(403, "forbidden", "Forbidden", exc.message, instance=path)


def status_of(exc: BaseException) -> int:
    """The status the problem middleware will give an exception a handler raised."""
    from adapters.rest.problems import BadRequest

    if isinstance(exc, BadRequest):
        return exc.status
    if isinstance(exc, web.HTTPException):
        return exc.status
    for cls, status in ((NotFound, 404), (Conflict, 409), (InvalidInput, 422)):
        if isinstance(exc, cls):
            return status
    return 400 if isinstance(exc, ServiceError) else 500


def caller_of(request: web.Request) -> Caller:
    return request[CALLER_KEY]


def guarded(edge: str, scope: str | None = None) -> Callable[[Handler], Handler]:
    """Wrap a handler: resolve the caller, check ``scope``, log the request with its result.
    Handlers read the caller with :func:`caller_of`."""

    def wrap(handler: Handler) -> Handler:
        async def guarded_handler(request: web.Request) -> web.StreamResponse:
            from adapters.rest.common import hub_of
            from adapters.rest.text_guard import refuse_nul_request

            hub = hub_of(request)
            caller: Caller | None = None
            status, detail = 500, None
            try:
                refuse_nul_request(request)
                caller = await resolve_caller(request, hub)
                if scope is not None:
                    caller.require(scope)
                request[CALLER_KEY] = caller
                response = await handler(request)
                status = response.status
                return response
            except (Unauthenticated, Forbidden, RateLimited) as exc:
                status, detail = _refused_status(exc), exc.message
                log.info("access refused", extra={"path": request.path, "status": status, "detail": exc.message})
                return refusal(exc, request.path)
            except Exception as exc:
                status = status_of(exc)
                detail = getattr(exc, "message", None) or getattr(exc, "detail", None)
                raise
            finally:
                await record_access(request, hub, caller, edge, status, detail)

        setattr(guarded_handler, "checks_request_text", True)  # adapters.rest.text_guard.CHECKS_TEXT
        guarded_handler.__name__ = handler.__name__
        guarded_handler.__doc__ = handler.__doc__
        return guarded_handler

    return wrap


def _refused_status(exc: Any) -> int:
    return 401 if isinstance(exc, Unauthenticated) else 429 if isinstance(exc, RateLimited) else 403
